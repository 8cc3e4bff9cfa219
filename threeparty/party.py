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

import csv
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from fhe_client.preprocessing import InvalidFieldError, PartyPreprocessor
from threeparty import engine, protocol, transcript
from threeparty.layout import Layout, load_layout
from threeparty.transcript import Identity, Transcript, TranscriptError

BOX_SECRET_FILE = "box_secret.key"
TAG_FILE = "tag"
TAG_SALT_BYTES = 32
TOKEN_FILE = "token"
DEFAULT_WAIT_SECONDS = 120.0
HTTP_TIMEOUT_SECONDS = 120.0
LONG_POLL_SECONDS = 10.0

Progress = Callable[[dict[str, Any]], None]


class PartyError(Exception):
    """A step failed; ``str(error)`` says why in one readable sentence.

    Attributes:
        code: a ``protocol.ErrorCode`` value from the server; a ``TranscriptError`` code
            ("bad_signature", "wrong_roster", "tampered", "replayed", "bad_chain"); or
            "key_confirmation", "output_mismatch", "timeout", "invalid_field", "unreachable",
            "key_dir", "bad_result".
    """

    def __init__(self, message: str, code: str):
        """Build the error."""
        super().__init__(message)
        self.code = code


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (0600), atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


Fields = Mapping[str, Any] | Sequence[Mapping[str, Any]]
"""A party's fields: one application's, or (batch mode) one mapping per application."""


def own_rows(role: str, fields: Fields) -> np.ndarray:
    """The party's quantized inputs, one row per application it was given.

    Raises:
        PartyError: invalid_field, if the fields do not fit the party's preprocessing.
    """
    preprocessor = PartyPreprocessor.load_all()[role]
    applications = [fields] if isinstance(fields, Mapping) else list(fields)
    if not applications or len(applications) > protocol.MAX_APPLICATIONS:
        raise PartyError(
            f"from 1 to {protocol.MAX_APPLICATIONS} applications, got {len(applications)}",
            "invalid_field",
        )
    try:
        return np.vstack([preprocessor.transform(dict(one)) for one in applications])
    except InvalidFieldError as error:
        raise PartyError(f"the {role}'s fields are invalid: {error}", "invalid_field") from None


def mode_rows(role: str, rows: np.ndarray, mode: str, batch: bool) -> np.ndarray:
    """The rows ``role`` encrypts in ``mode``, one per block, from its ``own_rows``.

    The applicant and the bank repeat their application in every block of the mode; the credit
    bureau encrypts its own row only (block 0): in explain mode the candidate rows of blocks 1..
    are public and added by whoever evaluates (``Layout.candidates_for``). In batch mode every
    party sends its own row of each application, in the same order.

    Raises:
        PartyError: invalid_field, when one application is given to a batch or several to
            another mode.
    """
    if (mode == "batch") != batch:
        raise PartyError(
            "a batch takes one set of fields per application; other modes one set",
            "invalid_field",
        )
    if mode == "batch":
        return rows
    blocks = 1 if role == engine.EXPLAIN_PARTY else protocol.blocks_for(mode)
    return np.tile(rows[0], (blocks, 1))


def party_rows(role: str, fields: Fields, mode: str, layout: Layout) -> np.ndarray:
    """The party's quantized inputs, one row per block it encrypts (``mode_rows``).

    Raises:
        PartyError: invalid_field, if the fields do not fit the party's preprocessing.
    """
    return mode_rows(role, own_rows(role, fields), mode, not isinstance(fields, Mapping))


def clear_verdicts(fields: Mapping[str, Fields], mode: str, layout: Layout) -> list[int]:
    """What the evaluation must give, in clear: the tree on the parties' rows (and candidates).

    Args:
        fields: {role: its fields}.
        mode: "predict", "explain" (blocks 1.. then hold the public candidate rows) or "batch".
        layout: the slot layout.

    Returns:
        One 0/1 verdict per block.
    """
    rows = {role: party_rows(role, fields[role], mode, layout) for role in protocol.ROLES}
    candidates = layout.candidates_for(mode)
    if candidates is not None:
        rows[engine.EXPLAIN_PARTY] = np.vstack([rows[engine.EXPLAIN_PARTY], candidates])
    return [int(v) for v in layout.clear_verdicts(rows)]


