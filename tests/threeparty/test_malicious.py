"""A malicious server and a cheating party against the unmodified party clients.

Each test runs the three ``PartyClient``s of a real session on a real server, through a
``Relay`` that sees exactly what a server sees and rewrites what it answers (or with one party's
client replaced by a cheating one). Each attack must end with the honest parties refusing with a
named error and nothing decrypted: no partial decryption of the output released (no
``output_commit`` or ``partials`` upload), or, before the inputs, no input encrypted.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from nacl.public import PrivateKey

from tests.support.servers import running_server
from tests.threeparty.support import (
    FIELDS,
    Kit,
    Relay,
    bytes_response,
    create,
    is_blob,
    is_status,
    json_response,
    play,
)
from threeparty import engine, protocol, transcript
from threeparty.layout import load_layout
from threeparty.party import PartyClient, clear_verdicts

SHORT_WAIT = 8.0


@pytest.fixture(scope="module")
def url():
    with running_server(None, env={"OMP_NUM_THREADS": "1"}, app="threeparty.server:app") as base:
        yield base


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return Kit(tmp_path_factory.mktemp("identities"))


@pytest.fixture(scope="module")
def layout():
    return load_layout()


def uploads(relay: Relay) -> list[str]:
    """The steps uploaded through the relay, as "<step>" in order."""
    return [
        req.url.path.rsplit("/", 1)[1]
        for req, resp in relay.seen
        if req.method == "PUT" and resp.status_code == 204
    ]


def assert_refused(outcome, roles, code: str) -> None:
    for role in roles:
        assert role in outcome.errors, (role, outcome.results, outcome.events.get(role))
        assert outcome.errors[role].code == code, (role, outcome.errors[role])
        assert "verdict" not in outcome.steps(role)


def nothing_decrypted(relay: Relay) -> None:
    done = uploads(relay)
    assert "output_commit" not in done and "partials" not in done, done


def on_status(change: Callable[[dict], None]) -> Callable:
    """A rewrite that edits every status answer's JSON."""

    def rewrite(request: httpx.Request, response: httpx.Response):
        if is_status(request) and response.status_code == 200:
            data = response.json()
            change(data)
            return json_response(response, data)
        return None

    return rewrite


# -- the output ---------------------------------------------------------------------------------
class OutputSubstitution:
    """Answers with a crafted output (and its digest) instead of the evaluated one."""

    def __init__(self, url: str, kind: str):
        self.url = url
        self.kind = kind
        self.crafted: bytes | None = None
        self.headers: dict[str, str] = {}

    def _blob(self, sid: str, step: str, role: str, name: str) -> bytes:
        route = protocol.BLOB.format(sid=sid, step=step, role=role, name=name)
        return httpx.get(f"{self.url}{route}", headers=self.headers, timeout=60).content

    def craft(self, sid: str) -> bytes:
        applicant = self._blob(sid, "inputs", "applicant", "ct_0")
        bureau = self._blob(sid, "inputs", "credit_bureau", "ct_0")
        if self.kind == "own_ciphertext":
            return applicant
        if self.kind == "forge":
            joint = self._blob(sid, "round1", "credit_bureau", "public_key")
            return engine.encrypt(joint, {0: np.array([1])})[0]
        cc = engine.context()  # leak: the bureau's vector plus twice the applicant's
        a = engine._unpack("ciphertext", applicant)
        c = engine._unpack("ciphertext", bureau)
        return engine._pack("ciphertext", cc.EvalAdd(c, cc.EvalAdd(a, a)))

    def __call__(self, request: httpx.Request, response: httpx.Response):
        if "authorization" in request.headers:
            self.headers = {"authorization": request.headers["authorization"]}
        if is_status(request) and response.status_code == 200:
            data = response.json()
            if data["output"]:
                if self.crafted is None:
                    self.crafted = self.craft(data["session_id"])
                data["output_digest"] = transcript.digest(self.crafted)
                return json_response(response, data)
        if request.url.path.endswith("/output") and self.crafted is not None:
            return bytes_response(response, self.crafted)
        return None


@pytest.mark.parametrize("kind", ["leak", "forge", "own_ciphertext"])
def test_a_substituted_output_is_refused_and_nothing_is_decrypted(url, kit, kind):
    relay = Relay(OutputSubstitution(url, kind))
    outcome = play(url, kit, create(url, kit), relay=relay, wait=SHORT_WAIT)
    assert_refused(outcome, protocol.ROLES, "output_mismatch")
    nothing_decrypted(relay)


