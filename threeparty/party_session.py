"""A party's connection to its session: HTTP with the server, the verified view, local secrets.

``PartySession`` is the base of ``PartyClient`` (``threeparty.party``): the requests (retried on
a 503, bytes counted), the long-poll that verifies every new statement, the signed uploads, the
blob fetches checked against their signed hashes, and the values kept in the session folder.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from nacl.public import PrivateKey

from contracts.wire import CONTENT_TYPE_HEADER
from threeparty import engine, protocol, transcript
from threeparty.party_base import (
    BOX_SECRET_FILE,
    DEFAULT_WAIT_SECONDS,
    HTTP_TIMEOUT_SECONDS,
    LONG_POLL_SECONDS,
    PartyError,
    Progress,
    _write_private,
)
from threeparty.transcript import Identity, Transcript, TranscriptError

_Session = TypeVar("_Session", bound="PartySession")


class PartySession:
    """A party's connection to one session and its folder (the base of ``PartyClient``).

    Its arguments are documented on ``PartyClient`` (``threeparty.party``), the class a party
    program makes.
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
            base_url=server_url.rstrip("/"),
            timeout=HTTP_TIMEOUT_SECONDS,
            transport=transport,
            # TLS checks for an https server; a plain-HTTP one needs no certificate store
            # (loading it costs every party process 20-90 ms).
            verify=urlsplit(server_url).scheme == "https",
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

    def __enter__(self: _Session) -> _Session:
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
            headers={CONTENT_TYPE_HEADER: protocol.OCTET_STREAM},
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
