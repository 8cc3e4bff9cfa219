"""The three-party server over HTTP: a real ``uvicorn threeparty.server:app`` and real OpenFHE.

The test plays the parties with the engine in-process (raw signed uploads) or with
``PartyClient`` in threads, and checks each refusal: steps out of order 409, malformed blobs 422,
statements not signed by their party's roster key 422, a share or ciphertext made for another
session 422, invitations redeemed without the party's identity 403, wrong token 401, unknown
session 404, oversized bodies 413, a full server 503 with Retry-After, sessions that cannot be
kept alive past their lifetime, and nothing of the others' work lost after a refusal. It also
checks that everything the server received or sent during a whole flow holds no key share and no
clear partial decryption of the output, and that the server refuses to start when its
known-answer check fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path

import httpx
import pytest
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox

from fhe_server.launcher import ServerStartError
from tests.support.servers import running_server
from tests.threeparty.support import FIELDS, Kit, RawParty, Relay, create, play, raw_parties
from threeparty import engine, protocol
from threeparty.layout import LAYOUT_PATH, load_layout
from threeparty.party import delete_session, party_rows
from threeparty.server.errors import ServiceError
from threeparty.server.settings import ThreePartySettings
from threeparty.server.store import SessionStore
from threeparty.transcript import Identity

APP = "threeparty.server:app"
MAX_SESSIONS = 4


@pytest.fixture(scope="module")
def url():
    env = {"THREEPARTY_MAX_SESSIONS": str(MAX_SESSIONS), "OMP_NUM_THREADS": "1"}
    with running_server(None, env=env, app=APP) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def layout():
    return load_layout()


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return Kit(tmp_path_factory.mktemp("identities"))


@pytest.fixture
def session(url, kit):
    """A new predict session: {role: RawParty}, joined; deleted afterwards."""
    parties = raw_parties(url, kit)
    yield parties
    parties["applicant"].call("DELETE", protocol.SESSION)


def _chain():
    """A coherent round-1 chain made in-process: ({role: share}, {role: round-1 blobs})."""
    share, lead = engine.lead_round1()
    shares, made = {"applicant": share}, {"applicant": lead}
    previous = lead.public_key
    for role in protocol.ROLES[1:]:
        shares[role], made[role] = engine.join_round1(role, previous, lead.eval_mult, lead.rotation)
        previous = made[role].public_key
    blobs = {
        role: {**dataclasses.asdict(b), "box_key": bytes(PrivateKey.generate().public_key)}
        for role, b in made.items()
    }
    return shares, blobs


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def _round1(parties, blobs) -> dict:
    for role in protocol.ROLES:
        response = parties[role].put("round1", blobs[role])
        assert response.status_code == 204, response.text
    return parties["bank"].status()


def test_health_and_the_contract_at_docs(url):
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["self_test"] == "passed"
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    for route in (protocol.SESSIONS, protocol.JOIN, protocol.STEP, protocol.BLOB):
        assert route in paths


def test_tokens_invitations_and_unknown_sessions(url, kit, session):
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
    # A token of one session does not open another.
    others = raw_parties(url, kit)
    other_sid = others["bank"].session_id
    _refused(httpx.get(f"{url}/sessions/{other_sid}/status", headers=headers), 401, "unauthorized")
    others["bank"].call("DELETE", protocol.SESSION)
    _refused(
        httpx.post(f"{url}/sessions", json={"mode": "guess", "roster": kit.roster}),
        422,
        "invalid_request",
    )
    _refused(httpx.post(f"{url}/sessions", json={"mode": "predict"}), 422, "invalid_request")


def test_the_creator_cannot_act_as_another_party(url, kit, tmp_path):
    """Whoever creates a session holds every invitation, but not the parties' identity keys."""
    created = create(url, kit)
    creator = Identity.load_or_create(tmp_path / "creator")
    bank = RawParty(url, created, "bank", kit.identities["bank"])
    _refused(bank.join(signer=creator), 403, "forbidden")
    _refused(bank.join(signer=kit.identities["applicant"]), 403, "forbidden")
    assert bank.join().status_code == 204
    # Single use: the invitation cannot be redeemed again for another token.
    again = RawParty(url, created, "bank", kit.identities["bank"])
    _refused(again.join(), 403, "forbidden")
    # A role uploads only its own material: the applicant cannot upload a step signed as the
    # credit bureau (its token says applicant, the statement must verify with its key).
    applicant = RawParty(url, created, "applicant", kit.identities["applicant"])
    assert applicant.join().status_code == 204
    _, blobs = _chain()
    forged = applicant.put("round1", blobs["applicant"], signer=kit.identities["credit_bureau"])
    _refused(forged, 422, "bad_signature")
    assert applicant.put("round1", blobs["applicant"]).status_code == 204
    applicant.call("DELETE", protocol.SESSION)


