"""The client library (backend.py) against a real FHE server process, and its error handling.

The server runs as ``uvicorn server:app`` on a free port with its store in a temporary folder.
Verdicts and explanations are compared with the clear evaluation of the same quantized tree
(development/reference.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import backend
import settings
from development.instrumentation import RecordingTransport
from development.reference import clear_explain, clear_verdict
from tests.support.applications import DATA_PROFILES
from tests.support.servers import ScriptedServer, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(store_dir=tmp_path_factory.mktemp("fhe_server") / "store") as url:
        yield url


@pytest.fixture(scope="module")
def transport() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture(scope="module")
def client(
    server_url: str, transport: RecordingTransport, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[backend.CreditScoringClient]:
    key_dir = tmp_path_factory.mktemp("client") / "keys"
    client = backend.CreditScoringClient(server_url, key_dir=key_dir, transport=transport)
    client.generate_keys()
    yield client
    client.close()


def _send_profile(client: backend.CreditScoringClient, profile: dict[str, Any]) -> None:
    client.send_applicant(**profile["applicant"])
    client.send_bank(**profile["bank"])
    client.send_credit_bureau(**profile["credit_bureau"])


def _clear(profile: dict[str, Any], function: Callable[..., Any]) -> Any:
    return function(profile["applicant"], profile["bank"], profile["credit_bureau"])


@pytest.mark.parametrize("name", list(DATA_PROFILES))
def test_hard_coded_profiles_still_match_the_clear_reference(name: str) -> None:
    profile = DATA_PROFILES[name]
    assert _clear(profile, clear_verdict) is profile["verdict"]
    assert _clear(profile, clear_explain) == profile["explain"]


def test_generate_keys_keeps_the_secret_key_local(
    client: backend.CreditScoringClient, transport: RecordingTransport
) -> None:
    assert (client.key_dir / backend.KEYS_FILE_NAME).stat().st_size > 0
    assert client.has_keys and client.session_id
    assert client.evaluation_key_size is not None and client.evaluation_key_size > 1_000_000
    # The only upload of the key generation is the evaluation keys, sent once the server said it
    # would admit them (GET /admission has no body).
    assert transport.calls[:2] == [("GET", "/admission"), ("POST", "/sessions")]


@pytest.mark.parametrize("name", list(DATA_PROFILES))
def test_full_flow_verdict_equals_clear_model(
    name: str, client: backend.CreditScoringClient, transport: RecordingTransport
) -> None:
    profile = DATA_PROFILES[name]
    _send_profile(client, profile)
    assert client.sent_parties == set(settings.PARTIES)
    for party in settings.PARTIES:
        assert len(client.ciphertexts[party]) > 100
    seconds = client.predict()
    assert 0 < seconds < 120
    start = len(transport.calls)
    verdict = client.decrypt_verdict()
    assert transport.calls[start:] == [("GET", f"/sessions/{client.session_id}/output")]
    assert verdict is _clear(profile, clear_verdict) is profile["verdict"]
    assert client.verdict is verdict
    assert client.encrypted_output


@pytest.mark.parametrize("name", ["refused_flippable", "refused_unflippable", "refused_unemployed"])
def test_explain_refused_profile_in_one_round_trip(
    name: str, client: backend.CreditScoringClient, transport: RecordingTransport
) -> None:
    profile = DATA_PROFILES[name]
    _send_profile(client, profile)
    client.predict()
    assert client.decrypt_verdict() is False
    start = len(transport.calls)
    answer = client.explain()
    assert answer == _clear(profile, clear_explain) == profile["explain"]
    assert transport.calls[start:] == [("POST", f"/sessions/{client.session_id}/explain")]
    assert client.explain_fhe_execution_time is not None
    explanation = backend.explain_encrypt_run_decrypt(client)
    expected_outcome = "no_change" if profile["explain"] is None else "years_needed"
    assert explanation.outcome == expected_outcome
    assert explanation.years_employed == profile["explain"]


def test_explain_approved_profile_makes_no_server_call(
    client: backend.CreditScoringClient, transport: RecordingTransport
) -> None:
    profile = DATA_PROFILES["approved"]
    _send_profile(client, profile)
    client.predict()
    assert client.decrypt_verdict() is True
    start = len(transport.calls)
    assert client.explain() == profile["credit_bureau"]["years_employed"]
    explanation = backend.explain_encrypt_run_decrypt(client)
    assert explanation.outcome == "already_approved"
    assert explanation.fhe_execution_time is None
    assert transport.calls[start:] == []


def test_thin_functions_return_plain_values(
    client: backend.CreditScoringClient,
) -> None:
    profile = DATA_PROFILES["refused_flippable"]
    applicant = backend.pre_process_encrypt_send_applicant(client, **profile["applicant"])
    bank = backend.pre_process_encrypt_send_bank(client, **profile["bank"])
    bureau = backend.pre_process_encrypt_send_credit_bureau(client, **profile["credit_bureau"])
    for shown, party in ((applicant, "applicant"), (bank, "bank"), (bureau, "credit_bureau")):
        assert shown.endswith(f"[{len(client.ciphertexts[party]):,} B]")
        assert len(shown) < 200
    assert backend.run_fhe(client) > 0
    shown, approved = backend.get_output_and_decrypt(client)
    assert approved is False and shown.endswith(f"[{len(client.encrypted_output or b''):,} B]")


def test_sending_again_invalidates_the_last_run(client: backend.CreditScoringClient) -> None:
    _send_profile(client, DATA_PROFILES["approved"])
    client.predict()
    client.send_bank(account_age=3)
    with pytest.raises(backend.StepOrderError) as caught:
        client.decrypt_verdict()
    assert caught.value.code == "order_run_first"


INVALID_FIELDS = [
    ("applicant", {"age": 200}),
    ("applicant", {"income_type": "Astronaut"}),
    ("applicant", {"own_car": "maybe"}),
    ("applicant", {"total_income": float("nan")}),
    ("applicant", {"household_size": None}),
    ("bank", {"account_age": -1}),
    ("bank", {"account_age": "ten"}),
    ("credit_bureau", {"years_employed": "40+"}),
    ("credit_bureau", {"employed": 3}),
]


@pytest.mark.parametrize(("party", "change"), INVALID_FIELDS)
def test_invalid_field_values_raise_before_any_request(
    party: str,
    change: dict[str, Any],
    client: backend.CreditScoringClient,
    transport: RecordingTransport,
    tmp_path: Path,
) -> None:
    profile = DATA_PROFILES["approved"]
    fields = {**profile[party], **change}
    senders = {
        "applicant": lambda c: c.send_applicant(**fields),
        "bank": lambda c: c.send_bank(**fields),
        "credit_bureau": lambda c: c.send_credit_bureau(**fields),
    }
    # A client with keys and a session: nothing is encrypted or sent.
    start = len(transport.calls)
    with pytest.raises(backend.InvalidFieldError) as caught:
        senders[party](client)
    assert caught.value.code == "invalid_field"
    assert transport.calls[start:] == []
    # A fresh client: the field is checked before anything else, still without a request.
    fresh_transport = RecordingTransport()
    fresh = backend.CreditScoringClient(
        "http://127.0.0.1:9", key_dir=tmp_path / "keys", transport=fresh_transport
    )
    with pytest.raises(backend.InvalidFieldError):
        senders[party](fresh)
    assert fresh_transport.calls == []


def test_missing_and_unknown_applicant_fields_are_invalid(
    client: backend.CreditScoringClient, transport: RecordingTransport
) -> None:
    applicant = dict(DATA_PROFILES["approved"]["applicant"])
    start = len(transport.calls)
    with pytest.raises(backend.InvalidFieldError, match="missing"):
        client.send_applicant(**{k: v for k, v in applicant.items() if k != "age"})
    with pytest.raises(backend.InvalidFieldError, match="unknown"):
        client.send_applicant(**applicant, shoe_size=42)
    assert transport.calls[start:] == []


def test_steps_out_of_order_raise_locally(server_url: str, tmp_path: Path) -> None:
    transport = RecordingTransport()
    client = backend.CreditScoringClient(server_url, key_dir=tmp_path / "keys", transport=transport)
    profile = DATA_PROFILES["approved"]
    for step in (
        lambda: client.send_applicant(**profile["applicant"]),
        lambda: client.send_bank(**profile["bank"]),
        lambda: client.send_credit_bureau(**profile["credit_bureau"]),
        client.predict,
        client.decrypt_verdict,
        client.explain,
    ):
        with pytest.raises(backend.StepOrderError) as caught:
            step()
        assert caught.value.code == "order_keys_first"
        assert caught.value.status_code is None
    assert transport.calls == []

    client.generate_keys()
    client.send_bank(**profile["bank"])
    before = len(transport.calls)
    with pytest.raises(backend.StepOrderError) as caught:
        client.predict()
    assert caught.value.code == "order_inputs_first"
    assert caught.value.details["parties"] == ("applicant", "credit_bureau")
    with pytest.raises(backend.StepOrderError) as caught:
        client.decrypt_verdict()
    assert caught.value.code == "order_run_first"
    with pytest.raises(backend.StepOrderError) as caught:
        client.explain()
    assert caught.value.code == "order_decrypt_first"
    assert len(transport.calls) == before
    client.close()


def test_close_deletes_the_server_session_and_the_keys(server_url: str, tmp_path: Path) -> None:
    transport = RecordingTransport()
    client = backend.CreditScoringClient(server_url, key_dir=tmp_path / "keys", transport=transport)
    client.generate_keys()
    session_id, token = client.session_id, client._token
    assert client.key_dir.is_dir()
    client.close()
    assert not client.key_dir.exists()
    assert transport.calls[-1] == ("DELETE", f"/sessions/{session_id}")
    assert client.session_id is None and not client.has_keys
    gone = httpx.post(
        f"{server_url}/sessions/{session_id}/predict",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert gone.status_code == 404
    client.close()  # idempotent


def test_new_client_uses_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FHE_SERVER_URL", "http://example.invalid:1234/")
    monkeypatch.setenv("FHE_CLIENT_KEYS_DIR", str(tmp_path))
    client_settings = settings.ClientSettings()
    first, second = backend.new_client(client_settings), backend.new_client(client_settings)
    assert first.server_url == "http://example.invalid:1234"
    assert first.key_dir.parent == tmp_path
    assert first.key_dir != second.key_dir
    assert not first.key_dir.exists()  # created by generate_keys only


# ---------------------------------------------------------------------------------------------
# Error mapping, with a mock transport (no server)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ScriptedServer]]:
    server = ScriptedServer()
    client = backend.CreditScoringClient(
        "http://fhe.test",
        key_dir=tmp_path_factory.mktemp("scripted") / "keys",
        transport=httpx.MockTransport(server),
    )
    client.generate_keys()
    yield client, server
    client.close()


@pytest.mark.parametrize(
    ("status", "error_class", "code"),
    [
        (401, backend.AuthenticationError, "unauthorized"),
        (404, backend.SessionNotFoundError, "not_found"),
        (409, backend.StepOrderError, "order_server"),
        (413, backend.PayloadTooLargeError, "too_large"),
        (422, backend.InvalidPayloadError, "invalid_payload"),
        (429, backend.TooManySessionsError, "too_many_sessions"),
        (503, backend.ServerBusyError, "busy"),
        (500, backend.ServerError, "server_error"),
    ],
)
def test_http_errors_become_typed_exceptions(
    status: int, error_class: type[backend.ServerError], code: str, scripted: Any
) -> None:
    client, server = scripted
    if not client.has_keys:
        client.generate_keys()
    server.next = httpx.Response(
        status, json={"detail": f"detail {status}"}, headers={"Retry-After": "7"}
    )
    with pytest.raises(error_class) as caught:
        client.send_bank(account_age=12)
    error = caught.value
    assert type(error) is error_class
    assert isinstance(error, backend.ClientError)
    assert error.code == code and code in backend.ERROR_CODES
    assert error.status_code == status
    assert f"detail {status}" in str(error) and f"HTTP {status}" in str(error)
    if status in (429, 503):
        assert error.retry_after == 7.0
    if status == 404:
        # The session is gone for good: new keys are needed.
        assert not client.has_keys
        with pytest.raises(backend.StepOrderError, match="keys"):
            client.send_bank(account_age=12)


@pytest.mark.parametrize(
    ("exception", "code"),
    [
        (httpx.ConnectError("refused"), "unreachable"),
        (httpx.ReadTimeout("slow"), "timeout"),
    ],
)
def test_unreachable_server_is_a_typed_error(
    exception: Exception, code: str, scripted: Any
) -> None:
    client, server = scripted
    if not client.has_keys:
        client.generate_keys()
    server.next = exception
    with pytest.raises(backend.ServerUnreachableError) as caught:
        client.send_bank(account_age=12)
    assert caught.value.code == code


def test_a_connection_closed_before_the_answer_is_tried_once_more(scripted: Any) -> None:
    client, server = scripted
    if not client.has_keys:
        client.generate_keys()
    # What a server closing an idle kept-alive connection as the request leaves looks like.
    closed = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    server.requests.clear()
    server.fail_once, server.next = closed, httpx.Response(204)
    client.send_bank(account_age=12)
    assert server.requests == [("PUT", "/sessions/s1/inputs/bank")] * 2
    # Twice in a row is a server problem, reported as such.
    server.requests.clear()
    server.next = closed
    with pytest.raises(backend.ServerUnreachableError) as caught:
        client.send_bank(account_age=12)
    assert caught.value.code == "unreachable"
    assert server.requests == [("PUT", "/sessions/s1/inputs/bank")] * 2


def test_garbage_output_is_a_bad_response_not_a_crash(scripted: Any) -> None:
    client, server = scripted
    if not client.has_keys:
        client.generate_keys()
    server.next = httpx.Response(204)
    profile = DATA_PROFILES["approved"]
    _send_profile(client, profile)
    server.next = httpx.Response(200, json={"fhe_execution_time": 0.5})
    assert client.predict() == 0.5
    server.next = httpx.Response(200, content=b"not a ciphertext")
    with pytest.raises(backend.ServerError) as caught:
        client.decrypt_verdict()
    assert caught.value.code == "bad_response"


def test_retry_after_parsing() -> None:
    assert backend._parse_seconds("3") == 3.0
    assert backend._parse_seconds(None) is None
    assert backend._parse_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert backend._parse_seconds("-1") is None


def test_shorten_hex() -> None:
    header = bytes(64)
    data = header + bytes(range(64)) + bytes(32)
    shown = backend.shorten_hex(data)
    assert shown == f"…{bytes(range(32)).hex()}… [160 B]"
    assert backend.shorten_hex(b"\x01\x02") == "0102 [2 B]"
    preview = backend.shorten_hex(b"\xff" * 10, total_size=15_892_832)
    assert preview == "ffffffffffffffffffff… [15,892,832 B]"
