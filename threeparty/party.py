"""A party's client in the three-party mode: ``PartyClient(role, server_url, invitation, ...)``.

Each party runs its own client, in its own process, usually on its own machine. It trusts
neither the server nor the other two parties; it uses nothing it has not verified:

- its folder ``key_dir`` holds its long-term identity key (``identity.key``, Ed25519) and, per
  session, its key share, its X25519 box secret key and what it committed to (files 0600, folders
  0700): none of it ever leaves that folder;
- the session's roster must list its own verify key and, for the two others, the fingerprints it
  was given out of band (``peers``);
- every statement the server relays must be signed by its party's roster key, for this session,
  and every blob must hash to what its statement signed; the key chain must build on each party's
  round-1 key, and the joint key must decrypt a challenge bound to the round-1 statements with
  all three shares (key confirmation, commit then reveal) before anyone encrypts an input;
- before it decrypts, it re-evaluates the tree itself from the signed ciphertexts and the joint
  keys it combined from the signed shares, and it partially decrypts only its own result, and
  only if the server's output is byte-identical to it and every party committed to that output.

It uploads only public material (round-1 keys, its box key, round-2 share, ciphertexts, partial
decryptions of the public challenge) and its partial decryption of the output sealed for each
recipient. A run is resumable: what it committed to is kept in its session folder, so a party
that timed out waiting runs the same command again and goes on where it stopped.

Progress is reported as one dict per step (the CLI prints them as JSON lines): ``joined``,
``round1``, ``chain_verified``, ``key_confirmed``, ``uploaded``, ``evaluated``, ``verified``,
``partial_decrypted``, ``verdict`` (recipients only) and ``done``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from nacl.exceptions import CryptoError
from nacl.public import PublicKey, SealedBox

from threeparty import engine, protocol, transcript
from threeparty.layout import Layout, load_layout
from threeparty.party_base import (
    BOX_SECRET_FILE,
    DEFAULT_WAIT_SECONDS,
    HTTP_TIMEOUT_SECONDS,
    LONG_POLL_SECONDS,
    TAG_FILE,
    TAG_SALT_BYTES,
    TOKEN_FILE,
    PartyError,
    Progress,
    _write_private,
)
from threeparty.party_keys import PartyKeyRounds
from threeparty.party_session import PartySession
from threeparty.rows import (
    PREPROCESSING_PATH,
    Fields,
    clear_verdicts,
    mode_rows,
    own_rows,
    party_fields,
    party_rows,
    read_rows,
    read_verdict,
)
from threeparty.sessions_client import _session_request, create_session, delete_session

# Re-exported: the party program, the page, the tests and the tools import them from here.
__all__ = [
    "BOX_SECRET_FILE",
    "DEFAULT_WAIT_SECONDS",
    "HTTP_TIMEOUT_SECONDS",
    "LONG_POLL_SECONDS",
    "PREPROCESSING_PATH",
    "TAG_FILE",
    "TAG_SALT_BYTES",
    "TOKEN_FILE",
    "Fields",
    "PartyClient",
    "PartyError",
    "PartyKeyRounds",
    "PartySession",
    "Progress",
    "clear_verdicts",
    "create_session",
    "delete_session",
    "mode_rows",
    "own_rows",
    "party_fields",
    "party_rows",
    "read_rows",
    "read_verdict",
    "_session_request",
    "_write_private",
]


class PartyClient(PartyKeyRounds):
    """One party of a three-party session.

    The connection, the folder and the key rounds are its bases' (``party_session``,
    ``party_keys``); here: the whole run, the inputs, the evaluation's check and the decryption.

    Args:
        role: "applicant", "bank" or "credit_bureau".
        server_url: the three-party server's base URL.
        invitation: this party's invitation (``<session id>.<secret>``).
        key_dir: the party's own folder (identity key, and a folder per session).
        peers: {role: fingerprint} of the two other parties, compared out of band.
        wait_seconds: how long to wait for another party before failing with a clear time-out.
        on_progress: called with one dict per step.
        transport: an httpx transport (default: the network); the server is not trusted either
            way.
    """

    # -- the flow -------------------------------------------------------------------------------
    def run(self, fields: Fields) -> dict[str, Any]:
        """Take part in the whole session; return the verdict (recipients) or {} (the bureau).

        Raises:
            PartyError: with a readable reason (server refusal, tampering, time-out, bad fields).
        """
        started = self._started = time.perf_counter()
        engine.keep_objects()  # this process handles the same keys and ciphertexts again
        self._prepare_key_dir()
        layout = load_layout()
        given = own_rows(self.role, fields)  # bad fields stop it before it joins
        self._join()
        mode = self._status["mode"]
        rows = mode_rows(self.role, given, mode, not isinstance(fields, Mapping))
        if mode == "batch" and len(rows) != self._status["blocks"]:
            raise PartyError(
                f"the session scores {self._status['blocks']} applications; this party has "
                f"{len(rows)}",
                "invalid_field",
            )
        share = self._round1()
        joint_public_key = self._check_chain()
        self._confirm_key(share, joint_public_key)
        self._inputs(share, layout, rows, joint_public_key)
        output = self._verify_evaluation(layout, mode)
        result = self._decrypt(share, output, mode, layout)
        self._progress("done", seconds=round(time.perf_counter() - started, 3))
        return result

    def _inputs(
        self,
        share: engine.PartyKeyShare,
        layout: Layout,
        rows: np.ndarray,
        joint_public_key: bytes,
    ) -> None:
        """Round 2 and the ciphertexts: committed, then uploaded once all three committed."""
        start = time.perf_counter()
        round2 = self._round2(share, joint_public_key)

        def make() -> bytes:
            blobs = {protocol.ROUND2_BLOB: round2}
            vectors = self._vectors(layout, rows)
            for index, data in engine.encrypt(joint_public_key, vectors).items():
                blobs[protocol.ciphertext_blob(index)] = data
            return protocol.pack(blobs)

        own = protocol.unpack(self._local("inputs.frame", make))
        if not self._has(self.role, "inputs_commit"):
            refs = {name: transcript.digest(data) for name, data in own.items()}
            refs |= {"round1": self._round1_digest(), **self._tag_commitment()}
            self._put_step("inputs_commit", {}, refs)
        self._wait_step("inputs_commit")
        size = 0
        if not self._has(self.role, "inputs"):
            size = self._put_step("inputs", own)
        self._blobs.update({(self.role, "inputs", name): data for name, data in own.items()})
        self._progress(
            "uploaded",
            seconds=round(time.perf_counter() - start, 3),
            ciphertexts=len(own) - 1,
            own_fields=bool(layout.party_vectors(self.role)),  # else it encrypts its tag only
            uploaded=size,
        )

    def _vectors(self, layout: Layout, rows: np.ndarray) -> dict[int, np.ndarray]:
        """What this party encrypts: its literal vector from its own rows, with its tag."""
        return engine.tagged_vectors(layout, self.role, rows, self._tag()[1])

    def _tag(self) -> tuple[bytes, int]:
        """This party's secret tag for the session and the salt of its commitment.

        A recipient multiplies a random tag into what it encrypts and reveals it, sealed for
        the other recipient, only once every partial decryption is committed; the credit
        bureau, which receives no verdict, has none (1).
        """
        if self.role not in engine.TAGGED_PARTIES:
            return bytes(TAG_SALT_BYTES), 1
        data = self._local(
            TAG_FILE,
            lambda: secrets.token_bytes(TAG_SALT_BYTES) + engine.random_tag().to_bytes(4, "big"),
        )
        return data[:TAG_SALT_BYTES], int.from_bytes(data[TAG_SALT_BYTES:], "big")

    def _tag_commitment(self) -> dict[str, str]:
        """The hash a recipient commits its tag with (nothing for the credit bureau)."""
        if self.role not in engine.TAGGED_PARTIES:
            return {}
        salt, tag = self._tag()
        return {"tag": transcript.digest(salt + tag.to_bytes(4, "big"))}

    def _verify_evaluation(self, layout: Layout, mode: str) -> bytes:
        """Re-evaluate from the signed inputs; return the output if the server's is the same."""
        self._wait_step("inputs")
        assert self.transcript is not None
        for role in protocol.ROLES:
            signed = self.transcript.statement(role, "inputs")["blobs"]
            for name, value in signed.items():
                if self._ref(role, "inputs_commit", name) != value:
                    raise PartyError(
                        f"refused: the {role} uploaded other inputs than it committed to",
                        "tampered",
                    )
        # The server evaluates as soon as every input is in; this party evaluates meanwhile.
        start = time.perf_counter()
        inputs = {
            role: {
                name: self._fetch(role, "inputs", name)  # this party's own: from its cache
                for name in self.transcript.statement(role, "inputs")["blobs"]
            }
            for role in protocol.ROLES
        }
        try:
            keys = engine.EvaluationKeys(
                key_tag=self.key_tag,
                relinearization=engine.combine_round2(
                    [inputs[r][protocol.ROUND2_BLOB] for r in protocol.ROLES], self.key_tag
                ),
                rotation=self.joint.joint_rotation if self.joint else b"",
            )
            ciphertexts = {
                role: {
                    index: inputs[role][protocol.ciphertext_blob(index)]
                    for index in engine.vector_indices(layout, role)
                }
                for role in protocol.ROLES
            }
            output = engine.evaluate(
                keys, ciphertexts, self._status["blocks"], layout, layout.candidates_for(mode)
            )
        except engine.EngineError as error:
            raise PartyError(
                f"refused: the signed inputs do not evaluate: {error}", "bad_chain"
            ) from None
        seconds = time.perf_counter() - start
        evaluated = json.loads(self._request("POST", protocol.EVALUATE))
        self.status()
        self._progress("evaluated", evaluation_seconds=round(evaluated["evaluation_seconds"], 3))
        if self._status.get("output_digest") != transcript.digest(output):
            raise PartyError(
                "refused: the server's output is not the evaluation of the signed inputs "
                "(this party re-evaluated them): nothing is decrypted",
                "output_mismatch",
            )
        self._progress(
            "verified",
            seconds=round(seconds, 3),
            output_digest=transcript.digest(output)[:16],
        )
        return output

    def _decrypt(
        self, share: engine.PartyKeyShare, output: bytes, mode: str, layout: Layout
    ) -> dict[str, Any]:
        start = time.perf_counter()
        own = self._local(
            "output.partial", lambda: engine.partial_decrypt(share, output, self.key_tag)
        )
        if not self._has(self.role, "output_commit"):
            refs = {"output": transcript.digest(output), "partial": transcript.digest(own)}
            self._put_step("output_commit", {}, refs)
        self._wait_step("output_commit")
        for role in protocol.ROLES:
            if self._ref(role, "output_commit", "output") != transcript.digest(output):
                raise PartyError(
                    f"refused: the {role} committed to another output than this party's own "
                    "evaluation: no partial decryption is released",
                    "output_mismatch",
                )
        recipients = [r for r in protocol.RECIPIENTS if r != self.role]
        if not self._has(self.role, "partials"):
            salt, tag = self._tag()
            payload = salt + tag.to_bytes(4, "big") + own  # the tag, revealed to the recipient
            sealed = {
                protocol.sealed_blob(r): SealedBox(
                    PublicKey(self._fetch(r, "round1", "box_key"))
                ).encrypt(payload)
                for r in recipients
            }
            self._put_step("partials", sealed)
        self._progress(
            "partial_decrypted",
            seconds=round(time.perf_counter() - start, 3),
            sent_to=recipients,
            partial_bytes=len(own),
        )
        if self.role not in protocol.RECIPIENTS:
            return {}
        return self._fuse(own, mode, layout)

    def _fuse(self, own: bytes, mode: str, layout: Layout) -> dict[str, Any]:
        senders = [r for r in protocol.ROLES if r != self.role]
        self._wait_step("partials", tuple(senders))
        box = self._box_key()
        partials = {self.role: own}
        tag = self._tag()[1]
        for sender in senders:
            sealed = self._fetch(sender, "partials", protocol.sealed_blob(self.role))
            try:
                payload = SealedBox(box).decrypt(sealed)
            except CryptoError as error:
                raise PartyError(
                    f"the {sender}'s sealed partial does not open with this party's box key: "
                    f"{error}",
                    "bad_result",
                ) from None
            revealed, partial = payload[: TAG_SALT_BYTES + 4], payload[TAG_SALT_BYTES + 4 :]
            if transcript.digest(partial) != self._ref(sender, "output_commit", "partial"):
                raise PartyError(
                    f"refused: the {sender}'s partial is not the one it committed to", "tampered"
                )
            if sender in engine.TAGGED_PARTIES:
                if transcript.digest(revealed) != self._ref(sender, "inputs_commit", "tag"):
                    raise PartyError(
                        f"refused: the {sender} revealed another tag than it committed to",
                        "tampered",
                    )
                tag = tag * int.from_bytes(revealed[TAG_SALT_BYTES:], "big")
            partials[sender] = partial
        try:
            bits = engine.fuse(
                [partials[r] for r in protocol.ROLES],
                self._status["blocks"],
                layout,
                tag % engine.PLAINTEXT_MODULUS,
            )
        except engine.EngineError as error:
            raise PartyError(
                f"refused: the partial decryptions do not fuse to a verdict: {error}", "bad_result"
            ) from None
        result = read_verdict(mode, [int(b) for b in bits], layout)
        self._progress("verdict", **result)
        return result