def test_steps_out_of_order_are_409_and_nothing_is_lost(session):
    _, blobs = _chain()
    bank, applicant, bureau = session["bank"], session["applicant"], session["credit_bureau"]
    _refused(bank.put("round1", blobs["bank"]), 409, "out_of_order")
    _refused(
        bank.call("GET", protocol.BLOB, step="round1", role="applicant", name="public_key"),
        409,
        "out_of_order",
    )
    for step in ("confirm_commit", "inputs_commit", "output_commit"):
        _refused(bank.put(step, {}), 409, "out_of_order")
    _refused(bank.call("POST", protocol.EVALUATE), 409, "out_of_order")
    _refused(bank.call("GET", protocol.OUTPUT), 409, "out_of_order")
    _refused(bank.put("challenge", {"ciphertext": b"x"}), 422, "invalid_request")
    assert applicant.put("round1", blobs["applicant"]).status_code == 204
    _refused(applicant.put("round1", blobs["applicant"]), 409, "out_of_order")
    _refused(bureau.put("round1", blobs["credit_bureau"]), 409, "out_of_order")
    assert bank.put("round1", blobs["bank"]).status_code == 204
    assert bureau.put("round1", blobs["credit_bureau"]).status_code == 204
    status = bank.status()
    assert status["steps"]["round1"] == list(protocol.ROLES)
    public_key = bank.call(
        "GET", protocol.BLOB, step="round1", role="credit_bureau", name="public_key"
    ).content
    assert engine.key_tag_of(public_key) == status["key_tag"]
    _refused(bank.put("confirm_reveal", {"partial": b"x"}), 409, "out_of_order")


def test_malformed_blobs_and_statements_are_422_and_the_session_goes_on(session):
    _, blobs = _chain()
    applicant = session["applicant"]
    own = blobs["applicant"]
    good = applicant.body("round1", own)
    for body in (
        b"",
        b"not a frame at all",
        good[:-10],  # truncated
        protocol.pack(own),  # no statement
        applicant.body("round1", {"public_key": own["public_key"]}),  # blobs missing
        applicant.body("round1", {**own, "public_key": b"3P\x01\x00garbage"}),  # bad bytes
        applicant.body("round1", {**own, "public_key": own["eval_mult"]}),  # another kind
        applicant.body("round1", {**own, "rotation": bytes(len(own["rotation"]))}),
        applicant.body("round1", {**own, "box_key": b"k" * 31}),
    ):
        response = applicant.call("PUT", protocol.STEP, body, step="round1")
        _refused(response, 422, "invalid_blob")
    # A statement over other bytes, for another session or another step: not this upload.
    swapped = protocol.unpack(good)
    swapped["box_key"] = b"k" * 32
    for body in (
        protocol.pack(swapped),
        applicant.body("round1", own, session_id="0" * 32),
    ):
        _refused(applicant.call("PUT", protocol.STEP, body, step="round1"), 422, "bad_signature")
    _refused(
        applicant.call("PUT", protocol.STEP, applicant.body("challenge", {}), step="round1"),
        422,
        "bad_signature",
    )
    # After the refusals, the real material is taken.
    status = _round1(session, blobs)
    assert status["key_tag"]


def test_ciphertext_from_another_session_is_422(url, kit, session, layout):
    others = raw_parties(url, kit)
    try:
        shares, blobs = _chain()
        _, other_blobs = _chain()
        _round1(session, blobs)
        _round1(others, other_blobs)
        applicant = session["applicant"]
        rows = party_rows("applicant", FIELDS["applicant"], "predict", layout)
        vectors = engine.encode_party(layout, "applicant", rows)
        replayed = engine.encrypt(other_blobs["credit_bureau"]["public_key"], vectors)[0]
        _refused(applicant.put("challenge", {"ciphertext": replayed}), 422, "other_session")
        own = engine.encrypt(blobs["credit_bureau"]["public_key"], vectors)[0]
        assert applicant.put("challenge", {"ciphertext": own}).status_code == 204
        _refused(applicant.put("challenge", {"ciphertext": own}), 409, "out_of_order")
    finally:
        others["applicant"].call("DELETE", protocol.SESSION)


def test_a_full_server_answers_503_with_retry_after(url, kit):
    created = []
    try:
        while True:
            response = httpx.post(f"{url}/sessions", json={"roster": kit.roster})
            if response.status_code != 201:
                break
            created.append(response.json())
            assert len(created) <= MAX_SESSIONS
        _refused(response, 503, "busy")
        assert int(response.headers["retry-after"]) >= 1
    finally:
        for item in created:
            party = RawParty(url, item, "bank", kit.identities["bank"])
            assert party.join().status_code == 204
            party.call("DELETE", protocol.SESSION)
    assert httpx.post(f"{url}/sessions", json={"roster": kit.roster}).status_code == 201


