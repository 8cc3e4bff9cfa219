"""Sessions in Redis, shared by every replica of the server (``FHE_STORE_URL=redis://...``).

Layout (one Redis database, a single instance: the scripts touch keys they compute, which Redis
Cluster would refuse)::

    fhe:session:<id>   hash    token_sha256, created, inputs_version, output_version,
                               input:<party> (ciphertexts), output (encrypted verdict)
    fhe:keys:<id>      string  the serialized evaluation keys (about 15 MB)
    fhe:sessions       zset    session id -> last use (ms), for max_sessions
    fhe:removed        channel ids of deleted or expired sessions

Every change to a session is one Lua script or one command, so it is atomic across replicas:
an upload increments ``inputs_version`` in Redis, and a verdict is stored only if the inputs
version it was computed from is still the current one (compare-and-set). Expiry is Redis's own
TTL on both keys, renewed by every authenticated call; when ``max_sessions`` live sessions are
stored, a new one is refused (503), never made room for by evicting one. Each replica subscribes
to ``fhe:removed`` and drops its prepared keys of a session as soon as any replica deletes it, or
notices (at its periodic purge) that Redis expired it.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fhe_server.errors import (
    InvalidTokenError,
    ServerBusyError,
    SessionNotFoundError,
    StepOutOfOrderError,
    TooManySessionsError,
)
from fhe_server.protocol import SESSION_ID_PATTERN
from fhe_server.stores import short_id, token_digest

logger = logging.getLogger("fhe_server.redis_store")

PREFIX = "fhe:"
SESSIONS_KEY = PREFIX + "sessions"
REMOVED_CHANNEL = PREFIX + "removed"
NOT_FOUND = "unknown or expired session"
# Seconds a client is asked to wait when Redis cannot be reached or is full.
STORE_RETRY_AFTER_SECONDS = 2
# How often each replica looks for sessions Redis expired (to announce them to every replica).
PRUNE_SECONDS = 5.0

P = ParamSpec("P")
T = TypeVar("T")


def meta_key(session_id: str) -> str:
    """Redis key of a session's hash (metadata, inputs and output)."""
    return f"{PREFIX}session:{session_id}"


def blob_key(session_id: str) -> str:
    """Redis key of a session's serialized evaluation keys."""
    return f"{PREFIX}keys:{session_id}"


def _store_errors(method: Callable[P, T]) -> Callable[P, T]:
    """Turn Redis being down or out of memory into a 503 instead of an unexpected 500."""

    @wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as error:
            logger.error("Redis unreachable: %r", error)
            raise ServerBusyError(
                "the session store is unreachable; retry later", STORE_RETRY_AFTER_SECONDS
            ) from None
        except ResponseError as error:
            if "OOM" not in str(error):
                raise
            logger.error("Redis is full: %s", error)
            raise ServerBusyError(
                "the session store is full; retry later", STORE_RETRY_AFTER_SECONDS
            ) from None

    return wrapper


# Lua: forget (and announce) the sessions of the index whose hash Redis has expired.
# KEYS[1] index; ARGV[1] key prefix, ARGV[2] channel. Leaves `removed` (a table) defined.
_PRUNE = """
local removed = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[1] .. 'session:' .. sid) == 0 then
    redis.call('ZREM', KEYS[1], sid)
    redis.call('DEL', ARGV[1] .. 'keys:' .. sid)
    redis.call('PUBLISH', ARGV[2], sid)
    table.insert(removed, sid)
  end
end
"""

PRUNE_SCRIPT = _PRUNE + "return removed\n"

# Lua: create a session unless the live ones fill max_sessions (live sessions are never
# evicted). KEYS: index, new hash, new keys blob.
# ARGV: prefix, channel, id, token hash, now (ms), ttl (ms), max sessions, evaluation keys.
# Returns the ids of the expired sessions it forgot, or, when full, the last use (ms) of the
# least recently used live session (a number).
CREATE_SCRIPT = (
    _PRUNE
    + """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[7]) then
  return tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
end
redis.call('SET', KEYS[3], ARGV[8], 'PX', ARGV[6])
redis.call('HSET', KEYS[2], 'token_sha256', ARGV[4], 'created', ARGV[5],
           'inputs_version', 0, 'output_version', -1)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[3])
return removed
"""
)

