"""A party's key rounds: join, round 1 on the chain, the chain's check, key confirmation.

``PartyKeyRounds`` extends ``PartySession`` with the steps up to the joint keys; ``PartyClient``
(``threeparty.party``) goes on with the inputs, the evaluation's check and the decryption.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import numpy as np

from contracts.wire import bearer
from threeparty import engine, protocol, transcript
from threeparty.party_base import (
    TOKEN_FILE,
    PartyError,
)
from threeparty.party_session import PartySession
from threeparty.transcript import Transcript, TranscriptError


class PartyKeyRounds(PartySession):
    """The key steps of a party: every check before the joint key is used for any input."""

    def _join(self) -> None:
        """Redeem the invitation with a token this party chose; check the roster."""
        assert self.identity is not None
        token = self._local(TOKEN_FILE, lambda: secrets.token_urlsafe(32).encode()).decode()
        digest = hashlib.sha256(token.encode()).hexdigest()
        self._request(
            "POST",
            protocol.JOIN,
            json_body=self.identity.join_request(
                self.session_id, self.role, self._invitation, digest
            ),
        )
        self._http.headers.update(bearer(token))
        status = self.status()
        try:
            roster = transcript.check_roster(
                status.get("roster") or {}, self.role, self.identity.verify_key, self.peers
            )
        except TranscriptError as error:
            raise PartyError(f"refused: {error}", error.code) from None
        self.roster_digest = transcript.roster_digest(status["roster"])
        self.transcript = Transcript(self.session_id, roster)
        self.status()
        self._progress(
            "joined",
            session=self.session_id[:8],
            mode=status["mode"],
            fingerprint=self.identity.fingerprint,
            peers={r: transcript.fingerprint(roster[r]) for r in protocol.ROLES if r != self.role},
        )

    def _round1(self) -> engine.PartyKeyShare:
        if self._has(self.role, "round1"):
            return self._share()
        previous = protocol.previous_role(self.role)
        box = self._box_key()
        start = time.perf_counter()
        refs = {"roster": self.roster_digest}
        if previous is None:
            share, made = engine.lead_round1()
        else:
            self._wait_step("round1", (previous,))
            public_key = self._fetch(previous, "round1", "public_key")
            lead_mult = self._fetch(protocol.LEAD, "round1", "eval_mult")
            lead_rotation = self._fetch(protocol.LEAD, "round1", "rotation")
            try:
                share, made = engine.join_round1(self.role, public_key, lead_mult, lead_rotation)
            except engine.EngineError as error:
                raise PartyError(
                    f"round 1 cannot build on this material: {error}", "bad_chain"
                ) from None
            refs |= {
                "previous_public_key": transcript.digest(public_key),
                "lead_eval_mult": transcript.digest(lead_mult),
                "lead_rotation": transcript.digest(lead_rotation),
            }
        seconds = time.perf_counter() - start
        blobs = {
            "public_key": made.public_key,
            "eval_mult": made.eval_mult,
            "rotation": made.rotation,
            "box_key": bytes(box.public_key),
        }
        self._share(share)
        size = self._put_step("round1", blobs, refs)
        self._blobs.update({(self.role, "round1", name): data for name, data in blobs.items()})
        self._progress("round1", seconds=round(seconds, 3), uploaded=size)
        return share

    def _check_chain(self) -> bytes:
        """Check that every round 1 builds on the previous party's; return the joint key."""
        self._wait_step("round1")
        assert self.transcript is not None
        for role in protocol.ROLES:
            if self._ref(role, "round1", "roster") != self.roster_digest:
                raise PartyError(f"refused: the {role} signed another roster", "bad_chain")
            previous = protocol.previous_role(role)
            if previous is None:
                continue
            expected = {
                "previous_public_key": (previous, "public_key"),
                "lead_eval_mult": (protocol.LEAD, "eval_mult"),
                "lead_rotation": (protocol.LEAD, "rotation"),
            }
            for ref, (owner, name) in expected.items():
                signed = self.transcript.statement(owner, "round1")["blobs"][name]
                if self._ref(role, "round1", ref) != signed:
                    raise PartyError(
                        f"refused: the {role}'s round 1 does not build on the {owner}'s {name} "
                        "(the key chain is broken)",
                        "bad_chain",
                    )
        joint_public_key = self._fetch(protocol.ROLES[-1], "round1", "public_key")
        self.key_tag = engine.key_tag_of(joint_public_key)
        self._progress("chain_verified", key_tag=self.key_tag[:16])
        return joint_public_key

    def _confirm_key(self, share: engine.PartyKeyShare, joint_public_key: bytes) -> None:
        """Key confirmation: the three shares together must decrypt a challenge of the chain."""
        seed = self._round1_digest()
        values = engine.challenge_values(seed)
        if self.role == protocol.LEAD and not self._has(self.role, "challenge"):
            challenge = engine.encrypt(joint_public_key, {0: np.asarray(values)})[0]
            self._put_step("challenge", {protocol.CHALLENGE_BLOB: challenge}, {"round1": seed})
        self._wait_step("challenge")
        if self._ref(protocol.LEAD, "challenge", "round1") != seed:
            raise PartyError("refused: the challenge is bound to another round 1", "bad_chain")
        challenge = self._fetch(protocol.LEAD, "challenge", protocol.CHALLENGE_BLOB)
        own = self._local(
            "confirm.partial", lambda: engine.partial_decrypt(share, challenge, self.key_tag)
        )
        if not self._has(self.role, "confirm_commit"):
            self._put_step(
                "confirm_commit",
                {},
                {"challenge": transcript.digest(challenge), "partial": transcript.digest(own)},
            )
        # While the others confirm: the joint round-1 keys and this party's round-2 share (key
        # material only, kept in this process; no input is encrypted before the check passes).
        self._round2(share, joint_public_key)
        self._wait_step("confirm_commit")
        if not self._has(self.role, "confirm_reveal"):
            self._put_step("confirm_reveal", {protocol.PARTIAL_BLOB: own})
        self._wait_step("confirm_reveal")
        partials = [self._revealed(role, own) for role in protocol.ROLES]
        try:
            slots = engine.fuse_slots(partials)
        except engine.EngineError:
            slots = np.zeros(0, dtype=np.int64)
        if not engine.challenge_matches(slots, values):
            raise PartyError(
                "refused: key confirmation failed: the joint key does not decrypt the challenge "
                "with the three parties' shares, so some party's round 1 did not build on the "
                "others'. No input was encrypted.",
                "key_confirmation",
            )
        self._progress("key_confirmed", challenge_slots=len(values))

    def _round1_digest(self) -> str:
        assert self.transcript is not None
        return self.transcript.digest_of({role: "round1" for role in protocol.ROLES})

    def _revealed(self, role: str, own: bytes) -> bytes:
        """A party's revealed challenge partial, checked against its commitment."""
        data = own if role == self.role else self._fetch(role, "confirm_reveal", "partial")
        if transcript.digest(data) != self._ref(role, "confirm_commit", "partial"):
            raise PartyError(
                f"refused: the {role} revealed another partial than it committed to", "tampered"
            )
        return data

    def _round2(self, share: engine.PartyKeyShare, joint_public_key: bytes) -> bytes:
        """This party's round-2 share, on the joint round-1 keys it summed itself (made once)."""
        if self._round2_share is None:
            self.joint = self._combine_round1(joint_public_key)
            self._round2_share = engine.round2(
                share, self.joint.joint_eval_mult_round1, self.key_tag
            )
        return self._round2_share

    def _combine_round1(self, joint_public_key: bytes) -> engine.JointRound1:
        """The joint round-1 keys, combined by this party from the signed shares."""
        round1 = [
            engine.Round1Blobs(
                public_key=joint_public_key if role == protocol.ROLES[-1] else b"",
                eval_mult=self._fetch(role, "round1", "eval_mult"),
                rotation=self._fetch(role, "round1", "rotation"),
            )
            for role in protocol.ROLES
        ]
        try:
            return engine.combine_round1(round1)
        except engine.EngineError as error:
            raise PartyError(
                f"refused: the round-1 shares do not add up: {error}", "bad_chain"
            ) from None
