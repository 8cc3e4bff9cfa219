"""The client library's bounded retries (issue 22), against a scripted server.

A transient failure (502, 504, or a 503 marked ``X-FHE-Transient``: a replica or the session
store went away, nothing changed) is repeated with backoff within ``retry_seconds``; any other
refusal is raised at once. ``wait_while_busy`` waits for a busy server within ``max_wait`` and
says how long it waited. The cluster itself is exercised in ``tests/cluster/test_faults.py``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import backend
from contracts.single_key import REFUSAL_DETAIL_HEADER, REFUSAL_STATUS_HEADER, TRANSIENT_HEADER
from fhe_client.retry import Waited, backoff, call_with_retries

SESSION = {"session_id": "a" * 32, "token": "t", "expires_in": 60}


@pytest.fixture(scope="module")
def saved_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """One key set generated for the module (copied by every client)."""
    key_dir = tmp_path_factory.mktemp("keys")
    return key_dir, backend.generate_key_file(key_dir)


class Sequence:
    """A mock server answering the scripted responses in order, then 204s; logs each request.

    ``GET /admission`` (asked before every creation) is answered from ``admissions`` (default:
    204, admitted) and logged apart, in ``asked``.
    """

    def __init__(self, *answers: httpx.Response, admissions: tuple[httpx.Response, ...] = ()):
        self.answers = list(answers)
        self.admissions = list(admissions)
        self.requests: list[tuple[str, str]] = []
        self.asked = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if (request.method, request.url.path) == ("GET", "/admission"):
            self.asked += 1
            return self.admissions.pop(0) if self.admissions else httpx.Response(204)
        self.requests.append((request.method, request.url.path))
        return self.answers.pop(0) if self.answers else httpx.Response(204)


@pytest.fixture
def make_client(
    saved_keys: tuple[Path, bytes], tmp_path: Path
) -> Iterator[Callable[..., backend.CreditScoringClient]]:
    made: list[backend.CreditScoringClient] = []

    def copy_keys(key_dir: Path) -> bytes:
        shutil.copytree(saved_keys[0], key_dir, dirs_exist_ok=True)
        return saved_keys[1]

    def make(server: Sequence, retry_seconds: float = 10.0) -> backend.CreditScoringClient:
        client = backend.CreditScoringClient(
            "http://fhe.test",
            key_dir=tmp_path / f"client-{len(made)}",
            transport=httpx.MockTransport(server),
            key_generator=copy_keys,
            retry_seconds=retry_seconds,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def transient_503() -> httpx.Response:
    return httpx.Response(
        503, json={"detail": "no replica"}, headers={"Retry-After": "0", TRANSIENT_HEADER: "1"}
    )


def test_transient_failures_are_repeated_until_the_answer(make_client: Callable) -> None:
    server = Sequence(
        transient_503(),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(201, json=SESSION),  # the creation, after two transient failures
        transient_503(),  # the upload
    )
    client = make_client(server)
    client.generate_keys()
    client.send_bank(account_age=12)
    assert (
        server.requests
        == [("POST", "/sessions")] * 3 + [("PUT", f"/sessions/{'a' * 32}/inputs/bank")] * 2
    )


def refusal(status: int, retry_after: str, transient: bool = False) -> httpx.Response:
    """``GET /admission``'s refusal as a replica (or nginx's auth request) words it."""
    headers = {
        REFUSAL_STATUS_HEADER: str(status),
        REFUSAL_DETAIL_HEADER: "the server holds as many sessions as it can",
        "Retry-After": retry_after,
    }
    if transient:
        headers[TRANSIENT_HEADER] = "1"
    return httpx.Response(403, json={"detail": "refused"}, headers=headers)


def test_a_refused_admission_sends_no_keys(make_client: Callable) -> None:
    """A refusal announced by GET /admission is raised as the creation's, the keys unsent."""
    server = Sequence(admissions=(refusal(503, "4"),))
    client = make_client(server)
    with pytest.raises(backend.ServerBusyError) as refused:
        client.generate_keys()
    assert refused.value.retry_after == 4 and refused.value.status_code == 503
    assert server.asked == 1 and server.requests == []  # no POST: no 15 MB sent
    quota = Sequence(admissions=(refusal(429, "60"),))
    with pytest.raises(backend.ServerError) as limited:
        make_client(quota).generate_keys()
    assert limited.value.status_code == 429 and quota.requests == []