# -- box keys, the joint key, statements ----------------------------------------------------------
def test_a_swapped_box_key_is_refused_and_no_partial_reaches_the_relay(url, kit):
    relay_box = PrivateKey.generate()

    def rewrite(request, response):
        if is_blob(request, "round1", "bank", "box_key"):
            return bytes_response(response, bytes(relay_box.public_key))
        return None

    relay = Relay(rewrite)
    outcome = play(url, kit, create(url, kit), relay=relay, wait=SHORT_WAIT)
    assert_refused(outcome, ("applicant", "credit_bureau"), "tampered")
    assert "tampered" in str(outcome.errors["applicant"]) and "box_key" in str(
        outcome.errors["applicant"]
    )
    # The bank sealed its partial for the applicant only (with the applicant's real key); the
    # applicant and the bureau sealed nothing, so the bank gets no verdict either.
    assert outcome.errors["bank"].code == "timeout"
    senders = [
        req.headers["authorization"]
        for req, resp in relay.seen
        if req.url.path.endswith("/steps/partials")
    ]
    assert len(senders) == 1


def test_an_altered_statement_is_refused_as_a_bad_signature(url, kit):
    relay_box = PrivateKey.generate()

    def change(data):
        envelope = data["transcript"].get("bank", {}).get("round1")
        if envelope:
            envelope["statement"]["blobs"]["box_key"] = transcript.digest(
                bytes(relay_box.public_key)
            )

    relay = Relay(on_status(change))
    outcome = play(url, kit, create(url, kit), relay=relay, wait=SHORT_WAIT)
    assert_refused(outcome, protocol.ROLES, "bad_signature")
    assert "inputs" not in uploads(relay)


def test_a_substituted_joint_key_is_refused_before_any_input_is_encrypted(url, kit):
    _, relay_keys = engine.lead_round1()

    def rewrite(request, response):
        if is_blob(request, "round1", "credit_bureau", "public_key"):
            return bytes_response(response, relay_keys.public_key)
        return None

    relay = Relay(rewrite)
    outcome = play(url, kit, create(url, kit), relay=relay, wait=SHORT_WAIT)
    assert_refused(outcome, ("applicant", "bank"), "tampered")
    assert "inputs" not in uploads(relay) and "inputs_commit" not in uploads(relay)


def test_a_replayed_statement_from_another_session_is_refused(url, kit):
    # A statement the applicant really signed, but for an earlier session.
    earlier = transcript.make_statement("f" * 32, "applicant", "round1", {"public_key": b"x"})
    replayed = kit.identities["applicant"].sign(earlier)

    def change(data):
        if "round1" in data["transcript"].get("applicant", {}):
            data["transcript"]["applicant"]["round1"] = replayed

    relay = Relay(on_status(change))
    outcome = play(url, kit, create(url, kit), relay=relay, wait=SHORT_WAIT)
    assert_refused(outcome, protocol.ROLES, "replayed")
    assert "inputs" not in uploads(relay)


def test_a_moved_statement_is_refused(url, kit):
    def change(data):
        steps = data["transcript"]
        if all("confirm_commit" in steps.get(r, {}) for r in ("bank", "credit_bureau")):
            bank, bureau = steps["bank"], steps["credit_bureau"]
            bank["confirm_commit"], bureau["confirm_commit"] = (
                bureau["confirm_commit"],
                bank["confirm_commit"],
            )

    relay = Relay(on_status(change))
    outcome = play(url, kit, create(url, kit), relay=relay, wait=SHORT_WAIT)
    refused = {role: error.code for role, error in outcome.errors.items()}
    assert set(refused) == set(protocol.ROLES)
    assert set(refused.values()) <= {"bad_signature", "timeout"}
    assert "bad_signature" in refused.values()
    assert "inputs" not in uploads(relay)


def test_a_forged_signature_is_refused(url, kit):
    def change(data):
        envelope = data["transcript"].get("applicant", {}).get("round1")
        if envelope:
            signature = bytearray.fromhex(envelope["signature"])
            signature[0] ^= 1
            envelope["signature"] = signature.hex()

    relay = Relay(on_status(change))
    outcome = play(url, kit, create(url, kit), relay=relay, wait=SHORT_WAIT)
    assert_refused(outcome, protocol.ROLES, "bad_signature")


def test_a_dropped_round_stops_every_party_before_any_input(url, kit):
    def change(data):
        data["transcript"].get("bank", {}).pop("round1", None)

    relay = Relay(on_status(change))
    outcome = play(url, kit, create(url, kit), relay=relay, wait=SHORT_WAIT)
    assert_refused(outcome, ("applicant", "credit_bureau"), "timeout")
    assert "inputs_commit" not in uploads(relay)


