"""Fuzzing the server's OpenAPI contract with schemathesis (issue 7, part 2): zero 5xx.

schemathesis reads ``/openapi.json`` from a real server process and generates requests for every
operation, in its positive mode (data that fits the schema) and its negative mode (data that does
not). Only the ``not_a_server_error`` check applies: no generated body is a real evaluation key or
ciphertext, so "positive data is accepted" cannot hold by design.

Each session operation is fuzzed three times: with generated session ids and tokens, with
generated session ids and a real token (past the token check, into the session-id checks), and
against a real session with its real token, so that the generated bodies and parties reach the
size, header and deserialization checks. That session holds the
applicant's and the bank's real ciphertexts: predict and output stop at 409 (no credit bureau
input), explain reaches the candidates check; DELETE is never sent with the real token.

(schemathesis' lazy ``from_fixture`` loader does not work with pytest 9, hence the strategies.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.support.applications import EXAMPLE_PROFILE
from tests.support.http import open_session, upload
from tests.support.kit import Kit
from tests.support.servers import running_server

pytestmark = pytest.mark.slow

# Most generated requests per operation, generation mode (positive, negative) and target
# (everything generated; the real session and token; generated ids with the real token):
# 2 x 3 x 50 = 300 for a session operation, 2 x 100 for the others.
EXAMPLES_PER_RUN = 50
OPERATIONS = [
    ("GET", "/health"),
    ("POST", "/sessions"),
    ("PUT", "/sessions/{session_id}/inputs/{party}"),
    ("POST", "/sessions/{session_id}/predict"),
    ("GET", "/sessions/{session_id}/output"),
    ("POST", "/sessions/{session_id}/explain"),
    ("POST", "/sessions/{session_id}/batch"),
    ("DELETE", "/sessions/{session_id}"),
]


@dataclass
class FuzzTarget:
    """The fuzzed server, its schema as served, and a real session."""

    base_url: str
    schema: schemathesis.BaseSchema
    session_id: str
    auth: dict[str, str]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    kit = Kit.generate()
    store_dir = tmp_path_factory.mktemp("fuzz") / "store"
    with running_server(store_dir=store_dir) as base_url:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            session_id, auth = open_session(http, kit.evaluation_keys)
            encrypted = kit.encrypt(EXAMPLE_PROFILE)
            upload(http, session_id, auth, {p: encrypted[p] for p in ("applicant", "bank")})
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        yield FuzzTarget(base_url=base_url, schema=schema, session_id=session_id, auth=auth)


def test_the_served_schema_has_exactly_the_fuzzed_operations(target: FuzzTarget) -> None:
    served = {
        (op.method.upper(), op.path) for op in (r.ok() for r in target.schema.get_all_operations())
    }
    assert served == set(OPERATIONS)


def fuzz(
    target: FuzzTarget,
    strategy: object,
    examples: int,
    statuses: Counter[int],
    mode: GenerationMode,
) -> None:
    """Send up to ``examples`` generated requests; fail on a 5xx (Hypothesis shrinks it).

    The negative mode has nothing to negate in some operations (no parameters, or every one of
    them fixed to the real session's): then no request is sent.
    """

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=target.base_url, timeout=60)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, response.text

    try:
        run()
    except Unsatisfiable:
        if mode is not GenerationMode.NEGATIVE:
            raise


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_generated_request_gets_a_server_error(
    target: FuzzTarget, method: str, path: str
) -> None:
    operation = target.schema[path][method]
    statuses: Counter[int] = Counter()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        if "{session_id}" not in path:
            strategy = operation.as_strategy(generation_mode=mode)
            fuzz(target, strategy, 2 * EXAMPLES_PER_RUN, statuses, mode)
            continue
        strategy = operation.as_strategy(generation_mode=mode)
        fuzz(target, strategy, EXAMPLES_PER_RUN, statuses, mode)
        real = operation.as_strategy(
            generation_mode=mode,
            path_parameters={"session_id": target.session_id},
            headers=None if method == "DELETE" else dict(target.auth),
        )
        fuzz(target, real, EXAMPLES_PER_RUN, statuses, mode)
        # Generated session ids with a real token: past the token check, into the id checks.
        other_ids = operation.as_strategy(generation_mode=mode, headers=dict(target.auth))
        fuzz(target, other_ids, EXAMPLES_PER_RUN, statuses, mode)
    sent = sum(statuses.values())
    print(f"\n{method} {path}: {sent} requests, statuses {dict(sorted(statuses.items()))}")
    # GET /health takes no input: Hypothesis stops after the one request it can generate.
    assert sent >= (1 if path == "/health" else EXAMPLES_PER_RUN), statuses
    assert all(status < 500 for status in statuses)
    with httpx.Client(base_url=target.base_url, timeout=60) as http:
        assert http.get("/health").status_code == 200
        # The real session was neither deleted nor changed: still no credit bureau input.
        response = http.post(f"/sessions/{target.session_id}/predict", headers=target.auth)
        assert response.status_code == 409, response.text
