"""The per-client session quota kept in Redis, shared by every replica."""

from __future__ import annotations

import contextlib
import math
import secrets
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from fhe_server.errors import TooManySessionsError
from fhe_server.redis_errors import store_errors
from fhe_server.redis_scripts import QUOTA_SCRIPT
from fhe_server.redis_store import PREFIX

if TYPE_CHECKING:
    from fhe_server.redis_store import RedisSessionStore


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

    def _refusal(self, oldest_ms: int, now_ms: int) -> TooManySessionsError:
        return TooManySessionsError(
            f"this client opened {self.limit} sessions in the last "
            f"{self.window_seconds:g} s; retry later",
            retry_after=math.ceil((oldest_ms + self._window_ms - now_ms) / 1000),
        )

    @store_errors
    def _admit(self, key: str, slot: str, now_ms: int) -> None:
        oldest = self._take(keys=[key], args=[now_ms, self._window_ms, self.limit, slot])
        if oldest >= 0:
            raise self._refusal(oldest, now_ms)

    @store_errors
    def check(self, client: str) -> None:
        """As ``runtime.SessionQuota.check``, over the client's window kept in Redis."""
        if self.limit <= 0 or client in self.exempt:
            return
        now_ms = self.store._now_ms()
        recent = self.store.redis.zrangebyscore(
            f"{PREFIX}quota:{client}", now_ms - self._window_ms + 1, "+inf", withscores=True
        )
        if len(recent) >= self.limit:
            raise self._refusal(int(recent[0][1]), now_ms)

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
            with contextlib.suppress(RedisError):
                self.store.redis.zrem(key, slot)  # a failed creation gives its slot back
            raise
