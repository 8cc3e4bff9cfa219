"""The three-party server's sessions: the live ones in memory (``SessionStore``) over a storage.

A storage (``SessionStorage``) keeps each session's meta and blobs so that it survives a restart
of the server; the settings choose it (``open_storage``):

- ``FileStorage`` (``file_storage.py``): one folder per session under ``THREEPARTY_STORE_DIR``
  (the default), or nothing at all when that is "";
- ``RedisStorage`` (``redis_storage.py``): one Redis database at ``THREEPARTY_STORE_URL``.

Either way the store keeps the same semantics: the live sessions are in memory (their long-polls'
events and locks are), at most ``max_sessions`` of them, each dropped when idle for
``session_ttl_seconds`` or older than ``session_lifetime_seconds``; at start the stored ones are
read back and the expired ones among them dropped.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from threeparty import protocol, transcript
from threeparty.protocol import ErrorCode
from threeparty.server.errors import ServiceError, unknown_session
from threeparty.server.file_storage import FileStorage
from threeparty.server.sessions import Session, digest
from threeparty.server.settings import ThreePartySettings

logger = logging.getLogger("threeparty.server")


class SessionStorage(Protocol):
    """Where sessions are kept between restarts (``FileStorage``, ``RedisStorage``).

    Blobs are written before the meta that lists them, so a crash leaves the last complete state.
    The methods are called from the event loop (meta, deletes, ``load``) or from worker threads
    (``write_blobs``). The Redis storage answers its outages with ``ServiceError`` busy (503).
    """

    def write_blobs(self, session_id: str, prefix: str, blobs: dict[str, bytes]) -> None:
        """Keep blobs as ``<prefix>__<name>`` (prefix: "<role>__<step>", or "derived")."""
        ...

    def write_meta(self, session_id: str, meta: dict[str, Any]) -> None:
        """Keep the session's meta (``Session.meta``)."""
        ...

    def delete(self, session_id: str) -> None:
        """Forget a session."""
        ...

    def load(self) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
        """Every kept session: (its meta, {blob stem: bytes}); unreadable ones are removed."""
        ...


def open_storage(config: ThreePartySettings) -> SessionStorage:
    """The storage the settings name: Redis for ``store_url``, else the filesystem (or none)."""
    if config.store_url:
        from threeparty.server.redis_storage import RedisStorage

        return RedisStorage(config.store_url, config.session_lifetime_seconds)
    return FileStorage(Path(config.store_dir) if config.store_dir else None)