def _join(store: SessionStore, kit: Kit, session, invitations: dict, role: str) -> str:
    token = f"token-of-the-{role}-0123456789"
    digest = hashlib.sha256(token.encode()).hexdigest()
    secret = invitations[role]
    signature = kit.identities[role].sign_join(session.session_id, role, digest)
    store.join(session.session_id, role, secret, digest, signature)
    return token


def test_sessions_expire_when_idle_and_after_their_lifetime(kit):
    now = [1000.0]
    config = ThreePartySettings(
        session_ttl_seconds=60, session_lifetime_seconds=150, max_sessions=1
    )
    store = SessionStore(config, clock=lambda: now[0])
    session, invitations = store.create("predict", kit.roster)
    token = _join(store, kit, session, invitations, "bank")
    now[0] += config.session_ttl_seconds / 2
    assert store.authenticate(session.session_id, token)[1] == "bank"
    with pytest.raises(ServiceError) as full:
        store.create("predict", kit.roster)
    assert full.value.code.value == "busy"
    assert full.value.retry_after == config.session_ttl_seconds  # just used: a whole TTL left
    # Status calls keep it alive while idle time is short, but not past its whole lifetime.
    for _ in range(5):
        now[0] += config.session_ttl_seconds / 2
        if now[0] - 1000.0 >= config.session_lifetime_seconds:
            break
        store.authenticate(session.session_id, token)
    with pytest.raises(ServiceError) as gone:
        store.authenticate(session.session_id, token)
    assert gone.value.code.value == "unknown_session"
    assert store.create("predict", kit.roster)[0].session_id != session.session_id


def _pieces(body: bytes) -> list[bytes]:
    try:
        return list(protocol.unpack(body).values())
    except protocol.FrameError:
        return [body]


def test_everything_the_server_holds_cannot_decrypt_the_verdict(url, kit, layout):
    created = create(url, kit)
    relay = Relay()
    outcome = play(url, kit, created, relay=relay, delete=False)
    assert not outcome.errors, outcome.errors
    rows = {r: party_rows(r, FIELDS[r], "predict", layout) for r in protocol.ROLES}
    expected = bool(layout.clear_verdicts(rows)[0])
    assert outcome.results["applicant"] == outcome.results["bank"] == {"approved": expected}
    assert outcome.results["credit_bureau"] == {}

    traffic = [(req.url.path, req.content, resp.content) for req, resp in relay.seen]
    bodies = [piece for _, sent, got in traffic for body in (sent, got) for piece in _pieces(body)]
    kinds = {engine.blob_kind(piece) for piece in bodies}
    assert "secret_key" not in kinds
    assert {"public_key", "eval_key", "rotation_keys", "mult_key", "ciphertext"} <= kinds
    root = kit.root
    session_dirs = {r: next((root / r).glob("session-*")) for r in protocol.ROLES}
    shares = {r: engine.PartyKeyShare.load(session_dirs[r], r) for r in protocol.ROLES}
    for share in shares.values():
        window = share.secret_key[len(share.secret_key) // 2 :][:64]
        assert not any(window in piece for piece in bodies)
    for role in protocol.ROLES:
        for secret in ("box_secret.key", "output.partial"):
            data = (session_dirs[role] / secret).read_bytes()
            assert not any(data in piece for piece in bodies), (role, secret)
        assert (root / role / "identity.key").read_bytes() not in b"".join(bodies)
    sealed = [
        piece
        for path, sent, _ in traffic
        if path.endswith("/steps/partials")
        for name, piece in protocol.unpack(sent).items()
        if name.startswith("to_")
    ]
    # Applicant -> bank, bank -> applicant, credit bureau -> both.
    assert len(sealed) == 4
    for blob in sealed:
        assert engine.blob_kind(blob) is None
        with pytest.raises(CryptoError):
            SealedBox(PrivateKey.generate()).decrypt(blob)
    # Even with the help of one party or two (their partials made again from their shares),
    # the output gives noise; all three partials give the verdict.
    output = httpx.get(
        f"{url}{protocol.OUTPUT.format(sid=created['session_id'])}",
        headers=next(req.headers for req, _ in relay.seen if "authorization" in req.headers),
    ).content
    tag = next(
        json.loads(got)["key_tag"] for path, _, got in reversed(traffic) if path.endswith("/status")
    )
    partials = {r: engine.partial_decrypt(shares[r], output, tag) for r in protocol.ROLES}
    for subset in ([r] for r in protocol.ROLES), itertools.combinations(protocol.ROLES, 2):
        for roles in subset:
            slots = engine.fuse_slots([partials[r] for r in roles])
            assert slots[1:].any(), roles  # the output's other slots are 0: this is noise
    assert engine.fuse([partials[r] for r in protocol.ROLES], 1, layout) == [int(expected)]
    delete_session(url, kit.root / "bank", created["invitations"]["bank"])


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