# Lua: store one party's ciphertext, bump the inputs version, drop the now stale verdict.
# KEYS: hash. ARGV: field, ciphertext. Returns the new version, or -1 for no such session.
PUT_INPUT_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[1], 'output')
redis.call('HSET', KEYS[1], 'output_version', -1)
return redis.call('HINCRBY', KEYS[1], 'inputs_version', 1)
"""

# Lua: compare-and-set of the verdict. KEYS: hash. ARGV: output, inputs version it came from.
# Returns 1 stored, 0 the inputs changed meanwhile, -1 no such session.
STORE_OUTPUT_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'inputs_version')
if not current then return -1 end
if tonumber(current) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'output', ARGV[1], 'output_version', ARGV[2])
return 1
"""

# Lua: take one of a client's session slots in its sliding window (shared by every replica).
# KEYS: the client's slots (zset). ARGV: now (ms), window (ms), limit, slot id.
# Returns -1 when a slot was taken, else the time (ms) of the client's oldest slot.
QUOTA_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return -1
"""

# Lua: delete a session and announce it. KEYS: index, hash, blob. ARGV: id, channel.
DELETE_SCRIPT = """
local gone = redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
if gone > 0 then redis.call('PUBLISH', ARGV[2], ARGV[1]) end
return gone
"""


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
    ):
        """Connect to Redis (lazily) and, with ``on_remove``, listen for removed sessions.

        Args:
            url: ``redis://[:password@]host:port/db`` (or ``rediss://`` for TLS).
            ttl_seconds: idle expiry of a session.
            max_sessions: most sessions kept in Redis.
            on_remove: called with the id of every session removed by any replica or expired.
            clock: wall clock (seconds since the epoch), for the least-recently-used order.
            prune_seconds: with ``on_remove``, how often to look for sessions Redis expired.
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
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        if on_remove is not None:
            self._listener = threading.Thread(
                target=self._listen, name="fhe-redis-removed", daemon=True
            )
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

    def _listen(self) -> None:
        """Call ``on_remove`` for every id published on the channel; reconnect after failures.

        Every ``prune_seconds`` it also looks for sessions Redis expired, whose ids are then
        published to every replica.
        """
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        next_prune = time.monotonic()
        while not self._stop.is_set():
            try:
                if not pubsub.subscribed:
                    pubsub.subscribe(REMOVED_CHANNEL)
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.prune_seconds
                    self.purge_expired()
                message = pubsub.get_message(timeout=min(1.0, self.prune_seconds))
            except (RedisConnectionError, RedisTimeoutError) as error:
                logger.warning("lost the Redis subscription (%r); retrying", error)
                with contextlib.suppress(Exception):
                    pubsub.reset()
                self._stop.wait(1.0)
                continue
            if message and message.get("type") == "message" and self.on_remove is not None:
                session_id = message["data"].decode("ascii", errors="replace")
                self.on_remove(session_id)
        with contextlib.suppress(Exception):
            pubsub.close()

    def close(self) -> None:
        """Stop listening and close the connections."""
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        self.redis.close()

    def session_quota(
        self, limit: int, window_seconds: float, exempt: Iterable[str] = ()
    ) -> RedisSessionQuota:
        """The per-client session quota, kept in this Redis so that every replica shares it."""
        return RedisSessionQuota(self, limit, window_seconds, exempt)

    # -- the store's methods ---------------------------------------------------------------
    @_store_errors
    def session_ids(self) -> list[str]:
        """Ids of the sessions in the index (ones Redis expired included until purged)."""
        return sorted(member.decode("ascii") for member in self.redis.zrange(SESSIONS_KEY, 0, -1))

    def purge_expired(self) -> list[str]:
        """Forget sessions Redis has expired and tell every replica; return their ids.

        A background task: while Redis cannot be reached it logs and returns nothing.
        """
        try:
            removed = self._prune(keys=[SESSIONS_KEY], args=[PREFIX, REMOVED_CHANNEL])
        except (RedisConnectionError, RedisTimeoutError) as error:
            logger.warning("cannot purge expired sessions, Redis unreachable: %r", error)
            return []
        ids = [member.decode("ascii") for member in removed]
        for session_id in ids:
            logger.info("session %s removed (expired)", short_id(session_id))
        return ids

    def recover(self) -> None:
        """At a process's start: forget the sessions Redis expired meanwhile.

        Nothing else is left behind by an interrupted process: every write is one atomic
        command or script.
        """
        self.purge_expired()

    @_store_errors
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
                the time until the least recently used one would expire.
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
            first_expiry_ms = removed + self._ttl_ms
            raise ServerBusyError(
                "the server holds as many sessions as it can; retry later",
                retry_after=math.ceil((first_expiry_ms - self._now_ms()) / 1000),
            )
        for other in removed:
            logger.info("session %s removed (expired)", short_id(other.decode()))
        logger.info("session %s created", short_id(session_id))
        return session_id, token

    @_store_errors
    def authenticate(self, session_id: str, token: str | None) -> None:
        """As ``SessionStore.authenticate``; marking the session used renews its Redis TTL."""
        if not token:
            raise InvalidTokenError("missing bearer token")
        stored = self.redis.hget(meta_key(self._check_id(session_id)), "token_sha256")
        if stored is None:
            raise SessionNotFoundError(NOT_FOUND)
        if not hmac.compare_digest(token_digest(token).encode("ascii"), stored):
            raise InvalidTokenError("wrong token for this session")
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.pexpire(meta_key(session_id), self._ttl_ms)
            pipe.pexpire(blob_key(session_id), self._ttl_ms)
            pipe.zadd(SESSIONS_KEY, {session_id: self._now_ms()}, xx=True)
            pipe.execute()

    @_store_errors
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

    @_store_errors
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

    @_store_errors
    def read_evaluation_keys(self, session_id: str) -> bytes:
        """Read the session's serialized evaluation keys."""
        data = self.redis.get(blob_key(self._check_id(session_id)))
        if data is None:
            raise SessionNotFoundError(NOT_FOUND)
        return data

    @_store_errors
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

    @_store_errors
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

    @_store_errors
    def delete(self, session_id: str) -> None:
        """Remove a session and everything stored for it; every replica is told."""
        self._check_id(session_id)
        self._delete(
            keys=[SESSIONS_KEY, meta_key(session_id), blob_key(session_id)],
            args=[session_id, REMOVED_CHANNEL],
        )
        logger.info("session %s removed (deleted by the client)", short_id(session_id))


