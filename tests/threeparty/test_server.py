"""The three-party server over HTTP: a real ``uvicorn threeparty.server:app`` and real OpenFHE.

The test plays the parties with the engine in-process (or with ``PartyClient`` in threads) and
checks each refusal: out-of-order rounds 409, malformed blobs 422, a share or ciphertext made for
another session 422, wrong token 401, unknown session 404, oversized bodies 413, a full server
503 with Retry-After, and nothing of the others' work lost after a refusal. It also checks that
everything the server received or sent during a whole flow holds no key share and no clear
partial decryption, and that the server refuses to start when its known-answer check fails.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
from pathlib import Path

import httpx
import pytest
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox

from tests.helpers_server import ServerStartError, running_server
from threeparty import engine, protocol
from threeparty.layout import LAYOUT_PATH, load_layout
from threeparty.party import PartyClient, party_rows
from threeparty.server import ServiceError, SessionStore, ThreePartySettings

APP = "threeparty.server:app"
MAX_SESSIONS = 4
APPLICANT = {
    "own_car": False,
    "own_property": True,
    "mobile_phone": True,
    "num_children": 0,
    "household_size": 2,
    "total_income": 57000,
    "age": 44,
    "income_type": "Working",
    "education_type": "Secondary",
    "family_status": "Married",
    "occupation_type": "Laborers",
    "housing_type": "House / apartment",
}
FIELDS = {
    "applicant": APPLICANT,
    "bank": {"account_age": 30},
    "credit_bureau": {"employed": True, "years_employed": "11-18"},
}


@pytest.fixture(scope="module")
def url():
    env = {"THREEPARTY_MAX_SESSIONS": str(MAX_SESSIONS), "OMP_NUM_THREADS": "1"}
    with running_server(None, env=env, app=APP) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def layout():
    return load_layout()


class Party:
    """One party's raw HTTP access to a session (its own bearer token)."""

    def __init__(self, url: str, code: str):
        self.session_id, token = protocol.parse_session_code(code)
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )

    def call(self, method: str, route: str, content: bytes | None = None, **values: str):
        return self.http.request(
            method, route.format(sid=self.session_id, **values), content=content
        )


@pytest.fixture
def session(url):
    """A new predict session: {role: Party}; deleted afterwards."""
    created = httpx.post(f"{url}/sessions", json={"mode": "predict"}, timeout=30)
    assert created.status_code == 201, created.text
    parties = {role: Party(url, code) for role, code in created.json()["codes"].items()}
    yield parties
    parties["applicant"].call("DELETE", protocol.SESSION)


def _chain():
    """A coherent round-1 chain made in-process: ({role: share}, {role: frame body})."""
    share, lead = engine.lead_round1()
    shares, blobs = {"applicant": share}, {"applicant": lead}
    previous = lead.public_key
    for role in protocol.ROLES[1:]:
        shares[role], blobs[role] = engine.join_round1(
            role, previous, lead.eval_mult, lead.rotation
        )
        previous = blobs[role].public_key
    return shares, {role: protocol.pack(dataclasses.asdict(b)) for role, b in blobs.items()}


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def _round1(parties, frames) -> dict:
    for role in protocol.ROLES:
        response = parties[role].call("PUT", protocol.ROUND1, frames[role])
        assert response.status_code == 204, response.text
    return parties["bank"].call("GET", protocol.STATUS).json()


def test_health_and_the_contract_at_docs(url):
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["self_test"] == "passed"
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    for route in (protocol.ROUND1, protocol.ROUND2, protocol.CIPHERTEXTS, protocol.PARTIAL_TO):
        assert route.replace("{sid}", "{sid}") in paths


