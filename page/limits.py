"""The page's limits: per-client rate limits, the live-session registry and key-folder ownership.

- ``RateLimiter``: at most N events per client address in a sliding window.
- ``client_address``: the client's IP, from X-Forwarded-For only behind trusted proxies.
- ``SessionRegistry``: every session's ``CreditScoringClient`` with its keys, capped; a reaper
  thread closes (server session and key folder) the sessions whose page never opened a heartbeat
  connection, and the sessions idle for longer than their TTL. It holds the clients strongly, so
  a session Gradio forgets (state capacity) still gets its keys deleted.
- ``KeyFolders``: this process's folder of key folders, locked while the process lives, and the
  removal at start-up of the folders of page processes that died without cleaning up.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = ".owner.lock"


class LimitExceeded(Exception):
    """A limit of the page was hit; nothing was done.

    Attributes:
        key: the translation key of the message ("err_page_full", "err_rate_keygen", ...).
        values: the message's placeholders.
    """

    def __init__(self, key: str, **values: Any) -> None:
        super().__init__(key)
        self.key = key
        self.values = values


class RateLimiter:
    """At most ``limit`` events per client in any ``window`` seconds (thread-safe).

    A ``limit`` of None counts nothing and refuses nothing (the page on loopback only).
    """

    def __init__(
        self, limit: int | None, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def acquire(self, client: str, message_key: str) -> None:
        """Count one event of ``client``.

        Raises:
            LimitExceeded: (with ``seconds``, the wait until one more is allowed) if the client
                already used its ``limit`` events in the window; then nothing is counted.
        """
        if self.limit is None:
            return
        with self._lock:
            now = self._clock()
            events = self._recent(client, now)
            if len(events) >= self.limit:
                wait = max(1, math.ceil(events[0] + self.window - now))
                raise LimitExceeded(message_key, seconds=wait)
            events.append(now)
            # Forget clients with no recent event (bounded memory under many addresses).
            if len(self._events) > 10_000:
                idle = [n for n, q in self._events.items() if not q or q[-1] <= now - self.window]
                for name in idle:
                    del self._events[name]

    def _recent(self, client: str, now: float) -> deque[float]:
        """The client's events still in the window (older ones dropped); call with the lock."""
        events = self._events.setdefault(client, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        return events

    def remaining(self, client: str) -> int | None:
        """How many more events ``client`` may start now (None: no limit)."""
        if self.limit is None:
            return None
        with self._lock:
            events = self._events.get(client)
            if events is None:
                return self.limit
            return max(0, self.limit - len(self._recent(client, self._clock())))


LOOPBACK_HOSTS = ("localhost", "::1", "[::1]")


def limits_are_local(page_limits: str, page_host: str, trusted_proxies: int) -> bool:
    """Whether the per-client rate limits are off: "local", or "auto" on loopback only.

    Args:
        page_limits: the setting: "auto", "public" or "local".
        page_host: the address the page listens on (127.x.x.x, ::1, localhost: loopback).
        trusted_proxies: proxies in front of the page; any makes "auto" public (a proxy on the
            same host makes a loopback page public).
    """
    if page_limits != "auto":
        return page_limits == "local"
    host = page_host.strip().lower()
    return trusted_proxies == 0 and (host.startswith("127.") or host in LOOPBACK_HOSTS)


class Admissions:
    """Events a check admitted (counted by its rate limit) that its step has not yet used.

    A step's check event, which has no outputs, counts the event; the step that follows takes
    the admission instead of counting again, so that a refusal marks no output box. A step
    called without its check (a script) finds no admission and counts itself. Thread-safe;
    admissions older than ``max_age`` seconds are forgotten.
    """

    def __init__(self, max_age: float = 900.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self._clock = clock
        self._admitted: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def add(self, session: str, kind: str) -> None:
        """Record one admitted event of ``kind`` for ``session``."""
        with self._lock:
            now = self._clock()
            stale = [
                key
                for key, times in self._admitted.items()
                if not times or times[-1] < now - self.max_age
            ]
            for key in stale:
                del self._admitted[key]
            self._admitted.setdefault((session, kind), []).append(now)

    def take(self, session: str, kind: str) -> bool:
        """Use one admission of ``kind`` for ``session``; False when there is none."""
        with self._lock:
            times = self._admitted.get((session, kind))
            while times and times[0] < self._clock() - self.max_age:
                times.pop(0)
            if not times:
                self._admitted.pop((session, kind), None)
                return False
            times.pop(0)
            if not times:
                del self._admitted[(session, kind)]
            return True


def client_address(headers: Mapping[str, str], peer: str | None, trusted_proxies: int) -> str:
    """The client's address for the rate limits.

    Args:
        headers: the request's headers.
        peer: the address of the connection's other end.
        trusted_proxies: how many proxies in front of the page append to X-Forwarded-For; with 0
            the header is ignored (anyone can write it), with n the n-th address from the right
            is the one the outermost trusted proxy saw.
    """
    if trusted_proxies > 0:
        lowered = {str(k).lower(): str(v) for k, v in headers.items()}
        hops = [h.strip() for h in lowered.get("x-forwarded-for", "").split(",") if h.strip()]
        if len(hops) >= trusted_proxies:
            return hops[-trusted_proxies]
    return peer or "unknown"


class ClientRates:
    """The two per-client rates (key generations, steps), their admissions and what is left.

    Args:
        keygens: key generations a client may start per window (None: no limit).
        steps: steps 2-5 a client may run per window (None: no limit).
        window: the window in seconds.
        clock: time source (monotonic seconds).
    """

    MESSAGES = {"keygen": "err_rate_keygen", "steps": "err_rate_steps"}

    def __init__(
        self,
        keygens: int | None,
        steps: int | None,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiters = {
            "keygen": RateLimiter(keygens, window, clock),
            "steps": RateLimiter(steps, window, clock),
        }
        self.admissions = Admissions(max_age=window, clock=clock)

    def admit(self, kind: str, client: str, session: str) -> None:
        """A check: count one event of ``kind`` ("keygen" or "steps") for the session's step.

        Raises:
            LimitExceeded: the client's rate limit is reached (nothing counted).
        """
        self.limiters[kind].acquire(client, self.MESSAGES[kind])
        self.admissions.add(session, kind)

    def use_admission(self, kind: str, client: str, session: str) -> None:
        """A step: use its check's admission, or count the event now (a call without check).

        Raises:
            LimitExceeded: no admission and the client's rate limit is reached.
        """
        if not self.admissions.take(session, kind):
            self.limiters[kind].acquire(client, self.MESSAGES[kind])

    def remaining(self, client: str) -> dict[str, int | None]:
        """What the client may still start now, by kind (None: no limit)."""
        return {kind: limiter.remaining(client) for kind, limiter in self.limiters.items()}


class Closable(Protocol):
    """What the registry needs of a client."""

    def close(self) -> None:
        """Delete the server session and the local keys."""


@dataclass
class _Entry:
    client: Closable
    created: float
    last_used: float
    heartbeat: bool = False


@dataclass
class SessionRegistry:
    """The live sessions holding keys, by Gradio session hash (thread-safe).

    Attributes:
        max_sessions: sessions holding keys at once (reserved slots included).
        ttl: seconds after its last step a session is closed.
        no_heartbeat_ttl: seconds after its keys a session with no heartbeat is closed.
        clock: time source (monotonic seconds).
    """

    max_sessions: int
    ttl: float
    no_heartbeat_ttl: float
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _reserved: set[str] = field(default_factory=set)
    _heartbeats: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def reserve(self, session: str) -> None:
        """Take a slot for a session about to generate keys (its own slot if it has one).

        Raises:
            LimitExceeded: "err_page_full" when every slot is taken.
        """
        with self._lock:
            if session in self._entries or session in self._reserved:
                self._reserved.add(session)
                return
            if len(self._entries) + len(self._reserved) >= self.max_sessions:
                raise LimitExceeded("err_page_full", limit=self.max_sessions)
            self._reserved.add(session)

    def has_room(self, session: str) -> bool:
        """Whether ``session`` could reserve a slot now (its own, or a free one)."""
        with self._lock:
            if session in self._entries or session in self._reserved:
                return True
            return len(self._entries) + len(self._reserved) < self.max_sessions

    def release(self, session: str) -> None:
        """Give back a reserved slot (key generation failed or finished)."""
        with self._lock:
            self._reserved.discard(session)

    def register(self, session: str, client: Closable) -> None:
        """Record a session's client with new keys (its reserved slot becomes an entry)."""
        now = self.clock()
        with self._lock:
            self._reserved.discard(session)
            previous = self._entries.get(session)
            self._entries[session] = _Entry(
                client=client,
                created=now,
                last_used=now,
                heartbeat=session in self._heartbeats,
            )
        if previous is not None and previous.client is not client:
            previous.client.close()

    def holds(self, session: str, client: Any) -> bool:
        """Whether ``client`` is the live client of ``session``; counts as the session's use."""
        with self._lock:
            entry = self._entries.get(session)
            if entry is None or entry.client is not client:
                return False
            entry.last_used = self.clock()
            return True

    def heartbeat_opened(self, session: str) -> None:
        """The page of ``session`` opened its heartbeat connection (a person's browser tab)."""
        with self._lock:
            self._heartbeats.add(session)
            entry = self._entries.get(session)
            if entry is not None:
                entry.heartbeat = True

    def end(self, session: str) -> None:
        """Close a session now (its tab was closed)."""
        with self._lock:
            entry = self._entries.pop(session, None)
            self._heartbeats.discard(session)
        if entry is not None:
            entry.client.close()

    def forget(self, client: Closable) -> None:
        """Close a client and drop the session that holds it (Gradio dropped its state)."""
        with self._lock:
            sessions = [s for s, entry in self._entries.items() if entry.client is client]
            for session in sessions:
                del self._entries[session]
        client.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def expire(self) -> int:
        """Close the sessions past their TTL or without a heartbeat in time; return how many."""
        now = self.clock()
        with self._lock:
            expired = [
                session
                for session, entry in self._entries.items()
                if now - entry.last_used > self.ttl
                or (not entry.heartbeat and now - entry.created > self.no_heartbeat_ttl)
            ]
            closing = [self._entries.pop(session) for session in expired]
            for session in expired:
                self._heartbeats.discard(session)
        for entry in closing:
            entry.client.close()
        if expired:
            logger.info("closed %d expired session(s)", len(expired))
        return len(expired)

    def close_all(self) -> None:
        """Close every session (at exit)."""
        with self._lock:
            closing = list(self._entries.values())
            self._entries.clear()
        for entry in closing:
            entry.client.close()

    def start_reaper(self) -> threading.Thread:
        """Start the daemon thread that calls expire() a few times per no-heartbeat TTL."""
        interval = max(0.5, min(self.no_heartbeat_ttl, self.ttl) / 4)

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.expire()
                except Exception:  # noqa: BLE001 - the reaper must keep running
                    logger.exception("expiring sessions failed")

        thread = threading.Thread(target=loop, name="session-reaper", daemon=True)
        thread.start()
        return thread

    def stop_reaper(self) -> None:
        """Stop the reaper thread."""
        self._stop.set()


class KeyFolders:
    """This process's folder under the keys directory, locked for as long as the process lives.

    Each page process keeps its sessions' key folders in ``<keys dir>/<its own folder>/``, with an
    exclusive lock (flock) on a file in it. The lock dies with the process, even on SIGKILL, so at
    start-up every folder whose lock can be taken belonged to a dead process and is removed.
    """

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = Path(keys_dir)
        self.root: Path | None = None
        self._lock_file: Any = None

    def open(self) -> Path:
        """Remove dead processes' folders, create and lock this process's; return it."""
        self.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        removed = remove_orphaned_key_folders(self.keys_dir)
        if removed:
            logger.info("removed %d key folder(s) left by a stopped page process", removed)
        root = self.keys_dir / f"page-{os.getpid()}-{secrets.token_hex(4)}"
        root.mkdir(mode=0o700)
        lock_file = (root / LOCK_FILE_NAME).open("w")
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.root, self._lock_file = root, lock_file
        return root

    def new_folder(self) -> Path:
        """A new random key folder path inside this process's folder (not created)."""
        if self.root is None:
            raise RuntimeError("KeyFolders.open() first")
        return self.root / secrets.token_hex(16)

    def close(self) -> None:
        """Remove this process's folder and release its lock."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        if self._lock_file is not None:
            self._lock_file.close()
        self.root, self._lock_file = None, None


def remove_orphaned_key_folders(keys_dir: Path) -> int:
    """Remove every folder in ``keys_dir`` that no living page process holds; return how many.

    A folder with a lock file is held while its lock is; a folder without one (a key folder of a
    page from before this layout) is held by nobody.
    """
    removed = 0
    for folder in sorted(Path(keys_dir).iterdir()) if Path(keys_dir).is_dir() else []:
        if not folder.is_dir() or folder.is_symlink():
            continue
        lock_path = folder / LOCK_FILE_NAME
        if lock_path.exists():
            with lock_path.open("a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a living page process holds it
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed
