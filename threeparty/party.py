"""A party's client in the three-party mode: ``PartyClient(role, server_url, code, key_dir)``.

Each party runs its own client, in its own process, usually on its own machine. The client
keeps the party's key share and its X25519 box secret key in ``key_dir`` (files 0600, folder 0700):
neither ever leaves it. It uploads only public material (round-1 blobs, its round-2 share), its
own ciphertexts, and its partial decryptions sealed for their recipients.

A run is resumable: the server's status says which steps are done, so a party that timed out
waiting for another runs the same command again and goes on where it stopped (its key share is
read back from ``key_dir``).

Progress is reported as one dict per step (the CLI prints them as JSON lines):
``joined``, ``round1``, ``round2``, ``uploaded``, ``evaluated``, ``partial_decrypted``,
``verdict`` (recipients only) and ``done``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from fhe_client.preprocessing import InvalidFieldError, PartyPreprocessor
from threeparty import engine, protocol
from threeparty.layout import Layout, load_layout

BOX_SECRET_FILE = "box_secret.key"
DEFAULT_WAIT_SECONDS = 120.0
HTTP_TIMEOUT_SECONDS = 120.0
LONG_POLL_SECONDS = 10.0

Progress = Callable[[dict[str, Any]], None]


class PartyError(Exception):
    """A step failed; ``str(error)`` says why in one readable sentence.

    Attributes:
        code: a ``protocol.ErrorCode`` value from the server, or "timeout", "invalid_field",
            "unreachable", "key_dir", "bad_result".
    """

    def __init__(self, message: str, code: str):
        """Build the error."""
        super().__init__(message)
        self.code = code


def fingerprint(public_key: bytes) -> str:
    """Short fingerprint of a box public key, for comparison out of band."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (0600), atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def party_rows(role: str, fields: Mapping[str, Any], mode: str, layout: Layout) -> np.ndarray:
    """The party's quantized inputs, one row per block of the session's mode.

    The applicant and the bank repeat their application in every block; the credit bureau puts
    its real row in block 0 and, in explain mode, the candidate rows (employed, each
    years-employed bin) in the next blocks.

    Raises:
        PartyError: invalid_field, if the fields do not fit the party's preprocessing.
    """
    try:
        row = PartyPreprocessor.load_all()[role].transform(dict(fields))
    except InvalidFieldError as error:
        raise PartyError(f"the {role}'s fields are invalid: {error}", "invalid_field") from None
    blocks = protocol.blocks_for(mode)
    if role == "credit_bureau" and mode == "explain":
        candidates = np.asarray(layout.explain_candidates["rows"], dtype=np.int64)
        return np.vstack([row[None, :], candidates])
    return np.tile(row, (blocks, 1))


