"""The session store interface (``SessionStore``) and what every store shares.

Two stores implement it: ``fhe_server.file_store.FileSessionStore`` (the default, one directory
a session) and ``fhe_server.redis_store.RedisSessionStore`` (the replicas of a cluster).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

from contracts.parties import Party


def token_digest(token: str) -> str:
    """SHA-256 of a token (the only form in which tokens are stored)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def short_id(session_id: str) -> str:
    """First characters of a session id, enough for logs."""
    return session_id[:8]


class SessionStore(Protocol):
    """Where sessions live: the interface every store implements (filesystem, Redis, ...).

    A session holds the hash of its bearer token, its serialized evaluation keys, one ciphertext
    per party, an inputs version and at most one encrypted verdict with the inputs version it was
    computed from. Every method is blocking (the service runs them in worker threads) and safe to
    call from several threads and several server processes at once. Session ids that do not match
    ``protocol.SESSION_ID_PATTERN`` are unknown sessions, never keys or paths.

    Methods (errors are ``fhe_server.errors`` classes):

    - ``recover()``: called once when a server process starts: remove what an interrupted process
      left behind and purge expired sessions.
    - ``create(evaluation_keys, reserve_bytes) -> (session_id, token)``: store a new session;
      ``reserve_bytes`` is the room one complete session can take. Only the token's SHA-256 is
      kept. Expired sessions are purged first; live sessions are never evicted: when the store
      is full (its session count or its space), ``ServerBusyError`` (503) with ``retry_after``
      the seconds until the first live session would expire.
    - ``check_room(reserve_bytes)``: refuse a creation as ``create`` would (``ServerBusyError``)
      before its body is read; taking nothing (``create`` checks again).
    - ``authenticate(session_id, token)``: check that the session is live and the token is its
      own, and mark the session used (its idle time restarts). ``SessionNotFoundError`` (unknown,
      expired or deleted), ``InvalidTokenError`` (missing or wrong token).
    - ``put_input(session_id, party, data)``: store or replace one party's ciphertext and, in the
      same atomic step, increment the inputs version by one and forget any stored verdict.
    - ``read_inputs(session_id, parties) -> (ciphertexts, inputs_version)``: the parties'
      ciphertexts and the inputs version they belong to, read together.
      ``StepOutOfOrderError`` if one of them was never uploaded.
    - ``read_evaluation_keys(session_id) -> bytes``: the serialized evaluation keys.
    - ``store_output(session_id, data, inputs_version)``: compare-and-set: store the verdict only
      if ``inputs_version`` is still the session's current inputs version (checked and written
      atomically); otherwise ``StepOutOfOrderError`` and nothing is stored, so a predict racing an
      upload never keeps a verdict for old inputs.
    - ``read_output(session_id) -> bytes``: the verdict of the current inputs;
      ``StepOutOfOrderError`` if predict has not run since the last upload.
    - ``delete(session_id)``: remove the session and everything stored for it.
    - ``purge_expired() -> list[str]``: remove every expired session; return their ids.
    - ``session_ids() -> list[str]``: ids of the stored sessions.

    Every method taking a session id raises ``SessionNotFoundError`` for an unknown or expired
    session. A store is built with an ``on_remove(session_id)`` callback, called for the sessions
    this process removes (so the process drops their prepared keys).
    """

    def recover(self) -> None:
        """Clean up after an interrupted process and purge expired sessions."""
        ...

    def create(self, evaluation_keys: bytes, reserve_bytes: int = 0) -> tuple[str, str]:
        """Store a new session; return (session_id, token)."""
        ...

    def check_room(self, reserve_bytes: int = 0) -> None:
        """Refuse a creation now if the store is full."""
        ...

    def authenticate(self, session_id: str, token: str | None) -> None:
        """Check the session and its token; mark it used."""
        ...

    def put_input(self, session_id: str, party: Party, data: bytes) -> None:
        """Store one party's ciphertext, bump the inputs version, drop the verdict."""
        ...

    def read_inputs(
        self, session_id: str, parties: Iterable[Party]
    ) -> tuple[dict[Party, bytes], int]:
        """Read some parties' ciphertexts and their inputs version."""
        ...

    def read_evaluation_keys(self, session_id: str) -> bytes:
        """Read the serialized evaluation keys."""
        ...

    def store_output(self, session_id: str, data: bytes, inputs_version: int) -> None:
        """Store a verdict if ``inputs_version`` is still current (compare-and-set)."""
        ...

    def read_output(self, session_id: str) -> bytes:
        """Read the verdict of the current inputs."""
        ...

    def delete(self, session_id: str) -> None:
        """Remove a session."""
        ...

    def purge_expired(self) -> list[str]:
        """Remove expired sessions; return their ids."""
        ...

    def session_ids(self) -> list[str]:
        """Ids of the stored sessions."""
        ...
