"""Sessions in Redis, shared by every replica of the server (``FHE_STORE_URL=redis://...``).

Layout (one Redis database, a single instance: the scripts touch keys they compute, which Redis
Cluster would refuse)::

    fhe:session:<id>   hash    token_sha256, created, inputs_version, output_version,
                               input:<party> (ciphertexts), output (encrypted verdict)
    fhe:keys:<id>      string  the serialized evaluation keys (about 25 MB)
    fhe:sessions       zset    session id -> last use (ms), for max_sessions
    fhe:removed        channel ids of deleted or expired sessions

Every change to a session is one Lua script or one command, so it is atomic across replicas:
an upload increments ``inputs_version`` in Redis, and a verdict is stored only if the inputs
version it was computed from is still the current one (compare-and-set). Expiry is Redis's own
TTL on both keys, renewed by every authenticated call; when ``max_sessions`` live sessions are
stored, a new one is refused (503), never made room for by evicting one. Each replica subscribes
to ``fhe:removed`` and drops its prepared keys of a session as soon as any replica deletes it, or
notices (at its periodic purge) that Redis expired it (``redis_listener.py``).

Redis's failures are answered by their exception's type (``refusal``), never as a 500: out of
memory is a 503 whose Retry-After is the next expiry (at most ``FULL_RETRY_SECONDS``), while
reads, TTL renewals and deletes go on working; unreachable, loading or read-only is a transient
503 (``StoreUnavailableError``) that can be repeated at once.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    ExecAbortError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from contracts.wire import SESSION_ID_PATTERN
from fhe_server.errors import (
    InvalidTokenError,
    ServerBusyError,
    SessionNotFoundError,
    StepOutOfOrderError,
    StoreUnavailableError,
)
from fhe_server.redis_errors import store_errors
from fhe_server.redis_listener import RemovalListener
from fhe_server.redis_scripts import (
    CREATE_SCRIPT,
    DELETE_SCRIPT,
    PRUNE_SCRIPT,
    PUT_INPUT_SCRIPT,
    RENEW_SCRIPT,
    ROOM_SCRIPT,
    STORE_OUTPUT_SCRIPT,
)
from fhe_server.session_store import short_id, token_digest

if TYPE_CHECKING:
    from fhe_server.redis_quota import RedisSessionQuota

logger = logging.getLogger("fhe_server.redis_store")

PREFIX = "fhe:"
SESSIONS_KEY = PREFIX + "sessions"
REMOVED_CHANNEL = PREFIX + "removed"
NOT_FOUND = "unknown or expired session"
# Seconds a client is asked to wait when Redis cannot be reached or cannot write.
STORE_RETRY_AFTER_SECONDS = 2
# Most seconds a client is asked to wait when the store is full (its session count or Redis's
# memory): room comes back at the next expiry, or sooner when a client deletes its session.
FULL_RETRY_SECONDS = 5
# How often each replica looks for sessions Redis expired (to announce them to every replica).
PRUNE_SECONDS = 5.0


def meta_key(session_id: str) -> str:
    """Redis key of a session's hash (metadata, inputs and output)."""
    return f"{PREFIX}session:{session_id}"


def blob_key(session_id: str) -> str:
    """Redis key of a session's serialized evaluation keys."""
    return f"{PREFIX}keys:{session_id}"


