"""Three-party sessions in Redis (``THREEPARTY_STORE_URL=redis://...``), to survive a restart.

Layout (one Redis database)::

    threeparty:session:<id>:meta   string  the session's meta (JSON, as ``meta.json`` on disk)
    threeparty:session:<id>:blobs  hash    <role>__<step>__<name> or derived__<name> -> bytes

Both keys expire at the session's end of life (its creation + ``session_lifetime_seconds``,
wall clock), so Redis forgets a session even while the server is down. Idle expiry is the
store's, as with the filesystem (``SessionStore``): a session read back at start whose last use
is older than ``session_ttl_seconds`` is dropped. Blobs go in before the meta that lists them,
and only while the session's meta is there (so no blobs outlive their session without expiry).

Redis's failures are answered 503 (busy, Retry-After), never with a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis
from redis.exceptions import RedisError

from threeparty.protocol import SESSION_ID_PATTERN, ErrorCode
from threeparty.server.errors import ServiceError

logger = logging.getLogger("threeparty.server")

PREFIX = "threeparty:session:"
RETRY_AFTER_SECONDS = 2
P = ParamSpec("P")
T = TypeVar("T")

# Add blobs with the meta's expiry; nothing when the meta is gone (deleted or expired).
_WRITE_BLOBS = """
local left = redis.call('PTTL', KEYS[1])
if left <= 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV))
redis.call('PEXPIRE', KEYS[2], left)
return 1
"""


def meta_key(session_id: str) -> str:
    """Redis key of a session's meta."""
    return f"{PREFIX}{session_id}:meta"


def blobs_key(session_id: str) -> str:
    """Redis key of a session's blobs."""
    return f"{PREFIX}{session_id}:blobs"


def _unavailable(method: Callable[Concatenate[RedisStorage, P], T]) -> Callable[..., T]:
    """Answer a ``RedisError`` as busy (503 with Retry-After)."""

    @wraps(method)
    def wrapper(self: RedisStorage, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except RedisError as error:
            logger.error("the session store (Redis) failed: %r", error)
            raise ServiceError(
                ErrorCode.busy, "the session store is unavailable", RETRY_AFTER_SECONDS
            ) from None

    return wrapper


class RedisStorage:
    """Sessions in one Redis database, a ``SessionStorage``.

    Args:
        url: ``redis://[:password@]host:port/db`` (or ``rediss://`` for TLS).
        lifetime_seconds: a session's whole life (its keys expire then).
    """

    def __init__(self, url: str, lifetime_seconds: float):
        """Connect lazily."""
        self.lifetime_seconds = lifetime_seconds
        self.redis = redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
        )
        self._write_blobs = self.redis.register_script(_WRITE_BLOBS)

    @_unavailable
    def write_blobs(self, session_id: str, prefix: str, blobs: dict[str, bytes]) -> None:
        """Add blobs as fields ``<prefix>__<name>`` of the session's hash."""
        if not blobs or not SESSION_ID_PATTERN.fullmatch(session_id):
            return
        fields: list[str | bytes] = []
        for name, data in blobs.items():
            fields += [f"{prefix}__{name}", data]
        self._write_blobs(keys=[meta_key(session_id), blobs_key(session_id)], args=fields)

    @_unavailable
    def write_meta(self, session_id: str, meta: dict[str, Any]) -> None:
        """Set the session's meta, expiring at the end of its lifetime."""
        if SESSION_ID_PATTERN.fullmatch(session_id):
            end_ms = int((float(meta["created"]) + self.lifetime_seconds) * 1000)
            self.redis.set(meta_key(session_id), json.dumps(meta).encode(), pxat=end_ms)

    @_unavailable
    def delete(self, session_id: str) -> None:
        """Forget a session."""
        if SESSION_ID_PATTERN.fullmatch(session_id):
            self.redis.delete(meta_key(session_id), blobs_key(session_id))

    @_unavailable
    def load(self) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
        """Every stored session: (its meta, {field: bytes}); unreadable ones are removed.

        Read at once (not lazily), so that a Redis failure is answered here.
        """
        found = [key.decode() for key in self.redis.scan_iter(match=f"{PREFIX}*:meta", count=100)]
        sessions = []
        for key in sorted(found):
            session_id = key[len(PREFIX) : -len(":meta")]
            if not SESSION_ID_PATTERN.fullmatch(session_id):
                continue
            data = self.redis.get(key)
            blobs = self.redis.hgetall(blobs_key(session_id))
            try:
                meta = json.loads(data) if data is not None else None
                files = {name.decode(): value for name, value in blobs.items()}
            except (UnicodeDecodeError, ValueError):
                meta = None
            if not isinstance(meta, dict):
                self.delete(session_id)
                continue
            sessions.append((meta, files))
        return iter(sessions)
