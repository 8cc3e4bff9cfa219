"""The filesystem session store (the default): one directory a session, ``flock`` between processes.

``FileSessionStore`` implements ``fhe_server.session_store.SessionStore``; ``FileSessionQuota`` is
its per-client session quota, kept in the store's directory so that every worker shares it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.parties import Party
from contracts.wire import SESSION_ID_PATTERN
from fhe_server.errors import (
    InvalidTokenError,
    ServerBusyError,
    SessionNotFoundError,
    StepOutOfOrderError,
)
from fhe_server.runtime import SessionQuota
from fhe_server.session_store import short_id, token_digest

logger = logging.getLogger("fhe_server")


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the whole new content."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


@dataclass
class SessionMeta:
    """What the store keeps about a session besides its bytes.

    Attributes:
        token_sha256: hex SHA-256 of the bearer token.
        created: creation time (seconds since the epoch).
        last_used: time of the last authenticated call.
        inputs_version: bumped by every stored input.
        output_version: ``inputs_version`` the stored output was computed from (-1: none).
    """

    token_sha256: str
    created: float
    last_used: float
    inputs_version: int = 0
    output_version: int = -1


class FileSessionStore:
    """Sessions on the filesystem, one directory each, named by the session id.

    A session directory is created complete (written under a temporary name, then renamed) and
    every file in it is replaced atomically, so a crash or a restart never leaves half a session.
    Client-supplied session ids are checked against ``SESSION_ID_PATTERN`` before they are ever
    joined to a path; party names come from the ``Party`` enum.

    Several threads and several server processes (``uvicorn --workers N``) may share one store
    directory: every read-modify-write of a session holds an exclusive ``flock`` on the session's
    directory, and the store-wide bookkeeping (creating, counting and purging sessions)
    holds one on the store's root directory, always taken before any session's. A lock taken on a
    directory that was removed meanwhile is noticed (the path no longer names the locked inode)
    and the session is then unknown.
    """

    META = "meta.json"
    EVALUATION_KEYS = "evaluation_keys.bin"
    OUTPUT = "output.bin"

    def __init__(
        self,
        root: Path,
        ttl_seconds: float,
        max_sessions: int,
        disk_budget_bytes: int,
        on_remove: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        """Open (and create) a store.

        Args:
            root: directory holding the sessions.
            ttl_seconds: idle time after which a session expires.
            max_sessions: most live sessions; creating one more is refused.
            disk_budget_bytes: most bytes the sessions may take (each counted as complete).
            on_remove: called with the id of every removed session (to drop cached keys).
            clock: wall clock (seconds since the epoch), replaceable in tests.
        """
        self.root = Path(root)
        self.ttl_seconds = ttl_seconds
        self.max_sessions = max_sessions
        self.disk_budget_bytes = disk_budget_bytes
        self.on_remove = on_remove
        self.clock = clock
        self._quota: FileSessionQuota | None = None
        self.root.mkdir(parents=True, exist_ok=True)

    # -- paths (only ever from checked ids) ------------------------------------------------
    def _dir(self, session_id: str) -> Path:
        if not SESSION_ID_PATTERN.fullmatch(session_id):
            raise SessionNotFoundError("unknown or expired session")
        return self.root / session_id

    @staticmethod
    def _input_name(party: Party | str) -> str:
        return f"input_{Party(party).value}.bin"

    # -- cross-process locks ---------------------------------------------------------------
    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Hold the store-wide lock (session creation, counting, purging)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the lock

    @contextlib.contextmanager
    def _session_lock(self, session_id: str) -> Iterator[Path]:
        """Hold a session's lock; yield its directory.

        Raises:
            SessionNotFoundError: if the session does not exist (or was removed while waiting).
        """
        directory = self._dir(session_id)
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            raise SessionNotFoundError("unknown or expired session") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(directory).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(fd).st_ino:  # removed (renamed away) while we waited
                raise SessionNotFoundError("unknown or expired session")
            yield directory
        finally:
            os.close(fd)

    def session_quota(
        self, limit: int, window_seconds: float, exempt: Iterable[str] = ()
    ) -> SessionQuota:
        """The per-client session quota, kept in the store so that every worker shares it.

        The store's periodic purge also drops the quota's creation times older than its window.
        """
        self._quota = FileSessionQuota(
            self, limit=limit, window_seconds=window_seconds, exempt=exempt
        )
        return self._quota

    # -- metadata --------------------------------------------------------------------------
    def _read_meta(self, session_id: str) -> SessionMeta:
        path = self._dir(session_id) / self.META
        try:
            return SessionMeta(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise SessionNotFoundError("unknown or expired session") from None
        except (OSError, ValueError, TypeError) as error:
            logger.error("session %s has unreadable metadata: %r", short_id(session_id), error)
            raise SessionNotFoundError("unknown or expired session") from None

    def _write_meta(self, session_id: str, meta: SessionMeta) -> None:
        data = json.dumps(meta.__dict__).encode("utf-8")
        atomic_write(self._dir(session_id) / self.META, data)

    def _expired(self, meta: SessionMeta, now: float) -> bool:
        return now - meta.last_used > self.ttl_seconds

    def _live_meta(self, session_id: str) -> SessionMeta:
        """Metadata of a live session; an expired one is removed. Hold the session's lock."""
        meta = self._read_meta(session_id)
        if self._expired(meta, self.clock()):
            self._remove(session_id, reason="expired")
            raise SessionNotFoundError("unknown or expired session")
        return meta

    # -- listing, usage, removal -----------------------------------------------------------
    def session_ids(self) -> list[str]:
        """Ids of the sessions on disk (expired ones included until purged)."""
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if SESSION_ID_PATTERN.fullmatch(entry.name) and entry.is_dir()
        )

    def _session_size(self, session_id: str) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for file in (self.root / session_id).iterdir():
                with contextlib.suppress(OSError):
                    total += file.stat().st_size
        return total

    def disk_usage(self) -> int:
        """Bytes taken by the stored sessions."""
        return sum(self._session_size(session_id) for session_id in self.session_ids())

    def _remove(self, session_id: str, reason: str) -> None:
        """Remove a session: rename it away atomically, then delete the files.

        Hold the session's lock, or the store's lock with nobody else knowing the session.
        """
        directory = self._dir(session_id)
        trash = self.root / f".trash-{session_id}-{secrets.token_hex(4)}"
        try:
            os.replace(directory, trash)
        except FileNotFoundError:
            return
        if self.on_remove is not None:
            self.on_remove(session_id)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("session %s removed (%s)", short_id(session_id), reason)

    def _purge_expired(self) -> list[str]:
        """Remove every expired session; return their ids. Hold the store's lock."""
        removed = []
        for session_id in self.session_ids():
            try:
                with self._session_lock(session_id):
                    if self._expired(self._read_meta(session_id), self.clock()):
                        self._remove(session_id, reason="expired")
                        removed.append(session_id)
            except SessionNotFoundError:
                continue
        return removed

    def purge_expired(self) -> list[str]:
        """Remove every expired session (and the quota's old creation times); return their ids."""
        with self._store_lock():
            removed = self._purge_expired()
        if self._quota is not None:
            self._quota.prune()
        return removed

    def recover(self) -> None:
        """Delete what an interrupted process left and purge expired sessions (at start-up)."""
        self.clean_leftovers()
        self.purge_expired()

    def clean_leftovers(self) -> None:
        """Delete temporary files and directories left by an interrupted process.

        Safe while other processes use the store: a session being created is staged under the
        store's lock, a file being replaced under its session's lock, both held here too.
        """
        with self._store_lock():
            for entry in self.root.iterdir():
                if entry.name.startswith((".tmp-", ".trash-")):
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            entry.unlink()
            for session_id in self.session_ids():
                with contextlib.suppress(SessionNotFoundError), self._session_lock(session_id):
                    for entry in (self.root / session_id).iterdir():
                        if entry.name.startswith(".tmp-"):
                            with contextlib.suppress(OSError):
                                entry.unlink()

    def _check_room(self, reserve_bytes: int) -> None:
        """Refuse a new session if the live ones fill the session count or the disk budget.

        Each session counts for the larger of its size and ``reserve_bytes`` (what a complete
        session takes), so sessions filling up later can never push the store past its budget.
        Live sessions are never evicted to make room. Hold the store's lock.

        Raises:
            ServerBusyError: with Retry-After set to the time until the first session expires.
        """
        last_used = []
        committed = 0
        for session_id in self.session_ids():
            try:
                last_used.append(self._read_meta(session_id).last_used)
            except SessionNotFoundError:
                continue
            committed += max(self._session_size(session_id), reserve_bytes)
        if len(last_used) < self.max_sessions and (
            committed + reserve_bytes <= self.disk_budget_bytes
        ):
            return
        first_expiry = min(last_used, default=self.clock()) + self.ttl_seconds
        raise ServerBusyError(
            "the server holds as many sessions as it can; retry later",
            retry_after=math.ceil(first_expiry - self.clock()),
        )

    def check_room(self, reserve_bytes: int = 0) -> None:
        """Refuse a creation before its body is read when the store is full.

        Raises:
            ServerBusyError: as ``create`` would (expired sessions are purged first).
        """
        with self._store_lock():
            self._purge_expired()
            self._check_room(reserve_bytes)

    # -- use cases -------------------------------------------------------------------------
    def create(self, evaluation_keys: bytes, reserve_bytes: int = 0) -> tuple[str, str]:
        """Store a new session holding the given evaluation keys.

        Args:
            evaluation_keys: the serialized evaluation keys (already checked).
            reserve_bytes: disk space one complete session takes (at least the keys' size).

        Returns:
            (session_id, token); only the token's hash is stored.

        Raises:
            ServerBusyError: if the store is full (expired sessions are purged first).
        """
        session_id, token = secrets.token_hex(16), secrets.token_urlsafe(32)
        now = self.clock()
        meta = SessionMeta(token_sha256=token_digest(token), created=now, last_used=now)
        # Room is checked before the keys are staged, so the store never holds more than its
        # budget, not even for the moment between staging and renaming.
        with self._store_lock():
            self._purge_expired()
            self._check_room(max(reserve_bytes, len(evaluation_keys)))
            staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-"))
            try:
                atomic_write(staging / self.EVALUATION_KEYS, evaluation_keys)
                atomic_write(staging / self.META, json.dumps(meta.__dict__).encode("utf-8"))
                os.replace(staging, self._dir(session_id))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        logger.info("session %s created", short_id(session_id))
        return session_id, token

    def authenticate(self, session_id: str, token: str | None) -> None:
        """Check that a session is live and that the token is its own; mark it used.

        Raises:
            InvalidTokenError: missing or wrong token.
            SessionNotFoundError: unknown, expired or malformed session id.
        """
        if not token:
            raise InvalidTokenError("missing bearer token")
        with self._session_lock(session_id):
            meta = self._live_meta(session_id)
            if not hmac.compare_digest(token_digest(token), meta.token_sha256):
                raise InvalidTokenError("wrong token for this session")
            meta.last_used = self.clock()
            self._write_meta(session_id, meta)

    def put_input(self, session_id: str, party: Party, data: bytes) -> None:
        """Store (or replace) one party's ciphertext; any stored output becomes stale."""
        with self._session_lock(session_id) as directory:
            meta = self._live_meta(session_id)
            atomic_write(directory / self._input_name(party), data)
            meta.inputs_version += 1
            self._write_meta(session_id, meta)
            with contextlib.suppress(FileNotFoundError):
                (directory / self.OUTPUT).unlink()

    def read_inputs(
        self, session_id: str, parties: Iterable[Party]
    ) -> tuple[dict[Party, bytes], int]:
        """Read some parties' ciphertexts and the inputs version they belong to.

        Raises:
            StepOutOfOrderError: if one of them has not been uploaded yet.
        """
        parties = list(parties)
        with self._session_lock(session_id) as directory:
            meta = self._live_meta(session_id)
            found = {}
            for party in parties:
                with contextlib.suppress(FileNotFoundError):
                    found[party] = (directory / self._input_name(party)).read_bytes()
        missing = [party.value for party in parties if party not in found]
        if missing:
            raise StepOutOfOrderError(f"upload the {', '.join(missing)} input(s) first")
        return found, meta.inputs_version

    def read_evaluation_keys(self, session_id: str) -> bytes:
        """Read the session's serialized evaluation keys (written once, never changed)."""
        try:
            return (self._dir(session_id) / self.EVALUATION_KEYS).read_bytes()
        except FileNotFoundError:
            raise SessionNotFoundError("unknown or expired session") from None

    def store_output(self, session_id: str, data: bytes, inputs_version: int) -> None:
        """Store an encrypted verdict computed from the inputs of ``inputs_version``.

        Compare-and-set: the version is checked and the verdict written under the session's
        lock, which every upload also holds. A session in use does not expire during the
        request: it only has to be still on disk (not yet purged), and storing the verdict
        counts as a use.

        Raises:
            StepOutOfOrderError: if an input was replaced while the verdict was computed.
            SessionNotFoundError: if the session was deleted or purged meanwhile.
        """
        with self._session_lock(session_id) as directory:
            meta = self._read_meta(session_id)
            if meta.inputs_version != inputs_version:
                raise StepOutOfOrderError("an input changed during predict; run predict again")
            atomic_write(directory / self.OUTPUT, data)
            meta.output_version = inputs_version
            meta.last_used = self.clock()
            self._write_meta(session_id, meta)

    def read_output(self, session_id: str) -> bytes:
        """Read the encrypted verdict of the current inputs.

        Raises:
            StepOutOfOrderError: if predict has not run since the last input was stored.
        """
        with self._session_lock(session_id) as directory:
            meta = self._live_meta(session_id)
            if meta.output_version == meta.inputs_version:
                with contextlib.suppress(FileNotFoundError):
                    return (directory / self.OUTPUT).read_bytes()
        raise StepOutOfOrderError("no verdict for the current inputs: run predict first")

    def delete(self, session_id: str) -> None:
        """Remove a session and everything stored for it."""
        with self._session_lock(session_id):
            self._remove(session_id, reason="deleted by the client")


class FileSessionQuota(SessionQuota):
    """The session quota of a filesystem store, shared by the processes using that store.

    The clients' creation times are one small JSON file in the store's root, read and rewritten
    under the store's lock (written only for clients that have a quota).
    """

    FILE = ".session_quota.json"

    def __init__(self, store: FileSessionStore, **kwargs: Any):
        """Create the quota of ``store`` (``kwargs`` as for ``SessionQuota``)."""
        super().__init__(clock=store.clock, **kwargs)
        self.store = store
        self.path = store.root / self.FILE

    def prune(self) -> None:
        """Drop the creation times older than the window (and the clients left with none)."""
        if self.path.exists():
            with self._windows():
                pass

    @contextlib.contextmanager
    def _windows(self) -> Iterator[dict[str, deque[float]]]:
        with self._lock, self.store._store_lock():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
                windows = {str(c): deque(float(t) for t in times) for c, times in saved.items()}
            except (FileNotFoundError, ValueError, TypeError, AttributeError):
                windows = {}
            yield windows
            self._sweep(windows, self.clock())
            data = {client: list(times) for client, times in windows.items()}
            atomic_write(self.path, json.dumps(data).encode("utf-8"))