def read_verdict(mode: str, bits: list[int], layout: Layout) -> dict[str, Any]:
    """Turn the fused bits (one per block) into the verdict and, in explain mode, the bins.

    Returns:
        {"approved": bool} and, in explain mode, "approved_years_employed" (the bins that,
        with employed = yes, give approval) and "fewest_years_employed" (the smallest, or None).
    """
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
        session_code: this party's code (``<session id>.<token>``).
        key_dir: the party's own folder for its key share and box secret key.
        wait_seconds: how long to wait for another party before failing with a clear time-out.
        on_progress: called with one dict per step.
    """

    def __init__(
        self,
        role: str,
        server_url: str,
        session_code: str,
        key_dir: Path,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
        on_progress: Progress | None = None,
    ):
        """Check the arguments and open the HTTP client (see the class docstring)."""
        if role not in protocol.ROLES:
            raise PartyError(f"role must be one of {', '.join(protocol.ROLES)}", "invalid_role")
        try:
            self.session_id, token = protocol.parse_session_code(session_code)
        except ValueError as error:
            raise PartyError(str(error), "invalid_code") from None
        self.role = role
        self.key_dir = Path(key_dir)
        self.wait_seconds = wait_seconds
        self.on_progress = on_progress or (lambda _event: None)
        self.bytes_up = 0
        self.bytes_down = 0
        self._http = httpx.Client(
            base_url=server_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=HTTP_TIMEOUT_SECONDS,
        )
        self._status: dict[str, Any] = {"version": -1}

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
    ) -> bytes:
        """Call the server (retrying after a 503's Retry-After); count the bytes.

        Raises:
            PartyError: with the server's reason on a 4xx/5xx, or "unreachable".
        """
        url = route.format(sid=self.session_id, **(values or {}))
        for _attempt in range(30):
            try:
                response = self._http.request(method, url, content=content, params=query)
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

    def _get(self, route: str, **values: str) -> bytes:
        return self._request("GET", route, values=values)

    def _put(self, route: str, content: bytes, **values: str) -> None:
        self._request("PUT", route, content=content, values=values)

    def status(self, since: int = -1, wait: float = 0.0) -> dict[str, Any]:
        """The session's status (long-polls up to ``wait`` seconds for a newer version)."""
        query = {protocol.STATUS_SINCE: since, protocol.STATUS_WAIT: wait}
        data = self._request("GET", protocol.STATUS, query=query)
        self._status = json.loads(data)
        return self._status

    def wait_for(self, ready: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Wait until ``ready(status)``, long-polling the server.

        Raises:
            PartyError: timeout, after ``wait_seconds`` (nothing done so far is lost).
        """
        deadline = time.monotonic() + self.wait_seconds
        status = self.status()
        while not ready(status):
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

    def _progress(self, step: str, **values: Any) -> None:
        self.on_progress(
            {
                "step": step,
                "role": self.role,
                **values,
                "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down,
            }
        )

    # -- local secrets --------------------------------------------------------------------------
    def _prepare_key_dir(self) -> None:
        try:
            self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.key_dir, 0o700)
        except OSError as error:
            raise PartyError(
                f"cannot use the key folder {self.key_dir}: {error}", "key_dir"
            ) from None

    def _box_key(self, registered: bytes | None) -> PrivateKey:
        path = self.key_dir / BOX_SECRET_FILE
        if path.exists():
            key = PrivateKey(path.read_bytes())
        elif registered is not None:
            raise PartyError(
                f"this party's box key is registered but its secret is not in {self.key_dir}",
                "key_dir",
            )
        else:
            key = PrivateKey.generate()
            _write_private(path, bytes(key))
        if registered is not None and bytes(key.public_key) != registered:
            raise PartyError(
                f"the box key in {self.key_dir} is not the one registered for this party",
                "key_dir",
            )
        return key

    def _saved_share(self) -> engine.PartyKeyShare:
        try:
            return engine.PartyKeyShare.load(self.key_dir, self.role)
        except engine.InvalidBlobError as error:
            raise PartyError(
                f"this party's round 1 is on the server but its key share cannot be read "
                f"({error}): it cannot go on; create a new session",
                "key_dir",
            ) from None

    # -- the flow -------------------------------------------------------------------------------
    def run(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Take part in the whole session; return the verdict (recipients) or {} (the bureau).

        Raises:
            PartyError: with a readable reason (server refusal, time-out, bad fields, ...).
        """
        started = time.perf_counter()
        self._prepare_key_dir()
        layout = load_layout()
        status = self.status()
        mode = status["mode"]
        rows = party_rows(self.role, fields, mode, layout)

        registered = status["box_keys"].get(self.role)
        box = self._box_key(bytes.fromhex(registered) if registered else None)
        if registered is None:
            self._put(protocol.BOX_KEY, bytes(box.public_key))
        self._progress(
            "joined",
            session=self.session_id[:8],
            mode=mode,
            box_key_fingerprint=fingerprint(bytes(box.public_key)),
        )

        share = self._round1(status)
        self._round2(share)
        self._upload(layout, rows)
        status = self._evaluate()
        return self._decrypt(share, box, status, mode, layout, started)

    def _round1(self, status: dict[str, Any]) -> engine.PartyKeyShare:
        if self.role in status["round1"]:
            return self._saved_share()
        previous = protocol.previous_role(self.role)
        start = time.perf_counter()
        if previous is None:
            share, made = engine.lead_round1()
        else:
            self.wait_for(lambda s: previous in s["round1"], f"the {previous}'s round-1 keys")
            public_key = self._get(protocol.ROUND1_BLOB, role=previous, kind="public_key")
            lead_mult = self._get(protocol.ROUND1_BLOB, role=protocol.LEAD, kind="eval_mult")
            lead_rotation = self._get(protocol.ROUND1_BLOB, role=protocol.LEAD, kind="rotation")
            share, made = engine.join_round1(self.role, public_key, lead_mult, lead_rotation)
        seconds = time.perf_counter() - start
        blobs = dataclasses.asdict(made)
        share.save(self.key_dir)
        self._put(protocol.ROUND1, protocol.pack(blobs))
        self._progress(
            "round1",
            seconds=round(seconds, 3),
            uploaded={kind: len(blob) for kind, blob in blobs.items()},
        )
        return share

    def _round2(self, share: engine.PartyKeyShare) -> None:
        status = self.wait_for(
            lambda s: s["joint_keys"], "the joint keys (all three parties' round 1)"
        )
        if self.role in status["round2"]:
            return
        joint_mult = self._get(protocol.JOINT, kind="eval_mult")
        start = time.perf_counter()
        contribution = engine.round2(share, joint_mult, status["key_tag"])
        seconds = time.perf_counter() - start
        self._put(protocol.ROUND2, contribution)
        self._progress("round2", seconds=round(seconds, 3), uploaded=len(contribution))

    def _upload(self, layout: Layout, rows: np.ndarray) -> None:
        if self.role in self._status["ciphertexts"]:
            return
        start = time.perf_counter()
        vectors = engine.encode_party(layout, self.role, rows)
        ciphertexts: dict[int, bytes] = {}
        if vectors:  # a party the tree tests no field of (the bank) fetches no public key
            joint_public_key = self._get(protocol.JOINT, kind="public_key")
            ciphertexts = engine.encrypt(joint_public_key, vectors)
        seconds = time.perf_counter() - start
        body = protocol.pack({str(index): data for index, data in ciphertexts.items()})
        self._put(protocol.CIPHERTEXTS, body)
        self._progress(
            "uploaded", seconds=round(seconds, 3), ciphertexts=len(ciphertexts), uploaded=len(body)
        )

    def _evaluate(self) -> dict[str, Any]:
        self.wait_for(
            lambda s: s["keys_ready"] and len(s["ciphertexts"]) == len(protocol.ROLES),
            "the other parties' round-2 shares and ciphertexts",
        )
        evaluated = json.loads(self._request("POST", protocol.EVALUATE))
        status = self.status()
        self._progress("evaluated", evaluation_seconds=round(evaluated["evaluation_seconds"], 3))
        return status

    def _decrypt(
        self,
        share: engine.PartyKeyShare,
        box: PrivateKey,
        status: dict[str, Any],
        mode: str,
        layout: Layout,
        started: float,
    ) -> dict[str, Any]:
        output = self._get(protocol.OUTPUT)
        start = time.perf_counter()
        own = engine.partial_decrypt(share, output, status["key_tag"])
        sent_to = []
        for recipient in protocol.RECIPIENTS:
            if recipient == self.role:
                continue
            already = {"sender": self.role, "recipient": recipient} in status["partials"]
            if not already:
                public = PublicKey(bytes.fromhex(status["box_keys"][recipient]))
                self._put(protocol.PARTIAL_TO, SealedBox(public).encrypt(own), recipient=recipient)
            sent_to.append(recipient)
        self._progress(
            "partial_decrypted",
            seconds=round(time.perf_counter() - start, 3),
            sent_to=sent_to,
            partial_bytes=len(own),
        )
        result: dict[str, Any] = {}
        if self.role in protocol.RECIPIENTS:
            senders = [r for r in protocol.ROLES if r != self.role]
            self.wait_for(
                lambda s: all(
                    {"sender": r, "recipient": self.role} in s["partials"] for r in senders
                ),
                "the other parties' partial decryptions",
            )
            partials = {self.role: own}
            for sender in senders:
                sealed = self._get(protocol.PARTIAL_FROM, sender=sender)
                try:
                    partials[sender] = SealedBox(box).decrypt(sealed)
                except CryptoError as error:
                    raise PartyError(
                        f"the {sender}'s sealed partial does not open with this party's box key: "
                        f"{error}",
                        "bad_result",
                    ) from None
            try:
                bits = engine.fuse(
                    [partials[r] for r in protocol.ROLES], protocol.blocks_for(mode), layout
                )
            except engine.EngineError as error:
                raise PartyError(
                    f"the partial decryptions do not fuse: {error}", "bad_result"
                ) from None
            result = read_verdict(mode, [int(b) for b in bits], layout)
            self._progress("verdict", **result)
        self._progress("done", seconds=round(time.perf_counter() - started, 3))
        return result


def create_session(server_url: str, mode: str = "predict") -> dict[str, Any]:
    """Create a session; return {"session_id", "mode", "codes": {role: code}, "expires_in"}.

    Raises:
        PartyError: if the server cannot be reached or refuses.
    """
    response = _session_request(
        "POST", server_url, protocol.SESSIONS, 201, "create a session", json={"mode": mode}
    )
    return response.json()


def delete_session(server_url: str, code: str) -> None:
    """Delete a session with any party's code: the server forgets it and everything it holds.

    Raises:
        PartyError: if the code is malformed, the server cannot be reached or refuses.
    """
    try:
        session_id, token = protocol.parse_session_code(code)
    except ValueError as error:
        raise PartyError(str(error), "invalid_code") from None
    _session_request(
        "DELETE",
        server_url,
        protocol.SESSION.format(sid=session_id),
        204,
        "delete the session",
        headers={"Authorization": f"Bearer {token}"},
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
            f"the server refused to {action} (HTTP {response.status_code}): "
            f"{response.text[:200]}",
            "server_error",
        )
    return response
