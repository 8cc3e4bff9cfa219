"""Per-process runtime pieces: the cache of prepared evaluation keys and the FHE worker gate."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from fhe_server.errors import ServerBusyError

T = TypeVar("T")


class KeyCache:
    """A small thread-safe LRU of prepared (deserialized) evaluation keys, by session id."""

    def __init__(self, capacity: int):
        """Create a cache holding at most ``capacity`` key sets (0 disables it)."""
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, session_id: object) -> bool:
        """Whether keys of this session are cached."""
        with self._lock:
            return session_id in self._items

    def __len__(self) -> int:
        """Number of cached key sets."""
        with self._lock:
            return len(self._items)

    def get(self, session_id: str) -> Any | None:
        """Return the cached keys (and mark them recently used), or None."""
        with self._lock:
            keys = self._items.get(session_id)
            if keys is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(session_id)
            return keys

    def put(self, session_id: str, keys: Any) -> None:
        """Cache a session's keys, evicting the least recently used beyond capacity."""
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[session_id] = keys
            self._items.move_to_end(session_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def discard(self, session_id: str) -> None:
        """Forget a session's keys."""
        with self._lock:
            self._items.pop(session_id, None)


class FHEGate:
    """Runs FHE jobs in worker threads, at most ``max_concurrent`` at once.

    At most ``max_waiting`` more may wait for a thread; beyond that ``ServerBusyError`` is raised at
    once instead of piling requests up. Create it inside the event loop (in the lifespan).
    """

    def __init__(self, max_concurrent: int, max_waiting: int):
        """Create the gate."""
        self.max_concurrent = max_concurrent
        self.capacity = max_concurrent + max_waiting
        self.admitted = 0  # only touched from the event loop thread
        self._limiter = anyio.CapacityLimiter(max_concurrent)
        self._mean_seconds = 1.0

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the queue ahead, at the mean job time."""
        rounds = math.ceil(self.admitted / self.max_concurrent)
        return max(1, math.ceil(rounds * self._mean_seconds))

    async def run(self, func: Callable[[], T]) -> T:
        """Run ``func`` in a worker thread once a slot is free.

        Raises:
            ServerBusyError: if the running and waiting jobs already fill the queue.
        """
        if self.admitted >= self.capacity:
            raise ServerBusyError(
                "the FHE queue is full; retry later", retry_after=self.retry_after()
            )
        self.admitted += 1
        start = time.perf_counter()
        try:
            return await anyio.to_thread.run_sync(func, limiter=self._limiter)
        finally:
            self.admitted -= 1
            self._mean_seconds = 0.7 * self._mean_seconds + 0.3 * (time.perf_counter() - start)