def party_fields(role: str) -> list[str]:
    """The names of a party's own fields (its CSV columns), in the circuit's order."""
    return [feature.field for feature in PartyPreprocessor.load_all()[role].features]


def read_rows(path: Path, role: str) -> list[dict[str, Any]]:
    """A party's applications from a CSV of its own columns (one row per application).

    The header names the party's fields; booleans are true/false (or 1/0), numbers plain.

    Raises:
        PartyError: invalid_field when the file cannot be read or has other columns.
    """
    features = {f.field: f for f in PartyPreprocessor.load_all()[role].features}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            if columns != set(features):
                raise PartyError(
                    f"{path}: the {role}'s columns are {sorted(features)}, got {sorted(columns)}",
                    "invalid_field",
                )
            return [{k: features[k].parse_text(v) for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PartyError(f"cannot read {path}: {error}", "invalid_field") from None


def read_verdict(mode: str, bits: list[int], layout: Layout) -> dict[str, Any]:
    """Turn the fused bits (one per block) into the verdict and, in explain mode, the bins.

    Returns:
        {"approved": bool} and, in explain mode, "approved_years_employed" (the bins that,
        with employed = yes, give approval) and "fewest_years_employed" (the smallest, or None);
        in batch mode {"approved": [bool, one per application]}.
    """
    if mode == "batch":
        return {"approved": [bool(bit) for bit in bits]}
    result: dict[str, Any] = {"approved": bool(bits[0])}
    if mode == "explain":
        bins = list(layout.explain_candidates["years_employed"])
        approved = [b for b, bit in zip(bins, bits[1 : 1 + len(bins)], strict=True) if bit]
        result["approved_years_employed"] = approved
        result["fewest_years_employed"] = approved[0] if approved else None
    return result


class PartyClient:
    """One party of a three-party session.

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

    def __init__(
        self,
        role: str,
        server_url: str,
        invitation: str,
        key_dir: Path,
        peers: Mapping[str, str],
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
        on_progress: Progress | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        """Check the arguments and open the HTTP client (see the class docstring)."""
        if role not in protocol.ROLES:
            raise PartyError(f"role must be one of {', '.join(protocol.ROLES)}", "invalid_role")
        try:
            self.session_id, self._invitation = protocol.parse_session_code(invitation)
            self.peers = {r: transcript.normalize_fingerprint(fp) for r, fp in peers.items()}
        except ValueError as error:
            raise PartyError(str(error), "invalid_code") from None
        self.role = role
        self.key_dir = Path(key_dir)
        self.session_dir = self.key_dir / f"session-{self.session_id}"
        self.wait_seconds = wait_seconds
        self.on_progress = on_progress or (lambda _event: None)
        self.bytes_up = 0
        self.bytes_down = 0
        self._http = httpx.Client(
            base_url=server_url.rstrip("/"), timeout=HTTP_TIMEOUT_SECONDS, transport=transport
        )
        self._status: dict[str, Any] = {"version": -1}
        self._started = time.perf_counter()
        self._blobs: dict[tuple[str, str, str], bytes] = {}
        self.transcript: Transcript | None = None
        self.identity: Identity | None = None
        self.roster_digest = ""
        self.key_tag = ""
        self.joint: engine.JointRound1 | None = None
        self._round2_share: bytes | None = None

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def __enter__(self) -> PartyClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- HTTP ---------------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        route: str,
        content: bytes | None = None,
        values: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Call the server (retrying after a 503's Retry-After); count the bytes.

        Raises:
            PartyError: with the server's reason on a 4xx/5xx, or "unreachable".
        """
        url = route.format(sid=self.session_id, **(values or {}))
        for _attempt in range(30):
            try:
                response = self._http.request(
                    method, url, content=content, params=query, json=json_body, headers=headers
                )
            except httpx.HTTPError as error:
                raise PartyError(
                    f"cannot reach the three-party server: {error.__class__.__name__}: {error}",
                    "unreachable",
                ) from None
            self.bytes_up += len(content or b"")
            self.bytes_down += len(response.content)
            if response.status_code != 503 or "retry-after" not in response.headers:
                break
            time.sleep(min(10.0, float(response.headers["retry-after"])))
        if response.status_code >= 400:
            try:
                body = response.json()
                detail, code = str(body.get("detail")), str(body.get("code", "server_error"))
            except ValueError:
                detail, code = response.text[:200], "server_error"
            raise PartyError(
                f"the server refused {method} {route.format(sid='…', **(values or {}))} "
                f"(HTTP {response.status_code}): {detail}",
                code,
            )
        return response.content

    def status(self, since: int = -1, wait: float = 0.0) -> dict[str, Any]:
        """The session's status (long-polls up to ``wait`` s); verifies every new statement.

        Raises:
            PartyError: with the TranscriptError's code when a statement does not check.
        """
        query = {protocol.STATUS_SINCE: since, protocol.STATUS_WAIT: wait}
        data = self._request("GET", protocol.STATUS, query=query)
        try:
            self._status = json.loads(data)
            if self.transcript is not None:
                self.transcript.absorb(self._status.get("transcript") or {})
        except TranscriptError as error:
            raise PartyError(f"refused: {error}", error.code) from None
        except (ValueError, AttributeError, TypeError) as error:
            raise PartyError(f"the server's status is malformed: {error}", "tampered") from None
        return self._status

    def wait_for(self, ready: Callable[[], bool], what: str) -> dict[str, Any]:
        """Wait until ``ready()`` (on the verified transcript), long-polling the server.

        Raises:
            PartyError: timeout, after ``wait_seconds`` (nothing done so far is lost).
        """
        deadline = time.monotonic() + self.wait_seconds
        status = self.status()
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                raise PartyError(
                    f"timed out after {self.wait_seconds:g} s waiting for {what}. Nothing done "
                    "so far is lost: run the same command again to continue (the session "
                    f"expires after {status['expires_in']:.0f} s without activity).",
                    "timeout",
                )
            status = self.status(since=status["version"], wait=min(LONG_POLL_SECONDS, left))
        return status

    def _wait_step(self, step: str, roles: tuple[str, ...] | None = None) -> None:
        roles = roles or protocol.step_roles(step)
        names = ", ".join(f"the {r}'s" for r in roles)
        self.wait_for(lambda: all(self._has(r, step) for r in roles), f"{names} {step}")

    def _has(self, role: str, step: str) -> bool:
        assert self.transcript is not None
        return self.transcript.has(role, step)

    def _progress(self, step: str, **values: Any) -> None:
        self.on_progress(
            {
                "step": step,
                "role": self.role,
                "elapsed": round(time.perf_counter() - self._started, 3),
                **values,
                "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down,
            }
        )

    def _put_step(
        self, step: str, blobs: Mapping[str, bytes], refs: Mapping[str, str] | None = None
    ) -> int:
        """Sign and upload one step; return the body's size."""
        assert self.identity is not None
        body = self.identity.signed_step(self.session_id, self.role, step, blobs, refs)
        self._request(
            "PUT",
            protocol.STEP,
            content=body,
            values={"step": step},
            headers={"Content-Type": protocol.OCTET_STREAM},
        )
        self.status()
        return len(body)

    def _fetch(self, role: str, step: str, name: str) -> bytes:
        """A blob of another party's step, checked against the hash its statement signed."""
        key = (role, step, name)
        if key not in self._blobs:
            data = self._request(
                "GET", protocol.BLOB, values={"step": step, "role": role, "name": name}
            )
            assert self.transcript is not None
            try:
                self._blobs[key] = self.transcript.check_blob(role, step, name, data)
            except TranscriptError as error:
                raise PartyError(f"refused: {error}", error.code) from None
        return self._blobs[key]

    def _ref(self, role: str, step: str, name: str) -> str:
        assert self.transcript is not None
        try:
            return self.transcript.ref(role, step, name)
        except TranscriptError as error:
            raise PartyError(f"refused: {error}", error.code) from None

    # -- local secrets and commitments --------------------------------------------------------
    def _prepare_key_dir(self) -> None:
        try:
            for folder in (self.key_dir, self.session_dir):
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(folder, 0o700)
            self.identity = Identity.load_or_create(self.key_dir)
        except (OSError, ValueError) as error:
            raise PartyError(
                f"cannot use the key folder {self.key_dir}: {error}", "key_dir"
            ) from None

    def _local(self, name: str, make: Callable[[], bytes]) -> bytes:
        """A value kept in the session folder (made once): what a commitment binds."""
        path = self.session_dir / name
        if path.exists():
            return path.read_bytes()
        data = make()
        _write_private(path, data)
        return data

    def _box_key(self) -> PrivateKey:
        return PrivateKey(self._local(BOX_SECRET_FILE, lambda: bytes(PrivateKey.generate())))

    def _share(self, made: engine.PartyKeyShare | None = None) -> engine.PartyKeyShare:
        try:
            if made is not None:
                made.save(self.session_dir)
                return made
            return engine.PartyKeyShare.load(self.session_dir, self.role)
        except engine.InvalidBlobError as error:
            raise PartyError(
                f"this party's round 1 is on the server but its key share cannot be read "
                f"({error}): it cannot go on; create a new session",
                "key_dir",
            ) from None

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
        self._http.headers["Authorization"] = f"{protocol.BEARER} {token}"
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

    def _round2(self, share: engine.PartyKeyShare, joint_public_key: bytes) -> bytes:
        """This party's round-2 share, on the joint round-1 keys it summed itself (made once)."""
        if self._round2_share is None:
            self.joint = self._combine_round1(joint_public_key)
            self._round2_share = engine.round2(
                share, self.joint.joint_eval_mult_round1, self.key_tag
            )
        return self._round2_share

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


def create_session(
    server_url: str, roster: Mapping[str, str], mode: str = "predict", applications: int = 1
) -> dict[str, Any]:
    """Create a session for a roster; return {"session_id", "mode", "roster", "invitations"...}.

    Args:
        server_url: the three-party server's base URL.
        roster: {role: verify key hex} of the three parties (``python -m threeparty identity``).
        mode: "predict", "explain" or "batch".
        applications: how many applications a batch scores (1 to ``protocol.MAX_APPLICATIONS``).

    Raises:
        PartyError: if the server cannot be reached or refuses.
    """
    response = _session_request(
        "POST",
        server_url,
        protocol.SESSIONS,
        201,
        "create a session",
        json={"mode": mode, "roster": dict(roster), "applications": applications},
    )
    return response.json()


def delete_session(server_url: str, key_dir: Path, invitation: str) -> None:
    """Delete a session as the party whose folder ``key_dir`` is (it joined with its token).

    Raises:
        PartyError: if the invitation is malformed, the party never joined, the server cannot
            be reached or refuses.
    """
    try:
        session_id, _secret = protocol.parse_session_code(invitation)
    except ValueError as error:
        raise PartyError(str(error), "invalid_code") from None
    token_path = Path(key_dir) / f"session-{session_id}" / TOKEN_FILE
    try:
        token = token_path.read_text()
    except OSError:
        raise PartyError(f"no token in {token_path}: this party never joined", "key_dir") from None
    _session_request(
        "DELETE",
        server_url,
        protocol.SESSION.format(sid=session_id),
        204,
        "delete the session",
        headers={"Authorization": f"{protocol.BEARER} {token}"},
    )


def _session_request(
    method: str, server_url: str, path: str, expected: int, action: str, **kwargs: Any
) -> httpx.Response:
    """One request about a whole session, outside a party's run; other answers are PartyError."""
    try:
        response = httpx.request(method, f"{server_url.rstrip('/')}{path}", timeout=30.0, **kwargs)
    except httpx.HTTPError as error:
        raise PartyError(f"cannot reach the three-party server: {error}", "unreachable") from None
    if response.status_code != expected:
        raise PartyError(
            f"the server refused to {action} (HTTP {response.status_code}): {response.text[:200]}",
            "server_error",
        )
    return response
