"""Each replica's listener on the Redis store: removed sessions, expiries and the store's health.

One daemon thread per replica (``RemovalListener``) subscribes to the channel on which every
replica announces the sessions it deletes, and periodically asks Redis for the sessions it
expired. It keeps two flags that ``/health`` reports: whether Redis answered the last time it was
asked, and whether the subscription is up. When the subscription comes back after a loss (Redis
restarted, maybe empty, or the connection broke), removals may have been missed meanwhile, so it
hands the ids of the sessions Redis still holds to ``on_resync`` (the replica then drops the
prepared keys of every other session).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from fhe_server.redis_store import RedisSessionStore

logger = logging.getLogger("fhe_server.redis_store")

# Seconds between two attempts to subscribe again after losing the subscription.
RECONNECT_SECONDS = 1.0


class RemovalListener:
    """The thread that follows a store's removals and watches Redis (see the module).

    Attributes:
        subscribed: whether the subscription to the removal channel is up.
        reachable: whether Redis answered the listener's last command.
    """

    def __init__(
        self,
        store: RedisSessionStore,
        channel: str,
        on_remove: Callable[[str], None],
        on_resync: Callable[[set[str]], None] | None = None,
    ):
        """Describe the listener; ``start`` runs it.

        Args:
            store: the store whose Redis it listens to.
            channel: the channel on which removed session ids are published.
            on_remove: called with every removed session's id.
            on_resync: called with the ids of the live sessions when the subscription comes
                back after a loss.
        """
        self.store = store
        self.channel = channel
        self.on_remove = on_remove
        self.on_resync = on_resync
        self.subscribed = False
        self.reachable = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fhe-redis-removed", daemon=True)
        self._lost = False

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (within a few seconds)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
        next_prune = time.monotonic()
        period = self.store.prune_seconds
        while not self._stop.is_set():
            try:
                if not pubsub.subscribed:
                    pubsub.subscribe(self.channel)
                    self._subscribed()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + period
                    self.store.prune()
                    self.reachable = True
                message = pubsub.get_message(timeout=min(1.0, period))
            except RedisError as error:
                self._lose(error)
                with contextlib.suppress(Exception):
                    pubsub.reset()
                self._stop.wait(RECONNECT_SECONDS)
                continue
            if message and message.get("type") == "message":
                self.on_remove(message["data"].decode("ascii", errors="replace"))
        with contextlib.suppress(Exception):
            pubsub.close()

    def _lose(self, error: RedisError) -> None:
        if self.subscribed or self.reachable:
            logger.warning("lost the Redis subscription (%r); retrying", error)
        self.subscribed = self.reachable = False
        self._lost = True

    def _subscribed(self) -> None:
        """The subscription is up; after a loss, drop what the replica keeps of gone sessions."""
        if self._lost and self.on_resync is not None:
            live = self.store.live_ids()
            self.on_resync(live)
            logger.warning("Redis subscription back; %d live session(s) in Redis", len(live))
        self.subscribed = self.reachable = True
        self._lost = False