class RedisSessionQuota:
    """``runtime.SessionQuota`` kept in Redis: one sliding window per client for all replicas.

    Without it each replica would count alone, and a client whose creations nginx spreads over
    N replicas could open N times its quota.
    """

    def __init__(
        self, store: RedisSessionStore, limit: int, window_seconds: float, exempt: Iterable[str]
    ):
        """Create the quota (see ``RedisSessionStore.session_quota``)."""
        self.store = store
        self.limit = limit
        self.window_seconds = window_seconds
        self.exempt = frozenset(exempt)
        self._window_ms = max(1, int(window_seconds * 1000))
        self._take = store.redis.register_script(QUOTA_SCRIPT)

    @_store_errors
    def _admit(self, key: str, slot: str, now_ms: int) -> None:
        oldest = self._take(keys=[key], args=[now_ms, self._window_ms, self.limit, slot])
        if oldest >= 0:
            raise TooManySessionsError(
                f"this client opened {self.limit} sessions in the last "
                f"{self.window_seconds:g} s; retry later",
                retry_after=math.ceil((oldest + self._window_ms - now_ms) / 1000),
            )

    @contextlib.contextmanager
    def admit(self, client: str) -> Iterator[None]:
        """Take one of the client's slots for the duration of a creation; keep it on success.

        Raises:
            TooManySessionsError: with Retry-After set to when the client's oldest slot frees.
            ServerBusyError: if Redis cannot be reached.
        """
        if self.limit <= 0 or client in self.exempt:
            yield
            return
        key, slot = f"{PREFIX}quota:{client}", secrets.token_hex(8)
        self._admit(key, slot, self.store._now_ms())
        try:
            yield
        except BaseException:
            with contextlib.suppress(redis.exceptions.RedisError):
                self.store.redis.zrem(key, slot)  # a failed creation gives its slot back
            raise