def test_tokens_and_unknown_sessions(url, session):
    applicant = session["applicant"]
    sid = applicant.session_id
    _refused(httpx.get(f"{url}/sessions/{sid}/status"), 401, "unauthorized")
    _refused(
        httpx.get(f"{url}/sessions/{sid}/status", headers={"Authorization": "Bearer nope"}),
        401,
        "unauthorized",
    )
    headers = applicant.http.headers
    _refused(
        httpx.get(f"{url}/sessions/{'0' * 32}/status", headers=headers), 404, "unknown_session"
    )
    _refused(httpx.get(f"{url}/sessions/..%2F..%2Fetc/status", headers=headers), 404, "not_found")
    _refused(
        httpx.get(f"{url}/sessions/{sid[:-1]}X/status", headers=headers), 404, "unknown_session"
    )
    # A token of one session does not open another.
    other = httpx.post(f"{url}/sessions", json={}).json()
    other_sid = other["session_id"]
    _refused(httpx.get(f"{url}/sessions/{other_sid}/status", headers=headers), 401, "unauthorized")
    Party(url, other["codes"]["bank"]).call("DELETE", protocol.SESSION)
    _refused(httpx.post(f"{url}/sessions", json={"mode": "guess"}), 422, "invalid_request")


def test_rounds_out_of_order_are_409_and_nothing_is_lost(session):
    shares, frames = _chain()
    bank, applicant, bureau = session["bank"], session["applicant"], session["credit_bureau"]
    _refused(bank.call("PUT", protocol.ROUND1, frames["bank"]), 409, "out_of_order")
    _refused(bank.call("GET", protocol.JOINT, kind="public_key"), 409, "out_of_order")
    _refused(
        bank.call("GET", protocol.ROUND1_BLOB, role="applicant", kind="public_key"),
        409,
        "out_of_order",
    )
    _refused(bank.call("PUT", protocol.ROUND2, b"x" * 10), 409, "out_of_order")
    _refused(bank.call("PUT", protocol.CIPHERTEXTS, protocol.pack({})), 409, "out_of_order")
    _refused(bank.call("POST", protocol.EVALUATE), 409, "out_of_order")
    _refused(bank.call("GET", protocol.OUTPUT), 409, "out_of_order")
    _refused(
        bank.call("PUT", protocol.PARTIAL_TO, b"x", recipient="applicant"), 409, "out_of_order"
    )
    assert applicant.call("PUT", protocol.ROUND1, frames["applicant"]).status_code == 204
    _refused(applicant.call("PUT", protocol.ROUND1, frames["applicant"]), 409, "out_of_order")
    _refused(bureau.call("PUT", protocol.ROUND1, frames["credit_bureau"]), 409, "out_of_order")
    assert bank.call("PUT", protocol.ROUND1, frames["bank"]).status_code == 204
    assert bureau.call("PUT", protocol.ROUND1, frames["credit_bureau"]).status_code == 204
    status = bank.call("GET", protocol.STATUS).json()
    assert status["round1"] == list(protocol.ROLES) and status["joint_keys"]
    public_key = bank.call("GET", protocol.JOINT, kind="public_key").content
    assert engine.key_tag_of(public_key) == status["key_tag"]
    # Combined: the parties' round-1 blobs are not kept any more (memory), only the joint keys.
    gone = bank.call("GET", protocol.ROUND1_BLOB, role="applicant", kind="rotation")
    _refused(gone, 409, "out_of_order")
    _refused(bank.call("PUT", protocol.PARTIAL_TO, b"x", recipient="bank"), 422, "invalid_request")


def test_malformed_blobs_are_422_and_the_session_goes_on(session):
    shares, frames = _chain()
    applicant = session["applicant"]
    blobs = protocol.unpack(frames["applicant"])
    for body in (
        b"",
        b"not a frame at all",
        frames["applicant"][:-10],  # truncated
        protocol.pack({"public_key": blobs["public_key"]}),  # a blob missing
        protocol.pack({**blobs, "public_key": b"3P\x01\x00garbage"}),  # right header, bad bytes
        protocol.pack({**blobs, "public_key": blobs["eval_mult"]}),  # a blob of another kind
        protocol.pack({**blobs, "rotation": bytes(len(blobs["rotation"]))}),
    ):
        _refused(applicant.call("PUT", protocol.ROUND1, body), 422, "invalid_blob")
    _refused(applicant.call("PUT", protocol.BOX_KEY, b"k" * 31), 422, "invalid_blob")
    _refused(applicant.call("PUT", protocol.BOX_KEY, b"k" * 33), 413, "too_large")
    # After the refusals, the real material is taken.
    status = _round1(session, frames)
    assert status["joint_keys"]
    _refused(applicant.call("PUT", protocol.ROUND2, b"3P\x04\x00garbage"), 422, "invalid_blob")


