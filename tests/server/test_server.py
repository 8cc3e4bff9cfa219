"""The FHE server's REST contract (fhe_server.api), with real keys and ciphertexts.

Keys are generated once for the module from the committed client specs; every verdict the server
computes is decrypted here and compared with the clear quantized model. Each error status of the
contract is produced by a real request. The last tests run ``uvicorn server:app`` in a child
process (full flow, a full FHE queue, /health during FHE, limits while streaming, restart).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

import settings
from contracts.wire import bearer
from development.reference import clear_verdict
from fhe_server.api import create_app
from fhe_server.errors import (
    InvalidTokenError,
    ServerBusyError,
    SessionNotFoundError,
    StepOutOfOrderError,
    TooManySessionsError,
)
from fhe_server.file_store import FileSessionStore
from fhe_server.launcher import ServerStartError
from fhe_server.protocol import Party
from fhe_server.runtime import SessionQuota
from settings import ServerSettings
from tests.support.applications import CANDIDATE_ROWS, EXAMPLE_PROFILE, Profile
from tests.support.http import OCTET, open_session, upload
from tests.support.inprocess import app_client, service_of
from tests.support.kit import CARD, WIRE, Kit
from tests.support.servers import one_fhe_slot_server, running_server

pytestmark = pytest.mark.slow

# The example application (refused: not employed), the same with a higher income and employed
# for 2-5 years, and the same employed for 11-18 years: the first and the last differ in the
# credit bureau's input only and have opposite verdicts.
HIGHER_INCOME = {**EXAMPLE_PROFILE.applicant, "total_income": 150000.0}
SHORT_EMPLOYMENT = {"employed": True, "years_employed": "2-5"}
LONG_EMPLOYMENT = {"employed": True, "years_employed": "11-18"}
PROFILES = [
    EXAMPLE_PROFILE,
    Profile(HIGHER_INCOME, EXAMPLE_PROFILE.bank, SHORT_EMPLOYMENT),
    Profile(EXAMPLE_PROFILE.applicant, EXAMPLE_PROFILE.bank, LONG_EMPLOYMENT),
]


@pytest.fixture(scope="module")
def ciphertexts(kit: Kit) -> dict[str, bytes]:
    """The example application's three ciphertexts and six explain candidates."""
    encrypted = kit.encrypt(PROFILES[0])
    encrypted["candidates"] = kit.encrypt_candidates()
    return encrypted


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with app_client(store_dir=tmp_path / "store") as test_client:
        yield test_client


def assert_error(response: httpx.Response, status_code: int, contains: str = "") -> None:
    assert response.status_code == status_code, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert contains.lower() in detail.lower()
    assert "Traceback" not in response.text