def test_a_transient_admission_refusal_is_repeated_then_the_keys_go(make_client: Callable) -> None:
    server = Sequence(
        httpx.Response(201, json=SESSION), admissions=(refusal(503, "0", transient=True),)
    )
    client = make_client(server)
    client.generate_keys()
    assert server.asked == 2 and server.requests == [("POST", "/sessions")]
    assert client.session_id == SESSION["session_id"]


def test_a_busy_server_is_not_repeated_by_the_library(make_client: Callable) -> None:
    """A full FHE queue or store (503 without the transient mark) is the caller's to handle."""
    busy = httpx.Response(
        503, json={"detail": "the FHE queue is full"}, headers={"Retry-After": "3"}
    )
    server = Sequence(busy)
    client = make_client(server)
    with pytest.raises(backend.ServerBusyError) as refused:
        client.generate_keys()
    assert refused.value.retry_after == 3 and not refused.value.transient
    assert server.requests == [("POST", "/sessions")]


def test_transient_failures_are_repeated_within_the_budget_only(make_client: Callable) -> None:
    server = Sequence(*(transient_503() for _ in range(50)))
    client = make_client(server, retry_seconds=1.0)
    with pytest.raises(backend.ServerBusyError) as gave_up:
        client.generate_keys()
    assert gave_up.value.transient
    assert gave_up.value.waited == pytest.approx(1.0)  # type: ignore[attr-defined]
    assert 2 <= gave_up.value.attempts == len(server.requests) < 50  # type: ignore[attr-defined]


def test_wait_while_busy_waits_as_told_within_a_bound_and_says_how_long() -> None:
    answers: list[object] = [backend.ServerBusyError("busy", retry_after=0.05)] * 2 + ["done"]

    def step() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    result = backend.wait_while_busy(step, max_wait=10)
    assert result.value == "done" and result.attempts == 3
    assert result.waited == pytest.approx(0.1)

    def always_busy() -> str:
        raise backend.TooManySessionsError("quota", retry_after=0.2)

    with pytest.raises(backend.TooManySessionsError) as still:
        backend.wait_while_busy(always_busy, max_wait=0.5)
    assert still.value.waited == pytest.approx(0.5)  # type: ignore[attr-defined]
    assert backend.retry_while_busy(lambda: 7, attempts=1) == 7
    with pytest.raises(ValueError):
        backend.retry_while_busy(lambda: 7, attempts=0)


def test_call_with_retries_backs_off_and_cuts_the_last_wait_to_the_budget() -> None:
    assert [delay for delay, _ in zip(backoff(), range(6), strict=False)] == [
        0.5, 1.0, 2.0, 4.0, 4.0, 4.0,
    ]  # fmt: skip
    slept: list[float] = []
    failures = iter([OSError("gone")] * 4)

    def step() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    def wait_for(error: Exception, delay: float) -> float | None:
        return delay if isinstance(error, OSError) else None

    assert call_with_retries(step, wait_for, max_wait=100, sleep=slept.append) == Waited(
        "ok", 7.5, 5
    )
    assert slept == [0.5, 1.0, 2.0, 4.0]
    slept.clear()
    failures = iter([OSError("gone")] * 10)
    with pytest.raises(OSError):
        call_with_retries(step, wait_for, max_wait=2.0, sleep=slept.append)
    assert slept == [0.5, 1.0, 0.5]  # the last wait cut to what was left of the 2 s
    with pytest.raises(KeyError):  # not retried
        call_with_retries(lambda: {}["x"], wait_for, max_wait=100, sleep=slept.append)


def test_close_repeats_its_delete_a_few_seconds_only(make_client: Callable) -> None:
    """close() is best effort: its DELETE gets at most 5 s of retries, whatever the budget."""
    server = Sequence(httpx.Response(201, json=SESSION), *(transient_503() for _ in range(50)))
    client = make_client(server, retry_seconds=60.0)
    client.generate_keys()
    client.close()  # never raises
    deletes = [request for request in server.requests if request[0] == "DELETE"]
    assert len(deletes) == 5  # waits of 0.5, 1, 2 and the last 1.5 s: 5 s in all
    assert client.session_id is None