def test_share_or_ciphertext_from_another_session_is_422(url, session, layout):
    other = httpx.post(f"{url}/sessions", json={}).json()
    other_parties = {role: Party(url, code) for role, code in other["codes"].items()}
    try:
        shares, frames = _chain()
        other_shares, other_frames = _chain()
        status = _round1(session, frames)
        other_status = _round1(other_parties, other_frames)
        applicant = session["applicant"]
        other_mult = (
            other_parties["applicant"].call("GET", protocol.JOINT, kind="eval_mult").content
        )
        other_share = engine.round2(other_shares["applicant"], other_mult, other_status["key_tag"])
        _refused(applicant.call("PUT", protocol.ROUND2, other_share), 422, "other_session")
        rows = party_rows("applicant", FIELDS["applicant"], "predict", layout)
        vectors = engine.encode_party(layout, "applicant", rows)
        other_public = other_parties["applicant"].call("GET", protocol.JOINT, kind="public_key")
        replayed = engine.encrypt(other_public.content, vectors)
        body = protocol.pack({str(index): data for index, data in replayed.items()})
        _refused(applicant.call("PUT", protocol.CIPHERTEXTS, body), 422, "other_session")
        # The session's own share and ciphertexts are still taken.
        mult = applicant.call("GET", protocol.JOINT, kind="eval_mult").content
        own = engine.round2(shares["applicant"], mult, status["key_tag"])
        assert applicant.call("PUT", protocol.ROUND2, own).status_code == 204
        public = applicant.call("GET", protocol.JOINT, kind="public_key").content
        own_ciphertexts = engine.encrypt(public, vectors)
        body = protocol.pack({str(i): data for i, data in own_ciphertexts.items()})
        wrong_index = protocol.pack({"9": next(iter(own_ciphertexts.values()))})
        _refused(applicant.call("PUT", protocol.CIPHERTEXTS, wrong_index), 422, "invalid_blob")
        assert applicant.call("PUT", protocol.CIPHERTEXTS, body).status_code == 204
        _refused(applicant.call("PUT", protocol.CIPHERTEXTS, body), 409, "out_of_order")
    finally:
        other_parties["applicant"].call("DELETE", protocol.SESSION)


def test_a_full_server_answers_503_with_retry_after(url):
    created = []
    try:
        while True:
            response = httpx.post(f"{url}/sessions", json={})
            if response.status_code != 201:
                break
            created.append(response.json())
            assert len(created) <= MAX_SESSIONS
        _refused(response, 503, "busy")
        assert int(response.headers["retry-after"]) >= 1
    finally:
        for item in created:
            Party(url, item["codes"]["bank"]).call("DELETE", protocol.SESSION)
    assert httpx.post(f"{url}/sessions", json={}).status_code == 201


def test_idle_sessions_expire_after_the_ttl():
    now = [1000.0]
    config = ThreePartySettings(session_ttl_seconds=60, max_sessions=1)
    store = SessionStore(config, clock=lambda: now[0])
    session, tokens = store.create("predict")
    now[0] += config.session_ttl_seconds / 2
    assert store.authenticate(session.session_id, tokens["bank"])[1] == "bank"
    with pytest.raises(ServiceError) as full:
        store.create("predict")
    assert full.value.code.value == "busy"
    assert full.value.retry_after == config.session_ttl_seconds  # just used: a whole TTL left
    now[0] += config.session_ttl_seconds + 1
    with pytest.raises(ServiceError) as gone:
        store.authenticate(session.session_id, tokens["bank"])
    assert gone.value.code.value == "unknown_session"
    assert store.create("predict")[0].session_id != session.session_id