class RedisSessionStore:
    """The session store over one Redis database; the same methods as the filesystem store.

    Attributes:
        ttl_seconds: idle time after which Redis expires a session.
        max_sessions: most live sessions kept; beyond, creating one is refused (503).
    """

    def __init__(
        self,
        url: str,
        ttl_seconds: float,
        max_sessions: int,
        on_remove: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        prune_seconds: float = PRUNE_SECONDS,
        on_resync: Callable[[set[str]], None] | None = None,
    ):
        """Connect to Redis (lazily) and, with ``on_remove``, listen for removed sessions.

        Args:
            url: ``redis://[:password@]host:port/db`` (or ``rediss://`` for TLS).
            ttl_seconds: idle expiry of a session.
            max_sessions: most sessions kept in Redis.
            on_remove: called with the id of every session removed by any replica or expired.
            clock: wall clock (seconds since the epoch), for the least-recently-used order.
            prune_seconds: with ``on_remove``, how often to look for sessions Redis expired.
            on_resync: with ``on_remove``, called with the ids of the sessions Redis holds when
                the subscription comes back after a loss (removals may have been missed).
        """
        self.url = url
        self.ttl_seconds = ttl_seconds
        self.max_sessions = max_sessions
        self.on_remove = on_remove
        self.clock = clock
        self.prune_seconds = prune_seconds
        self.redis = redis.Redis.from_url(url, health_check_interval=30, socket_timeout=30)
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._create = self.redis.register_script(CREATE_SCRIPT)
        self._prune = self.redis.register_script(PRUNE_SCRIPT)
        self._put_input = self.redis.register_script(PUT_INPUT_SCRIPT)
        self._store_output = self.redis.register_script(STORE_OUTPUT_SCRIPT)
        self._delete = self.redis.register_script(DELETE_SCRIPT)
        self._renew = self.redis.register_script(RENEW_SCRIPT)
        self._room = self.redis.register_script(ROOM_SCRIPT)
        self._listener: RemovalListener | None = None
        if on_remove is not None:
            self._listener = RemovalListener(self, REMOVED_CHANNEL, on_remove, on_resync)
            self._listener.start()

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _check_id(session_id: str) -> str:
        if not SESSION_ID_PATTERN.fullmatch(session_id):
            raise SessionNotFoundError(NOT_FOUND)
        return session_id

    @staticmethod
    def _input_field(party: Any) -> str:
        return f"input:{getattr(party, 'value', party)}"

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def close(self) -> None:
        """Stop listening and close the connections."""
        if self._listener is not None:
            self._listener.stop()
        self.redis.close()

    def status(self) -> dict[str, bool]:
        """What ``/health`` reports: Redis answered lately, and the removal subscription is up.

        Read from the listener's flags (no round trip); without a listener, both are True.
        """
        if self._listener is None:
            return {"reachable": True, "subscribed": True}
        return {"reachable": self._listener.reachable, "subscribed": self._listener.subscribed}

    def refusal(self, error: RedisError) -> ServerBusyError:
        """The 503 that answers a failure of Redis, chosen by the exception's type.

        Out of memory: the store is full until a session expires or is deleted (Retry-After
        from the next expiry, at most ``FULL_RETRY_SECONDS``). Unreachable, loading, read-only
        or failing over: nothing was changed and the request can be repeated at once
        (``StoreUnavailableError``). Anything else Redis refuses is logged with its trace.
        """
        if isinstance(error, OutOfMemoryError):
            logger.error("Redis is full (maxmemory): %s", error)
            return ServerBusyError(
                "the session store is full; retry later", self.full_retry_after()
            )
        if isinstance(error, RedisConnectionError | RedisTimeoutError):
            if self._listener is not None:
                self._listener.reachable = False
            what = "is unreachable"  # BusyLoadingError is a ConnectionError: Redis is starting
        elif isinstance(error, ReadOnlyError | MasterDownError | TryAgainError):
            what = "cannot write now (read-only or failing over)"
        elif isinstance(error, ExecAbortError):
            what = "refused a transaction"
        else:
            logger.exception("unexpected answer from Redis", exc_info=error)
            what = "refused the request"
        logger.error("the session store %s: %r", what, error)
        return StoreUnavailableError(
            f"the session store {what}; retry later", STORE_RETRY_AFTER_SECONDS
        )

    def full_retry_after(self) -> int:
        """Seconds until room may come back: the next expiry, at most ``FULL_RETRY_SECONDS``."""
        try:
            oldest = self.redis.zrange(SESSIONS_KEY, 0, 0, withscores=True)
        except RedisError:
            return FULL_RETRY_SECONDS
        return self._retry_after(int(oldest[0][1]) if oldest else None)

    def _retry_after(self, least_recent_ms: int | None) -> int:
        if least_recent_ms is None:
            return FULL_RETRY_SECONDS
        next_expiry = math.ceil((least_recent_ms + self._ttl_ms - self._now_ms()) / 1000)
        return max(1, min(next_expiry, FULL_RETRY_SECONDS))

    def session_quota(
        self, limit: int, window_seconds: float, exempt: Iterable[str] = ()
    ) -> RedisSessionQuota:
        """The per-client session quota, kept in this Redis so that every replica shares it."""
        from fhe_server.redis_quota import RedisSessionQuota

        return RedisSessionQuota(self, limit, window_seconds, exempt)

    # -- the store's methods ---------------------------------------------------------------
    @store_errors
    def session_ids(self) -> list[str]:
        """Ids of the sessions in the index (ones Redis expired included until purged)."""
        return sorted(self.live_ids())

    def live_ids(self) -> set[str]:
        """As ``session_ids``, as a set; a failure of Redis is raised as Redis raised it."""
        return {member.decode("ascii") for member in self.redis.zrange(SESSIONS_KEY, 0, -1)}

    def prune(self) -> list[str]:
        """Forget sessions Redis has expired and tell every replica; return their ids.

        Raises:
            redis.exceptions.RedisError: as Redis raised it.
        """
        removed = self._prune(keys=[SESSIONS_KEY], args=[PREFIX, REMOVED_CHANNEL])
        ids = [member.decode("ascii") for member in removed]
        for session_id in ids:
            logger.info("session %s removed (expired)", short_id(session_id))
        return ids

    def purge_expired(self) -> list[str]:
        """As ``prune``, for a background task: a failure of Redis is logged, nothing returned."""
        try:
            return self.prune()
        except RedisError as error:
            logger.warning("cannot purge expired sessions: %r", error)
            return []

    @store_errors
    def check_room(self, reserve_bytes: int = 0) -> None:
        """Refuse a creation before its body is read: the session count or memory is full.

        Args:
            reserve_bytes: what one session takes in Redis (its keys); refused when Redis's
                ``maxmemory`` is set and used memory plus this would pass it.

        Raises:
            ServerBusyError: with Retry-After the next expiry (at most ``FULL_RETRY_SECONDS``).
        """
        least_recent = self._room(
            keys=[SESSIONS_KEY], args=[PREFIX, REMOVED_CHANNEL, self.max_sessions]
        )
        if least_recent >= 0:
            raise ServerBusyError(
                "the server holds as many sessions as it can; retry later",
                self._retry_after(int(least_recent)),
            )
        memory = self.redis.info("memory")
        limit = int(memory.get("maxmemory", 0))
        if limit and int(memory.get("used_memory", 0)) + reserve_bytes > limit:
            raise ServerBusyError("the session store is full; retry later", self.full_retry_after())

    def recover(self) -> None:
        """At a process's start: forget the sessions Redis expired meanwhile.

        Nothing else is left behind by an interrupted process: every write is one atomic
        command or script.
        """
        self.purge_expired()

    @store_errors
    def create(self, evaluation_keys: bytes, reserve_bytes: int = 0) -> tuple[str, str]:
        """Store a new session holding the given evaluation keys.

        Sessions Redis expired are forgotten first; live sessions are never evicted.

        Args:
            evaluation_keys: the serialized evaluation keys (already checked).
            reserve_bytes: unused (Redis's memory is bounded by ``max_sessions``).

        Returns:
            (session_id, token); only the token's hash is stored.

        Raises:
            ServerBusyError: if ``max_sessions`` live sessions are stored, with Retry-After set to
                the time until the least recently used one would expire (at most
                ``FULL_RETRY_SECONDS``: a client may delete its session before), or if Redis
                is out of memory.
        """
        del reserve_bytes
        session_id, token = secrets.token_hex(16), secrets.token_urlsafe(32)
        removed = self._create(
            keys=[SESSIONS_KEY, meta_key(session_id), blob_key(session_id)],
            args=[
                PREFIX,
                REMOVED_CHANNEL,
                session_id,
                token_digest(token),
                self._now_ms(),
                self._ttl_ms,
                self.max_sessions,
                evaluation_keys,
            ],
        )
        if isinstance(removed, int):
            raise ServerBusyError(
                "the server holds as many sessions as it can; retry later",
                retry_after=self._retry_after(removed),
            )
        for other in removed:
            logger.info("session %s removed (expired)", short_id(other.decode()))
        logger.info("session %s created", short_id(session_id))
        return session_id, token

    @store_errors
    def authenticate(self, session_id: str, token: str | None) -> None:
        """As ``SessionStore.authenticate``; marking the session used renews its Redis TTL.

        A renewal that Redis refuses (full or read-only) is logged and the call goes on.
        """
        if not token:
            raise InvalidTokenError("missing bearer token")
        stored = self.redis.hget(meta_key(self._check_id(session_id)), "token_sha256")
        if stored is None:
            raise SessionNotFoundError(NOT_FOUND)
        if not hmac.compare_digest(token_digest(token).encode("ascii"), stored):
            raise InvalidTokenError("wrong token for this session")
        try:
            self._renew(
                keys=[meta_key(session_id), blob_key(session_id), SESSIONS_KEY],
                args=[self._ttl_ms, self._now_ms(), session_id],
            )
        except (OutOfMemoryError, ReadOnlyError, MasterDownError, TryAgainError) as error:
            # A renewal Redis cannot write must not fail the call: the session lives on until
            # its current TTL, and the next call renews it.
            logger.warning("session %s: TTL not renewed: %r", short_id(session_id), error)

    @store_errors
    def put_input(self, session_id: str, party: Any, data: bytes) -> int:
        """Store (or replace) one party's ciphertext; return the new inputs version.

        Raises:
            SessionNotFoundError: if the session is gone.
        """
        version = self._put_input(
            keys=[meta_key(self._check_id(session_id))], args=[self._input_field(party), data]
        )
        if version < 0:
            raise SessionNotFoundError(NOT_FOUND)
        return int(version)

    @store_errors
    def read_inputs(self, session_id: str, parties: Iterable[Any]) -> tuple[dict[Any, bytes], int]:
        """Read some parties' ciphertexts and the inputs version they belong to (one snapshot).

        Raises:
            SessionNotFoundError: if the session is gone.
            StepOutOfOrderError: if one of them has not been uploaded yet.
        """
        parties = list(parties)
        fields = ["inputs_version", *(self._input_field(party) for party in parties)]
        version, *values = self.redis.hmget(meta_key(self._check_id(session_id)), fields)
        if version is None:
            raise SessionNotFoundError(NOT_FOUND)
        missing = [
            str(getattr(party, "value", party))
            for party, value in zip(parties, values, strict=True)
            if value is None
        ]
        if missing:
            raise StepOutOfOrderError(f"upload the {', '.join(missing)} input(s) first")
        return dict(zip(parties, values, strict=True)), int(version)

    @store_errors
    def read_evaluation_keys(self, session_id: str) -> bytes:
        """Read the session's serialized evaluation keys."""
        data = self.redis.get(blob_key(self._check_id(session_id)))
        if data is None:
            raise SessionNotFoundError(NOT_FOUND)
        return data

    @store_errors
    def store_output(self, session_id: str, data: bytes, inputs_version: int) -> None:
        """Store a verdict only if ``inputs_version`` is still the session's current one.

        Raises:
            StepOutOfOrderError: if an input was replaced while the verdict was computed.
            SessionNotFoundError: if the session is gone.
        """
        result = self._store_output(
            keys=[meta_key(self._check_id(session_id))], args=[data, inputs_version]
        )
        if result < 0:
            raise SessionNotFoundError(NOT_FOUND)
        if result == 0:
            raise StepOutOfOrderError("an input changed during predict; run predict again")

    @store_errors
    def read_output(self, session_id: str) -> bytes:
        """Read the encrypted verdict of the current inputs.

        Raises:
            StepOutOfOrderError: if predict has not run since the last input was stored.
        """
        inputs_version, output_version, output = self.redis.hmget(
            meta_key(self._check_id(session_id)), ["inputs_version", "output_version", "output"]
        )
        if inputs_version is None:
            raise SessionNotFoundError(NOT_FOUND)
        if output is None or output_version != inputs_version:
            raise StepOutOfOrderError("no verdict for the current inputs: run predict first")
        return output

    @store_errors
    def delete(self, session_id: str) -> None:
        """Remove a session and everything stored for it; every replica is told."""
        self._check_id(session_id)
        self._delete(
            keys=[SESSIONS_KEY, meta_key(session_id), blob_key(session_id)],
            args=[session_id, REMOVED_CHANNEL],
        )
        logger.info("session %s removed (deleted by the client)", short_id(session_id))