# -- a cheating party -----------------------------------------------------------------------------
class OwnKeyPairBureau(PartyClient):
    """A credit bureau that hands out a key pair of its own instead of extending the chain.

    It signs its round 1 as if it built on the bank's key; the signatures check, so only key
    confirmation can catch it.
    """

    def _round1(self):
        self._wait_step("round1", ("bank",))
        share, made = engine.lead_round1()
        refs = {
            "roster": self.roster_digest,
            "previous_public_key": self.transcript.statement("bank", "round1")["blobs"][
                "public_key"
            ],
            "lead_eval_mult": self.transcript.statement("applicant", "round1")["blobs"][
                "eval_mult"
            ],
            "lead_rotation": self.transcript.statement("applicant", "round1")["blobs"]["rotation"],
        }
        blobs = {
            "public_key": made.public_key,
            "eval_mult": made.eval_mult,
            "rotation": made.rotation,
            "box_key": bytes(self._box_key().public_key),
        }
        share = engine.PartyKeyShare(self.role, share.secret_key)
        self._share(share)
        self._put_step("round1", blobs, refs)
        return share


def test_a_party_that_hands_out_its_own_key_pair_fails_key_confirmation(url, kit):
    relay = Relay()
    outcome = play(
        url,
        kit,
        create(url, kit),
        relay=relay,
        clients={"credit_bureau": OwnKeyPairBureau},
        wait=SHORT_WAIT,
    )
    errors = {role: error.code for role, error in outcome.errors.items()}
    assert errors.get("applicant") == "key_confirmation", outcome.errors
    assert errors.get("bank") == "key_confirmation", outcome.errors
    assert "inputs_commit" not in uploads(relay) and "inputs" not in uploads(relay)


class CraftedVectorBureau(PartyClient):
    """A credit bureau that encrypts, instead of its row, a vector chosen to read the applicant's
    leaf vector: in each candidate block b, 1 in leaf slot b (the attack on the old explain)."""

    def _vectors(self, layout, rows):
        blocks = protocol.blocks_for("explain")
        vector = np.zeros(blocks * layout.block_size, dtype=np.int64)
        for block in range(blocks):
            vector[block * layout.block_size + block % layout.n_leaves] = 1
        return {0: vector}


def test_a_crafted_explain_vector_reaches_block_zero_only(url, kit, layout):
    outcome = play(
        url,
        kit,
        create(url, kit, "explain"),
        clients={"credit_bureau": CraftedVectorBureau},
    )
    assert not outcome.errors, outcome.errors
    # The six bins' verdicts are those of the public candidates with the applicant's real row,
    # not slots of the applicant's leaf vector.
    clear = clear_verdicts(FIELDS, "explain", layout)
    bins = layout.explain_candidates["years_employed"]
    want = [b for b, v in zip(bins, clear[1:], strict=True) if v]
    for role in protocol.RECIPIENTS:
        assert outcome.results[role]["approved_years_employed"] == want
    json.dumps(outcome.results)  # the results are plain data


def _shifted_partial_client(offset_of: Callable[[PartyClient], int]) -> type[PartyClient]:
    """A party client that adds an offset to the verdict slot of its partial decryption."""

    class Shifting(PartyClient):
        def _local(self, name, make):
            if name != "output.partial":
                return super()._local(name, make)

            def shifted() -> bytes:
                cc = engine.context()
                plain = cc.MakePackedPlaintext([offset_of(self)] + [0] * 7)
                partial = engine._unpack("partial", make())
                return engine._pack("partial", cc.EvalAdd(partial, plain))

            return super()._local(name, shifted)

    return Shifting


@pytest.mark.parametrize(
    ("cheater", "offset_of"),
    [
        ("credit_bureau", lambda client: 1),  # turns a refusal into an approval, untagged
        ("applicant", lambda client: client._tag()[1]),  # the best the applicant can do alone
    ],
    ids=["bureau", "applicant"],
)
def test_a_partial_shifted_to_turn_the_verdict_is_refused(url, kit, cheater, offset_of):
    outcome = play(
        url, kit, create(url, kit), clients={cheater: _shifted_partial_client(offset_of)}
    )
    honest = [role for role in protocol.RECIPIENTS if role != cheater]
    assert_refused(outcome, honest, "bad_result")
    assert "tags" in str(outcome.errors[honest[0]])