# ---------------------------------------------------------------------------------------------
# The contract, end to end, through TestClient
# ---------------------------------------------------------------------------------------------
def test_health_reports_model_versions_and_parameters(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model"]["versions"] == CARD["versions"]
    assert body["model"]["parameters"] == CARD["parameters"]
    assert body["model"]["input_shapes"] == CARD["input_shapes"]


def test_predict_matches_clear_model_and_new_input_replaces_old(
    client: TestClient, kit: Kit
) -> None:
    expected = [profile.verdict() for profile in PROFILES]
    assert set(expected) == {True, False}, "profiles must cover both verdicts"
    session_id, auth = open_session(client, kit.evaluation_keys)
    previous_output = None
    for profile, verdict in zip(PROFILES, expected, strict=True):
        upload(client, session_id, auth, kit.encrypt(profile))
        if previous_output is not None:
            # A replaced input makes the stored verdict stale: predict must run again.
            assert_error(client.get(f"/sessions/{session_id}/output", headers=auth), 409)
        response = client.post(f"/sessions/{session_id}/predict", headers=auth)
        assert response.status_code == 200, response.text
        assert response.json()["fhe_execution_time"] > 0
        output = client.get(f"/sessions/{session_id}/output", headers=auth)
        assert output.status_code == 200
        assert output.headers["content-type"] == "application/octet-stream"
        assert int(kit.decrypt(output.content, "predict")) == int(verdict)
        previous_output = output.content

    # Replacing only the credit bureau's input changes the verdict (not employed -> 11-18 years).
    upload(client, session_id, auth, kit.encrypt(PROFILES[0]))
    client.post(f"/sessions/{session_id}/predict", headers=auth).raise_for_status()
    first = kit.decrypt(
        client.get(f"/sessions/{session_id}/output", headers=auth).content, "predict"
    )
    replacement = kit.encrypt(PROFILES[2])["credit_bureau"]
    response = client.put(
        f"/sessions/{session_id}/inputs/credit_bureau",
        content=replacement,
        headers={**auth, **OCTET},
    )
    assert response.status_code == 204
    client.post(f"/sessions/{session_id}/predict", headers=auth).raise_for_status()
    second = kit.decrypt(
        client.get(f"/sessions/{session_id}/output", headers=auth).content, "predict"
    )
    assert (int(first), int(second)) == (int(expected[0]), int(expected[2]))


def test_explain_matches_clear_model_and_reuses_prepared_keys(
    client: TestClient, kit: Kit, ciphertexts: dict[str, bytes]
) -> None:
    service = service_of(client)
    session_id, auth = open_session(client, kit.evaluation_keys)
    assert session_id in service.key_cache  # prepared at creation
    upload(client, session_id, auth, ciphertexts)
    misses, hits = service.key_cache.misses, service.key_cache.hits

    assert client.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200
    response = client.post(
        f"/sessions/{session_id}/explain",
        content=ciphertexts["candidates"],
        headers={**auth, **OCTET},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert float(response.headers["X-FHE-Execution-Time"]) > 0
    verdicts = [int(v) for v in kit.decrypt(response.content, "explain")]
    applicant, bank = PROFILES[0].applicant, PROFILES[0].bank
    expected = [int(clear_verdict(applicant, bank, row)) for row in CANDIDATE_ROWS]
    assert len(expected) == CARD["input_shapes"]["candidates"][0]
    assert set(expected) == {0, 1}, "the explained profile must have both outcomes"
    assert verdicts == expected
    # predict then explain: keys prepared once (at creation), found in the cache twice.
    assert (service.key_cache.misses, service.key_cache.hits) == (misses, hits + 2)

    assert client.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
    assert session_id not in service.key_cache
    assert not (service.store.root / session_id).exists()
    assert_error(client.get(f"/sessions/{session_id}/output", headers=auth), 404)


def test_explain_needs_only_applicant_and_bank(
    client: TestClient, kit: Kit, ciphertexts: dict[str, bytes]
) -> None:
    session_id, auth = open_session(client, kit.evaluation_keys)
    for party in ("applicant", "bank"):
        client.put(
            f"/sessions/{session_id}/inputs/{party}",
            content=ciphertexts[party],
            headers={**auth, **OCTET},
        ).raise_for_status()
    response = client.post(
        f"/sessions/{session_id}/explain",
        content=ciphertexts["candidates"],
        headers={**auth, **OCTET},
    )
    assert response.status_code == 200, response.text
    assert len(kit.decrypt(response.content, "explain")) == len(settings.YEARS_EMPLOYED_BINS)


def test_sessions_survive_a_restart(tmp_path: Path, kit: Kit, ciphertexts: dict) -> None:
    store_dir = tmp_path / "store"
    with app_client(store_dir=store_dir) as first:
        session_id, auth = open_session(first, kit.evaluation_keys)
        upload(first, session_id, auth, ciphertexts)
        first.post(f"/sessions/{session_id}/predict", headers=auth).raise_for_status()
        output = first.get(f"/sessions/{session_id}/output", headers=auth).content
    with app_client(store_dir=store_dir) as second:
        assert session_id not in service_of(second).key_cache
        again = second.get(f"/sessions/{session_id}/output", headers=auth)
        assert again.status_code == 200 and again.content == output
        # The keys are prepared again from disk after the restart.
        assert second.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200
        verdict = kit.decrypt(
            second.get(f"/sessions/{session_id}/output", headers=auth).content, "predict"
        )
        assert int(verdict) == int(PROFILES[0].verdict())


def test_token_is_stored_only_as_a_hash(client: TestClient, kit: Kit) -> None:
    response = client.post("/sessions", content=kit.evaluation_keys, headers=OCTET)
    body = response.json()
    assert body["expires_in"] == ServerSettings().session_ttl_seconds
    assert len(body["token"]) >= 40  # secrets.token_urlsafe(32): 256 bits
    session_dir = service_of(client).store.root / body["session_id"]
    meta = json.loads((session_dir / "meta.json").read_text())
    assert meta["token_sha256"] == hashlib.sha256(body["token"].encode()).hexdigest()
    for file in session_dir.iterdir():
        assert body["token"].encode() not in file.read_bytes()


def test_openapi_documents_the_contract(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    binary_routes = [
        ("/sessions", "post"),
        ("/sessions/{session_id}/inputs/{party}", "put"),
        ("/sessions/{session_id}/explain", "post"),
    ]
    for path, method in binary_routes:
        assert "application/octet-stream" in paths[path][method]["requestBody"]["content"]
    expected_codes = {
        ("/sessions", "post"): {"201", "413", "422"},
        ("/sessions/{session_id}/inputs/{party}", "put"): {"204", "401", "404", "413", "422"},
        ("/sessions/{session_id}/predict", "post"): {"200", "401", "404", "409", "503"},
        ("/sessions/{session_id}/output", "get"): {"200", "401", "404", "409"},
        ("/sessions/{session_id}/explain", "post"): {"200", "401", "409", "413", "422", "503"},
        ("/sessions/{session_id}", "delete"): {"204", "401", "404"},
    }
    for (path, method), codes in expected_codes.items():
        assert codes <= set(paths[path][method]["responses"]), (path, method)
        assert paths[path][method].get("description") or paths[path][method].get("summary")
    assert (
        "application/octet-stream"
        in (paths["/sessions/{session_id}/output"]["get"]["responses"]["200"]["content"])
    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


# ---------------------------------------------------------------------------------------------
# Each error status with a real request
# ---------------------------------------------------------------------------------------------
SESSION_ROUTES: list[tuple[str, str]] = [
    ("put", "/sessions/{id}/inputs/applicant"),
    ("post", "/sessions/{id}/predict"),
    ("get", "/sessions/{id}/output"),
    ("post", "/sessions/{id}/explain"),
    ("delete", "/sessions/{id}"),
]


def call(http: Any, method: str, path: str, headers: dict, content: bytes | None = None) -> Any:
    if method in ("put", "post"):
        return http.request(method, path, headers=headers, content=content or b"")
    return http.request(method, path, headers=headers)


def test_401_missing_or_wrong_token_on_every_session_route(client: TestClient, kit: Kit) -> None:
    session_id, _ = open_session(client, kit.evaluation_keys)
    _, other_auth = open_session(client, kit.evaluation_keys)
    for method, template in SESSION_ROUTES:
        path = template.format(id=session_id)
        for headers in (
            {},
            {"Authorization": ""},
            {"Authorization": "Basic dXNlcjpwYXNz"},
            bearer("not-the-token"),
            other_auth,  # a real token, of another session
        ):
            response = call(client, method, path, headers)
            assert_error(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
    assert (service_of(client).store.root / session_id).is_dir()  # DELETE refused


def test_404_unknown_expired_or_path_like_session(client: TestClient, kit: Kit) -> None:
    _, auth = open_session(client, kit.evaluation_keys)
    store_root = service_of(client).store.root
    before = sorted(p.name for p in store_root.parent.rglob("*"))
    unknown_ids = [
        "0" * 32,
        "A" * 32,  # upper case is not an id we issue
        "0" * 31,
        "..",
        "%2e%2e",
        "..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "meta.json",
        "0" * 32 + "%00",
    ]
    for session_id in unknown_ids:
        for method, template in SESSION_ROUTES:
            response = call(client, method, template.format(id=session_id), auth)
            assert response.status_code == 404, (session_id, method, response.text)
            assert "Traceback" not in response.text
    assert sorted(p.name for p in store_root.parent.rglob("*")) == before


def test_404_after_idle_expiry_and_expired_sessions_are_purged(tmp_path: Path, kit: Kit) -> None:
    with app_client(store_dir=tmp_path / "store", session_ttl_seconds=1.0) as test_client:
        service = service_of(test_client)
        session_id, auth = open_session(test_client, kit.evaluation_keys)
        assert_error(test_client.get(f"/sessions/{session_id}/output", headers=auth), 409)

        # Nobody touches the session: the periodic purge (every second here) removes it.
        def gone() -> bool:
            on_disk = (service.store.root / session_id).exists()
            return not on_disk and session_id not in service.key_cache

        deadline = time.monotonic() + 5
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(), "the periodic purge did not remove the session and its cached keys"
        assert_error(test_client.get(f"/sessions/{session_id}/output", headers=auth), 404)


@pytest.mark.parametrize("limit", ["max_sessions", "disk_budget_bytes"])
def test_503_beyond_a_limit_and_the_live_session_stays(
    tmp_path: Path, kit: Kit, limit: str
) -> None:
    one_session = WIRE["evaluation_keys"]["bytes"] + sum(WIRE[p]["bytes"] for p in settings.PARTIES)
    overrides: dict[str, Any] = {"max_sessions": 1} if limit == "max_sessions" else {}
    if limit == "disk_budget_bytes":
        overrides["disk_budget_bytes"] = int(1.5 * one_session) + 64 * 1024
    ttl = 3600.0
    with app_client(
        store_dir=tmp_path / "store", session_ttl_seconds=ttl, **overrides
    ) as test_client:
        oldest, oldest_auth = open_session(test_client, kit.evaluation_keys)
        refused = test_client.post("/sessions", content=kit.evaluation_keys, headers=OCTET)
        assert_error(refused, 503, "sessions")
        assert 0 < int(refused.headers["Retry-After"]) <= ttl  # when the live one would expire
        assert_error(test_client.get(f"/sessions/{oldest}/output", headers=oldest_auth), 409)
        service = service_of(test_client)
        assert oldest in service.key_cache
        assert service.store.session_ids() == [oldest]
        # Once the live session is deleted, there is room again.
        assert test_client.delete(f"/sessions/{oldest}", headers=oldest_auth).status_code == 204
        newest, _ = open_session(test_client, kit.evaluation_keys)
        assert service.store.session_ids() == [newest]


def test_409_steps_out_of_order(client: TestClient, kit: Kit, ciphertexts: dict) -> None:
    session_id, auth = open_session(client, kit.evaluation_keys)
    url = f"/sessions/{session_id}"

    def put(party: str) -> None:
        response = client.put(
            f"{url}/inputs/{party}", content=ciphertexts[party], headers={**auth, **OCTET}
        )
        assert response.status_code == 204

    assert_error(client.post(f"{url}/predict", headers=auth), 409, "applicant")
    assert_error(client.get(f"{url}/output", headers=auth), 409, "predict")
    explain = {"content": ciphertexts["candidates"], "headers": {**auth, **OCTET}}
    assert_error(client.post(f"{url}/explain", **explain), 409, "applicant")
    put("credit_bureau")
    assert_error(client.post(f"{url}/explain", **explain), 409, "applicant, bank")
    put("applicant")
    assert_error(client.post(f"{url}/predict", headers=auth), 409, "bank")
    assert_error(client.post(f"{url}/explain", **explain), 409, "bank")
    put("bank")
    assert_error(client.get(f"{url}/output", headers=auth), 409)
    assert client.post(f"{url}/predict", headers=auth).status_code == 200
    assert client.get(f"{url}/output", headers=auth).status_code == 200
    put("bank")  # same bytes again: still a new input, the verdict must be recomputed
    assert_error(client.get(f"{url}/output", headers=auth), 409, "predict")


def test_413_evaluation_keys_over_a_lowered_limit(tmp_path: Path, kit: Kit) -> None:
    with app_client(store_dir=tmp_path / "store", max_evaluation_key_bytes=1_000_000) as http:
        assert_error(http.post("/sessions", content=kit.evaluation_keys), 413, "limit")
        assert service_of(http).store.session_ids() == []


def test_413_ciphertexts_over_a_lowered_limit(tmp_path: Path, kit: Kit, ciphertexts: dict) -> None:
    with app_client(store_dir=tmp_path / "store", max_ciphertext_bytes=100) as http:
        session_id, auth = open_session(http, kit.evaluation_keys)
        for party in settings.PARTIES:
            response = http.put(
                f"/sessions/{session_id}/inputs/{party}",
                content=ciphertexts[party],
                headers={**auth, **OCTET},
            )
            assert_error(response, 413, "limit")
        response = http.post(
            f"/sessions/{session_id}/explain",
            content=ciphertexts["candidates"],
            headers={**auth, **OCTET},
        )
        assert_error(response, 413, "limit")


def garbage(length: int, prefix_hex: str = "", seed: int = 0) -> bytes:
    prefix = bytes.fromhex(prefix_hex)
    body = np.random.default_rng(seed).integers(0, 256, length - len(prefix), dtype=np.uint8)
    return prefix + body.tobytes()


def test_422_evaluation_keys_that_are_not_this_models(client: TestClient, kit: Kit) -> None:
    spec = WIRE["evaluation_keys"]
    bad_keys = [
        b"",
        b"hello",
        kit.evaluation_keys[:-1],  # truncated
        kit.evaluation_keys + b"\0",  # one byte too many
        garbage(spec["bytes"]),  # right length, wrong header
        garbage(spec["bytes"], spec["prefix_hex"], seed=1),  # right header, garbage body
    ]
    for body in bad_keys:
        assert_error(client.post("/sessions", content=body, headers=OCTET), 422, "evaluation keys")
    assert service_of(client).store.session_ids() == []


def test_422_ciphertexts_of_the_wrong_party_shape_or_garbage(
    client: TestClient, kit: Kit, ciphertexts: dict
) -> None:
    session_id, auth = open_session(client, kit.evaluation_keys)
    url = f"/sessions/{session_id}"
    wrong = {  # each party gets another input's ciphertext
        "applicant": ciphertexts["bank"],
        "bank": ciphertexts["credit_bureau"],
        "credit_bureau": ciphertexts["candidates"],
    }
    for party in settings.PARTIES:
        spec = WIRE[party]
        for body in (
            wrong[party],
            b"",
            ciphertexts[party] + b"\0",
            garbage(spec["bytes"], seed=2),
            garbage(spec["bytes"], spec["prefix_hex"], seed=3),
        ):
            response = client.put(f"{url}/inputs/{party}", content=body, headers={**auth, **OCTET})
            assert_error(response, 422, party)
    upload(client, session_id, auth, ciphertexts)
    for body in (
        ciphertexts["credit_bureau"],  # one row instead of the candidates
        garbage(WIRE["candidates"]["bytes"], WIRE["candidates"]["prefix_hex"], seed=4),
    ):
        assert_error(
            client.post(f"{url}/explain", content=body, headers={**auth, **OCTET}),
            422,
            "candidates",
        )


def test_422_unknown_party(client: TestClient, kit: Kit, ciphertexts: dict) -> None:
    session_id, auth = open_session(client, kit.evaluation_keys)
    for party in ("insurer", "APPLICANT", "applicant.bin", "%2e%2e"):
        response = client.put(
            f"/sessions/{session_id}/inputs/{party}",
            content=ciphertexts["applicant"],
            headers={**auth, **OCTET},
        )
        assert_error(response, 422, "party")
    assert sorted(p.name for p in (service_of(client).store.root / session_id).iterdir()) == [
        "evaluation_keys.bin",
        "meta.json",
    ]


def test_unexpected_errors_answer_500_without_a_trace(
    tmp_path: Path, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(ServerSettings(store_dir=tmp_path / "store", allowed_hosts=["testserver"]))
    with TestClient(app, raise_server_exceptions=False) as http:
        session_id, auth = open_session(http, kit.evaluation_keys)

        def broken(*_: Any) -> bytes:
            raise ValueError("secret internal state")

        monkeypatch.setattr(service_of(http).store, "read_output", broken)
        response = http.get(f"/sessions/{session_id}/output", headers=auth)
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}


def test_only_accepted_host_names_are_answered(tmp_path: Path) -> None:
    # Default settings: loopback names only, any port; TestClient's own "testserver" is refused.
    with TestClient(create_app(ServerSettings(store_dir=tmp_path / "store"))) as http:
        assert_error(http.get("/health"), 400, "host")
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "127.0.0.1.evil.example", "[::2]", "localhost.evil"):
            assert_error(http.get("/health", headers={"Host": host}), 400, "host")
    # A deployment's names, with a wildcard for subdomains.
    config = ServerSettings(store_dir=tmp_path / "store", allowed_hosts=["*.example.org", "a.b"])
    with TestClient(create_app(config)) as http:
        for host in ("fhe.example.org:443", "a.b"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host
        for host in ("example.org.evil", "evilexample.org", "localhost"):
            assert_error(http.get("/health", headers={"Host": host}), 400, "host")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda card: card["versions"].update({"concrete-python": "2.9.0"}), "concrete-python"),
        (lambda card: card["versions"].update({"concrete-ml": "1.8.0"}), "concrete-ml"),
        (lambda card: card["versions"].update({"python": "3.10.14"}), "python"),
    ],
)
def test_refuses_to_start_with_artifacts_of_other_versions(
    tmp_path: Path, edit: Callable[[dict], None], message: str
) -> None:
    deployment = tmp_path / "deployment"
    shutil.copytree(settings.DEPLOYMENT_DIR, deployment)
    card = json.loads((deployment / "model_card.json").read_text())
    edit(card)
    (deployment / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(RuntimeError, match=f"refusing to start.*{message}"):
        with app_client(store_dir=tmp_path / "store", deployment_dir=deployment):
            pass


def test_refuses_to_start_without_artifacts(tmp_path: Path) -> None:
    deployment = tmp_path / "deployment"
    shutil.copytree(settings.DEPLOYMENT_DIR, deployment)
    (deployment / "server.zip").unlink()
    with pytest.raises(RuntimeError, match="missing.*server.zip"):
        with app_client(store_dir=tmp_path / "store", deployment_dir=deployment):
            pass


def test_python_patch_version_does_not_matter(tmp_path: Path) -> None:
    deployment = tmp_path / "deployment"
    shutil.copytree(settings.DEPLOYMENT_DIR, deployment)
    card = json.loads((deployment / "model_card.json").read_text())
    major, minor, *_ = card["versions"]["python"].split(".")
    card["versions"]["python"] = f"{major}.{minor}.999"
    (deployment / "model_card.json").write_text(json.dumps(card))
    with app_client(store_dir=tmp_path / "store", deployment_dir=deployment) as http:
        assert http.get("/health").status_code == 200


# ---------------------------------------------------------------------------------------------
# The store alone (fake clock): expiry, refusal when full, compare-and-set, path safety
# ---------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_store_expiry_refusal_when_full_compare_and_set_and_path_safety(tmp_path: Path) -> None:
    clock, removed = FakeClock(), []
    store = FileSessionStore(
        root=tmp_path / "store",
        ttl_seconds=60,
        max_sessions=2,
        disk_budget_bytes=10_000,
        on_remove=removed.append,
        clock=clock,
    )
    first, first_token = store.create(b"k" * 1000)
    clock.now += 10
    second, second_token = store.create(b"k" * 1000)
    clock.now += 10
    store.authenticate(first, first_token)  # first is now the most recently used
    # Full: a third session is refused, nobody is evicted; retry when second would expire.
    with pytest.raises(ServerBusyError) as full:
        store.create(b"k" * 1000)
    assert full.value.retry_after == 50 and full.value.status_code == 503
    assert set(store.session_ids()) == {first, second} and removed == []
    clock.now += 5
    store.authenticate(first, first_token)
    with pytest.raises(InvalidTokenError):
        store.authenticate(first, second_token)
    store.put_input(first, Party.bank, b"ciphertext")
    with pytest.raises(StepOutOfOrderError, match="applicant, credit_bureau"):
        store.read_inputs(first, list(Party))
    # Compare-and-set: a verdict computed from replaced inputs is never stored.
    _, version = store.read_inputs(first, [Party.bank])
    store.put_input(first, Party.bank, b"ciphertext 2")
    with pytest.raises(StepOutOfOrderError, match="changed during predict"):
        store.store_output(first, b"stale verdict", version)
    with pytest.raises(StepOutOfOrderError):
        store.read_output(first)
    store.store_output(first, b"verdict", version + 1)
    assert store.read_output(first) == b"verdict"
    # Expired sessions are purged to make room (second: idle since +10, first since +25).
    clock.now += 56
    third, _ = store.create(b"k" * 1000)
    assert set(store.session_ids()) == {first, third} and removed == [second]
    with pytest.raises(SessionNotFoundError):
        store.authenticate(second, second_token)
    clock.now += 30  # first: idle for 86 s, third for 30 s
    with pytest.raises(SessionNotFoundError):
        store.authenticate(first, first_token)
    assert first not in store.session_ids() and first in removed
    # A big session does not fit beside a live one (each counts as complete): refused, then
    # accepted once the live one is deleted, within the disk budget.
    with pytest.raises(ServerBusyError):
        store.create(b"k" * 9_000)
    store.delete(third)
    big, _ = store.create(b"k" * 9_000)
    assert store.session_ids() == [big] and store.disk_usage() <= 10_000
    for bad_id in ("..", "../" + big, big.upper(), big + "/", "", "x" * 32):
        with pytest.raises(SessionNotFoundError):
            store.authenticate(bad_id, "token")
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no leftovers


def test_session_quota_sliding_window_and_failed_creations() -> None:
    clock = FakeClock()
    quota = SessionQuota(limit=2, window_seconds=100, exempt=["127.0.0.1"], clock=clock)
    for _ in range(2):
        with quota.admit("10.0.0.1"):
            clock.now += 10
    with pytest.raises(TooManySessionsError) as refused, quota.admit("10.0.0.1"):
        pass
    # The oldest creation (at +0) leaves the window at +100; it is now +20.
    assert refused.value.retry_after == 80 and refused.value.status_code == 429
    with quota.admit("10.0.0.2"):  # another client has its own quota
        pass
    for _ in range(5):  # an exempt address has none
        with quota.admit("127.0.0.1"):
            pass
    # A creation that fails gives its slot back.
    clock.now += 81  # +101: the first creation left the window
    with pytest.raises(ServerBusyError), quota.admit("10.0.0.1"):
        raise ServerBusyError("store full", retry_after=1)
    with quota.admit("10.0.0.1"):
        pass
    with pytest.raises(TooManySessionsError), quota.admit("10.0.0.1"):
        pass


def test_two_filesystem_stores_on_one_directory_share_the_session_quota(tmp_path: Path) -> None:
    # Two store objects on one directory stand for two worker processes (flock is per open file).
    stores = [
        FileSessionStore(root=tmp_path / "store", ttl_seconds=60, max_sessions=10,
                         disk_budget_bytes=10**6)
        for _ in range(2)
    ]  # fmt: skip
    quotas = [store.session_quota(limit=2, window_seconds=100) for store in stores]
    with quotas[0].admit("10.0.0.1"):
        pass
    with quotas[1].admit("10.0.0.1"):
        pass
    for quota in quotas:
        with pytest.raises(TooManySessionsError), quota.admit("10.0.0.1"):
            pass
    with quotas[1].admit("10.0.0.2"):
        pass
    # The periodic purge forgets addresses whose creations all left the window.
    quota_file = tmp_path / "store" / ".session_quota.json"
    assert sorted(json.loads(quota_file.read_text())) == ["10.0.0.1", "10.0.0.2"]
    stores[0].clock = quotas[0].clock = lambda: time.time() + 101
    stores[0].purge_expired()
    assert json.loads(quota_file.read_text()) == {}


# ---------------------------------------------------------------------------------------------
# A real uvicorn process
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with one_fhe_slot_server(tmp_path_factory.mktemp("live") / "store") as base_url:
        yield base_url


def test_uvicorn_full_flow(live_server: str, kit: Kit) -> None:
    with httpx.Client(base_url=live_server, timeout=60) as http:
        assert http.get("/health").json()["model"]["versions"] == CARD["versions"]
        session_id, auth = open_session(http, kit.evaluation_keys)
        upload(http, session_id, auth, kit.encrypt(PROFILES[1]))
        response = http.post(f"/sessions/{session_id}/predict", headers=auth)
        assert response.status_code == 200 and response.json()["fhe_execution_time"] > 0
        output = http.get(f"/sessions/{session_id}/output", headers=auth)
        assert int(kit.decrypt(output.content, "predict")) == int(PROFILES[1].verdict())
        candidates = kit.encrypt_candidates()
        response = http.post(
            f"/sessions/{session_id}/explain", content=candidates, headers={**auth, **OCTET}
        )
        assert response.status_code == 200
        applicant, bank = PROFILES[1].applicant, PROFILES[1].bank
        expected = [int(clear_verdict(applicant, bank, row)) for row in CANDIDATE_ROWS]
        assert [int(v) for v in kit.decrypt(response.content, "explain")] == expected
        assert http.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
        assert_error(http.get(f"/sessions/{session_id}/output", headers=auth), 404)


def test_uvicorn_503_when_the_fhe_queue_is_full_and_health_stays_fast(
    live_server: str, kit: Kit, ciphertexts: dict
) -> None:
    with httpx.Client(base_url=live_server, timeout=60) as http:
        session_id, auth = open_session(http, kit.evaluation_keys)
        upload(http, session_id, auth, ciphertexts)
        results: dict[str, httpx.Response] = {}

        def explain() -> None:  # ~1-2 s of FHE, holding the only slot
            with httpx.Client(base_url=live_server, timeout=60) as other:
                results["first"] = other.post(
                    f"/sessions/{session_id}/explain",
                    content=ciphertexts["candidates"],
                    headers={**auth, **OCTET},
                )

        worker = threading.Thread(target=explain)
        worker.start()
        # Wait until the explain holds the slot (however slow the machine), then ask for more.
        deadline = time.monotonic() + 60
        while http.get("/health").json()["fhe_queue"]["admitted"] == 0:
            assert worker.is_alive() and time.monotonic() < deadline, "explain never started"
            time.sleep(0.02)
        busy = http.post(f"/sessions/{session_id}/predict", headers=auth)
        health_latencies = []
        while worker.is_alive() and len(health_latencies) < 20:
            start = time.perf_counter()
            assert http.get("/health", timeout=5).status_code == 200
            health_latencies.append(time.perf_counter() - start)
            time.sleep(0.05)
        worker.join(timeout=60)
        assert results["first"].status_code == 200, results["first"].text
        assert_error(busy, 503, "queue")
        assert int(busy.headers["Retry-After"]) >= 1
        assert health_latencies and max(health_latencies) < 1.0
        # Once the slot is free the same request goes through.
        assert http.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200


def raw_request(base_url: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send a request head and some body bytes, never finish the body, read the response."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without a response: {data!r}"
            data += chunk
        raw_head, rest = data.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), headers, rest


def chunked_head(base_url: str, method: str, path: str, extra: str = "") -> str:
    host = urlsplit(base_url).netloc
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
        f"Transfer-Encoding: chunked\r\n{extra}"
    )


def one_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_uvicorn_limits_while_streaming_and_restart(
    tmp_path: Path, kit: Kit, ciphertexts: dict
) -> None:
    store_dir = tmp_path / "store"
    with running_server(store_dir=store_dir) as base_url:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            session_id, auth = open_session(http, kit.evaluation_keys)
            upload(http, session_id, auth, ciphertexts)
            assert http.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200
            output = http.get(f"/sessions/{session_id}/output", headers=auth).content

    limits = {"FHE_MAX_EVALUATION_KEY_BYTES": "1000000", "FHE_MAX_CIPHERTEXT_BYTES": "100"}
    with running_server(store_dir=store_dir, env=limits) as base_url:
        # The session made by the previous process is intact.
        with httpx.Client(base_url=base_url, timeout=60) as http:
            again = http.get(f"/sessions/{session_id}/output", headers=auth)
            assert again.status_code == 200 and again.content == output

        # Bodies over the limit are refused while they stream in: the bodies below are never
        # finished (no closing chunk), so any answer proves the server did not wait for the end.
        head = chunked_head(base_url, "POST", "/sessions")
        status, _, body = raw_request(base_url, head, one_chunk(kit.evaluation_keys[:1_000_001]))
        assert status == 413 and b"limit" in body
        auth_line = f"Authorization: {auth['Authorization']}\r\n"
        for path, data in (
            (f"/sessions/{session_id}/inputs/applicant", ciphertexts["applicant"]),
            (f"/sessions/{session_id}/explain", ciphertexts["candidates"]),
        ):
            method = "PUT" if "inputs" in path else "POST"
            head = chunked_head(base_url, method, path, auth_line)
            status, _, body = raw_request(base_url, head, one_chunk(data[:101]))
            assert status == 413 and b"limit" in body, body
        # A declared Content-Length over the limit is refused before any body byte is sent.
        head = (
            f"POST /sessions HTTP/1.1\r\nHost: {urlsplit(base_url).netloc}\r\n"
            "Content-Length: 2000000\r\n"
        )
        status, _, body = raw_request(base_url, head)
        assert status == 413 and b"limit" in body
        with httpx.Client(base_url=base_url, timeout=60) as http:
            assert http.get("/health").status_code == 200


def test_uvicorn_refuses_to_start_with_artifacts_of_other_versions(tmp_path: Path) -> None:
    deployment = tmp_path / "deployment"
    shutil.copytree(settings.DEPLOYMENT_DIR, deployment)
    card = json.loads((deployment / "model_card.json").read_text())
    card["versions"]["concrete-ml"] = "0.0.1"
    (deployment / "model_card.json").write_text(json.dumps(card))
    env = {"FHE_DEPLOYMENT_DIR": str(deployment)}
    with pytest.raises(ServerStartError) as error:
        with running_server(store_dir=tmp_path / "store", env=env):
            pass
    assert error.value.returncode not in (None, 0)
    assert "refusing to start" in error.value.log and "concrete-ml" in error.value.log