class RecordingParty(PartyClient):
    """A PartyClient that keeps every body it sent to and received from the server."""

    def __init__(self, *args, traffic: list, **kwargs):
        super().__init__(*args, **kwargs)
        self.traffic = traffic

    def _request(self, method, route, content=None, values=None, query=None):
        answer = super()._request(method, route, content, values, query)
        self.traffic.append((route, content or b"", answer))
        return answer


def _pieces(body: bytes) -> list[bytes]:
    try:
        return list(protocol.unpack(body).values())
    except protocol.FrameError:
        return [body]


def test_everything_the_server_holds_cannot_decrypt_the_verdict(url, layout, tmp_path):
    created = httpx.post(f"{url}/sessions", json={"mode": "predict"}).json()
    traffic: list = []
    results: dict = {}
    errors: list = []

    def play(role: str) -> None:
        try:
            client = RecordingParty(
                role, url, created["codes"][role], tmp_path / role, 120, traffic=traffic
            )
            with client:
                results[role] = client.run(FIELDS[role])
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=play, args=(role,)) for role in protocol.ROLES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    rows = {r: party_rows(r, FIELDS[r], "predict", layout) for r in protocol.ROLES}
    expected = bool(layout.clear_verdicts(rows)[0])
    assert results["applicant"] == results["bank"] == {"approved": expected}
    assert results["credit_bureau"] == {}

    bodies = [piece for _, sent, got in traffic for body in (sent, got) for piece in _pieces(body)]
    kinds = {engine.blob_kind(piece) for piece in bodies}
    assert "secret_key" not in kinds and "partial" not in kinds
    assert {"public_key", "eval_key", "rotation_keys", "mult_key", "ciphertext"} <= kinds
    secrets = [(tmp_path / r / f"{r}.keyshare").read_bytes() for r in protocol.ROLES]
    box_secrets = [(tmp_path / r / "box_secret.key").read_bytes() for r in protocol.ROLES]
    for secret in secrets:
        window = secret[len(secret) // 2 : len(secret) // 2 + 64]
        assert not any(window in piece for piece in bodies)
    for box_secret in box_secrets:
        assert not any(box_secret in piece for piece in bodies)
    sealed = [sent for route, sent, _ in traffic if route == protocol.PARTIAL_TO]
    # Applicant -> bank, bank -> applicant, credit bureau -> both.
    assert len(sealed) == 4
    for blob in sealed:
        assert engine.blob_kind(blob) is None
        with pytest.raises(engine.EngineError):
            engine.fuse([blob, blob, blob], 1, layout)
        # Only the recipient's box secret opens it; the server has no box secret at all.
        with pytest.raises(CryptoError):
            SealedBox(PrivateKey.generate()).decrypt(blob)
    # Even with the help of one party or two (their partials made again from their shares),
    # the output gives noise; all three partials give the verdict.
    output = next(got for route, _, got in traffic if route == protocol.OUTPUT)
    joint_keys = [got for route, _, got in traffic if route == protocol.JOINT]
    tag = engine.key_tag_of(next(b for b in joint_keys if engine.blob_kind(b) == "public_key"))
    shares = {r: engine.PartyKeyShare.load(tmp_path / r, r) for r in protocol.ROLES}
    partials = {r: engine.partial_decrypt(shares[r], output, tag) for r in protocol.ROLES}
    for subset in ([r] for r in protocol.ROLES), itertools.combinations(protocol.ROLES, 2):
        for roles in subset:
            slots = engine.fuse_slots([partials[r] for r in roles])
            assert slots[1:].any(), roles  # the output's other slots are 0: this is noise
    assert engine.fuse([partials[r] for r in protocol.ROLES], 1, layout) == [int(expected)]


def test_the_server_refuses_to_start_when_the_known_answer_is_wrong(tmp_path):
    corrupted = json.loads(Path(LAYOUT_PATH).read_text())
    corrupted["leaf_class"] = 1 - corrupted["leaf_class"]  # one wrong parameter
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(corrupted))
    with pytest.raises(ServerStartError) as refused:
        with running_server(None, env={"THREEPARTY_LAYOUT_PATH": str(path)}, app=APP):
            pass
    assert refused.value.returncode not in (None, 0)
    assert "self-test failed" in refused.value.log