class SessionStore:
    """The live sessions, touched only from the event loop's thread."""

    def __init__(
        self,
        config: ThreePartySettings,
        clock: Callable[[], float] = time.monotonic,
        storage: SessionStorage | None = None,
    ):
        """An empty store with the settings' limits (``storage``: where sessions are kept)."""
        self.config = config
        self.clock = clock
        self.storage: SessionStorage = storage or FileStorage(None)
        self.sessions: dict[str, Session] = {}

    @property
    def wall_offset(self) -> float:
        """Wall-clock time minus this store's clock (stored times are wall-clock)."""
        return time.time() - self.clock()

    def save(self, session: Session) -> None:
        """Write the session's meta (after any blob it lists)."""
        self.storage.write_meta(session.session_id, session.meta(self.wall_offset))

    def restore(self) -> int:
        """Read back the stored sessions (expired ones are dropped); return how many."""
        for meta, files in self.storage.load():
            try:
                session = Session.restore(meta, files, self.wall_offset)
            except (KeyError, TypeError, ValueError) as error:
                logger.warning("a stored session cannot be read back (%s): removed", error)
                self.storage.delete(str(meta.get("session_id", "")))
                continue
            self.sessions[session.session_id] = session
        self.purge_expired()
        return len(self.sessions)

    def expires_in(self, session: Session) -> float:
        """Seconds left before the session expires: idle time, capped by its whole lifetime."""
        now = self.clock()
        idle = session.last_used + self.config.session_ttl_seconds - now
        whole = session.created + self.config.session_lifetime_seconds - now
        return max(0.0, min(idle, whole))

    def purge_expired(self) -> None:
        """Drop every expired session."""
        for session_id in [s for s, v in self.sessions.items() if self.expires_in(v) <= 0]:
            self.drop(session_id, "expired")

    def drop(self, session_id: str, reason: str) -> None:
        """Forget a session and everything stored for it."""
        session = self.sessions.pop(session_id, None)
        self.storage.delete(session_id)
        if session is not None:
            session.touch()  # wake its long-polls: they answer 404 next time
            logger.info("session %s dropped (%s)", session_id[:8], reason)

    def create(
        self, mode: str, roster: dict[str, str], applications: int = 1
    ) -> tuple[Session, dict[str, str]]:
        """A new session and each party's invitation secret.

        Raises:
            ServiceError: busy (503 + Retry-After: when the first session expires) when full.
        """
        self.purge_expired()
        if len(self.sessions) >= self.config.max_sessions:
            soonest = min(self.expires_in(s) for s in self.sessions.values())
            raise ServiceError(
                ErrorCode.busy,
                f"the server holds its maximum of {self.config.max_sessions} sessions",
                retry_after=max(1, math.ceil(soonest)),
            )
        secrets_by_role = {role: secrets.token_urlsafe(32) for role in protocol.ROLES}
        now = self.clock()
        session = Session(
            session_id=secrets.token_hex(16),
            mode=mode,
            applications=applications,
            roster=dict(roster),
            invitation_digests={r: digest(t) for r, t in secrets_by_role.items()},
            created=now,
            last_used=now,
        )
        self.sessions[session.session_id] = session
        self.save(session)
        logger.info("session %s created (%s)", session.session_id[:8], mode)
        return session, secrets_by_role

    def live(self, session_id: str) -> Session:
        """The live session (404 when unknown or expired)."""
        session = self.sessions.get(session_id)
        if session is not None and self.expires_in(session) <= 0:
            self.drop(session_id, "expired")
            session = None
        if session is None:
            raise unknown_session()
        return session

    def join(self, session_id: str, role: str, invitation: str, token: str, signature: str) -> None:
        """Redeem ``role``'s invitation: bind the bearer token (a digest) the party chose.

        The signature must be made by ``role``'s roster key over the session, the role and the
        token digest, so whoever created the session (and holds every invitation) cannot join
        as another party. Redeeming again with the same token is allowed (a party resumes).

        Raises:
            ServiceError: unknown_session, or forbidden (403) for a wrong invitation, a bad
                signature or an invitation already redeemed for another token.
        """
        session = self.live(session_id)
        if role not in session.invitation_digests or not hmac.compare_digest(
            digest(invitation), session.invitation_digests[role]
        ):
            raise ServiceError(ErrorCode.forbidden, f"not the {role}'s invitation")
        key = bytes.fromhex(session.roster[role])
        if not transcript.verify_join(key, session_id, role, token, signature):
            raise ServiceError(
                ErrorCode.forbidden,
                f"the join is not signed by the {role}'s identity key in the roster",
            )
        bound = session.token_digests.get(role)
        if bound is not None and bound != token:
            raise ServiceError(ErrorCode.forbidden, f"the {role}'s invitation is already used")
        if bound is None:
            session.token_digests[role] = token
            session.last_used = self.clock()
            session.touch()
            self.save(session)

    def authenticate(self, session_id: str, token: str | None) -> tuple[Session, str]:
        """The live session and the calling party's role.

        Raises:
            ServiceError: unknown_session (404) or unauthorized (401).
        """
        session = self.live(session_id)
        role = session.role_of(token) if token else None
        if role is None:
            raise ServiceError(ErrorCode.unauthorized, "missing or wrong token for this session")
        session.last_used = self.clock()
        return session, role
