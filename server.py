"""The FHE scoring server: a REST API over ciphertexts and evaluation keys (``uvicorn server:app``).

The server never sees a clear value. A client opens a session by uploading its evaluation keys,
each party uploads its own ciphertext, the server runs the decision tree on them and keeps the
encrypted verdict, which only the client can decrypt.

Contract (also at ``/docs``)::

    GET    /health                                -> 200 {"status", "api_version", "model"}
    POST   /sessions                              body: evaluation keys (octet-stream)
                                                  -> 201 {"session_id", "token", "expires_in"}
    PUT    /sessions/{session_id}/inputs/{party}  body: that party's ciphertext -> 204
    POST   /sessions/{session_id}/predict         -> 200 {"fhe_execution_time": seconds}
    GET    /sessions/{session_id}/output          -> 200 octet-stream: the encrypted verdict
    POST   /sessions/{session_id}/explain         body: ciphertext of the candidate rows
                                                  -> 200 octet-stream, header X-FHE-Execution-Time
    DELETE /sessions/{session_id}                 -> 204

Every call under ``/sessions/{session_id}`` needs ``Authorization: Bearer <token>``. Errors are
JSON ``{"detail": "..."}``: 401 missing or wrong token, 404 unknown or expired session, 409 a step
out of order, 413 a body over its limit, 422 bytes that are not what the route expects or an
unknown party, 503 (with Retry-After) when the FHE queue is full.

Layers: ``FHEModel`` (the loaded deployment: checks and runs ciphertexts), ``SessionStore``
(sessions on disk, atomic writes), ``KeyCache`` (prepared evaluation keys, LRU), ``FHEGate``
(bounded worker threads for FHE) and ``ScoringService`` (the use cases the routes call).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import platform
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from concrete import fhe
from fastapi import Depends, FastAPI, Request, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

import settings
from settings import ServerSettings, get_settings

logger = logging.getLogger("fhe_server")

API_VERSION = "1"
SERVER_ARTIFACT_NAME = settings.SERVER_ARTIFACT_PATH.name
MODEL_CARD_NAME = settings.MODEL_CARD_PATH.name
# Session ids are secrets.token_hex(16): 128 random bits. Anything else is never a path.
SESSION_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
# Room kept for the encrypted outputs when checking the disk budget before creating a session.
OUTPUT_RESERVE_BYTES = 64 * 1024
EXECUTION_TIME_HEADER = "X-FHE-Execution-Time"

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Errors: each one is the client's doing (or a full queue) and maps to one HTTP status
# ---------------------------------------------------------------------------------------------
class ServiceError(Exception):
    """An error answered with ``status_code`` and ``{"detail": str(error)}``."""

    status_code = status.HTTP_400_BAD_REQUEST

    def headers(self) -> dict[str, str] | None:
        """Extra response headers."""
        return None


class IncompleteBodyError(ServiceError):
    """The client went away before the end of its request body (nobody reads the answer)."""

    status_code = status.HTTP_400_BAD_REQUEST


class InvalidTokenError(ServiceError):
    """Missing or wrong bearer token."""

    status_code = status.HTTP_401_UNAUTHORIZED

    def headers(self) -> dict[str, str] | None:
        """Tell the client which authentication scheme to use."""
        return {"WWW-Authenticate": "Bearer"}


class SessionNotFoundError(ServiceError):
    """Unknown, expired, evicted or deleted session (or a malformed session id)."""

    status_code = status.HTTP_404_NOT_FOUND


class StepOutOfOrderError(ServiceError):
    """A step was asked for before the steps it depends on."""

    status_code = status.HTTP_409_CONFLICT


class PayloadTooLargeError(ServiceError):
    """A request body over its configured limit."""

    status_code = status.HTTP_413_CONTENT_TOO_LARGE


class InvalidPayloadError(ServiceError):
    """Bytes that are not what the route expects (wrong length, header or encoding)."""

    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT


class ServerBusyError(ServiceError):
    """Too many FHE computations running and waiting; retry later."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE

    def __init__(self, message: str, retry_after: int):
        """Build the error with the number of seconds the client should wait."""
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str] | None:
        """Tell the client when to retry."""
        return {"Retry-After": str(self.retry_after)}


class Party(StrEnum):
    """The parties whose ciphertexts a session holds."""

    applicant = "applicant"
    bank = "bank"
    credit_bureau = "credit_bureau"


# ---------------------------------------------------------------------------------------------
# The model: deployment files, version check, wire-format check, FHE runs
# ---------------------------------------------------------------------------------------------
def installed_versions() -> dict[str, str]:
    """Versions of what the artifacts depend on, as installed here."""
    found = {"python": platform.python_version()}
    for package in ("concrete-python", "concrete-ml"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def version_mismatches(built: dict[str, Any], installed: dict[str, str]) -> list[str]:
    """Describe each difference between the versions the artifacts were built with and ours.

    Python must match on major.minor, concrete-python and concrete-ml exactly.
    """
    problems = []
    for name in ("python", "concrete-python", "concrete-ml"):
        want, have = str(built.get(name, "missing")), installed.get(name, "not installed")
        same = want.split(".")[:2] == have.split(".")[:2] if name == "python" else want == have
        if not same:
            problems.append(f"{name}: artifacts built with {want}, installed {have}")
    return problems


@dataclass(frozen=True)
class WireFormat:
    """Exact byte length and fixed leading bytes of one serialized input or key set."""

    length: int
    prefix: bytes

    def check(self, data: bytes, what: str) -> None:
        """Reject bytes that cannot be this object, before any native deserializer sees them.

        Raises:
            InvalidPayloadError: if the length or the header differ.
        """
        if len(data) != self.length:
            raise InvalidPayloadError(
                f"{what} must be exactly {self.length} bytes for this model, got {len(data)}"
            )
        if not data.startswith(self.prefix):
            raise InvalidPayloadError(f"{what} does not have this model's serialization header")


class FHEModel:
    """The deployed FHE module (``fhe.Server``) and its model card."""

    def __init__(self, server: Any, card: dict[str, Any]):
        """Wrap a loaded ``fhe.Server`` and its model card (use ``FHEModel.load``)."""
        self.server = server
        self.card = card
        self.wire = {
            name: WireFormat(length=int(spec["bytes"]), prefix=bytes.fromhex(spec["prefix_hex"]))
            for name, spec in card["wire_format"].items()
        }

    @classmethod
    def load(cls, deployment_dir: Path) -> FHEModel:
        """Load the server artifact and the model card, refusing anything unusable.

        Raises:
            RuntimeError: with an explanation if a file is missing or unreadable, or if the
                artifacts were built with other library versions than the installed ones.
        """
        deployment_dir = Path(deployment_dir)
        artifact, card_path = (
            deployment_dir / SERVER_ARTIFACT_NAME,
            deployment_dir / MODEL_CARD_NAME,
        )
        missing = [str(path) for path in (artifact, card_path) if not path.is_file()]
        if missing:
            raise RuntimeError(
                f"deployment files missing: {', '.join(missing)}; "
                "regenerate them with `python -m development.train`"
            )
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
            built = card["versions"]
            wire = card["wire_format"]
            needed = {"evaluation_keys", "candidates", *settings.PARTIES}
            if not isinstance(built, dict) or not needed <= set(wire):
                raise KeyError(f"wire_format needs {sorted(needed)}")
            for spec in wire.values():
                int(spec["bytes"]), bytes.fromhex(spec["prefix_hex"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RuntimeError(f"model card {card_path} is unreadable: {error!r}") from error
        problems = version_mismatches(built, installed_versions())
        if problems:
            raise RuntimeError(
                "refusing to start: the deployment files were built with other library versions ("
                + "; ".join(problems)
                + "). Install the versions they were built with, or rebuild them with "
                "`python -m development.train`."
            )
        try:
            server = fhe.Server.load(artifact)
        except Exception as error:  # the native loader raises several types
            raise RuntimeError(
                f"cannot load the FHE server artifact {artifact}: {error}"
            ) from error
        return cls(server=server, card=card)

    def summary(self) -> dict[str, Any]:
        """What /health tells about the model."""
        return {
            "versions": self.card["versions"],
            "parameters": self.card.get("parameters", {}),
            "input_shapes": self.card.get("input_shapes", {}),
        }

    def session_reserve_bytes(self) -> int:
        """Disk space one full session can take (keys, every input and the outputs)."""
        return (
            self.wire["evaluation_keys"].length
            + sum(self.wire[party].length for party in settings.PARTIES)
            + OUTPUT_RESERVE_BYTES
        )

    def evaluation_keys(self, data: bytes) -> Any:
        """Check and deserialize ("prepare") evaluation keys.

        Raises:
            InvalidPayloadError: if the bytes are not evaluation keys of this model.
        """
        self.wire["evaluation_keys"].check(data, "evaluation keys")
        try:
            return fhe.EvaluationKeys.deserialize(data)
        except (RuntimeError, MemoryError) as error:
            raise InvalidPayloadError("the evaluation keys do not deserialize") from error

    def value(self, name: str, data: bytes) -> Any:
        """Check and deserialize one ciphertext (``name`` is a party or "candidates").

        Raises:
            InvalidPayloadError: if the bytes are not a ciphertext of that input's shape.
        """
        what = f"the {name} ciphertext"
        self.wire[name].check(data, what)
        try:
            return fhe.Value.deserialize(data)
        except (RuntimeError, MemoryError) as error:
            raise InvalidPayloadError(f"{what} does not deserialize") from error

    def run(
        self, function_name: str, values: list[Any], evaluation_keys: Any
    ) -> tuple[bytes, float]:
        """Run one function of the module; return the serialized result and the run time.

        Raises:
            InvalidPayloadError: if the native runtime rejects the ciphertexts or keys.
        """
        start = time.perf_counter()
        try:
            result = self.server.run(
                *values, evaluation_keys=evaluation_keys, function_name=function_name
            )
        except (RuntimeError, MemoryError) as error:
            logger.warning("FHE %s rejected the session's inputs: %s", function_name, error)
            raise InvalidPayloadError(
                "the ciphertexts cannot be evaluated with this session's evaluation keys"
            ) from error
        elapsed = time.perf_counter() - start
        return result.serialize(), elapsed


# ---------------------------------------------------------------------------------------------
# Storage: one directory a session, atomic writes, expiry and eviction
# ---------------------------------------------------------------------------------------------
def token_digest(token: str) -> str:
    """SHA-256 of a token (the only form in which tokens are stored)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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


def short_id(session_id: str) -> str:
    """First characters of a session id, enough for logs."""
    return session_id[:8]


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


class SessionStore:
    """Sessions on the filesystem, one directory each, named by the session id.

    A session directory is created complete (written under a temporary name, then renamed) and
    every file in it is replaced atomically, so a crash or a restart never leaves half a session.
    Client-supplied session ids are checked against ``SESSION_ID_PATTERN`` before they are ever
    joined to a path; party names come from the ``Party`` enum.
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
            max_sessions: most sessions kept; creating one more evicts the least recently used.
            disk_budget_bytes: most bytes the sessions may take; least recently used evicted.
            on_remove: called with the id of every removed session (to drop cached keys).
            clock: wall clock (seconds since the epoch), replaceable in tests.
        """
        self.root = Path(root)
        self.ttl_seconds = ttl_seconds
        self.max_sessions = max_sessions
        self.disk_budget_bytes = disk_budget_bytes
        self.on_remove = on_remove
        self.clock = clock
        self._lock = threading.RLock()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- paths (only ever from checked ids) ------------------------------------------------
    def _dir(self, session_id: str) -> Path:
        if not SESSION_ID_PATTERN.fullmatch(session_id):
            raise SessionNotFoundError("unknown or expired session")
        return self.root / session_id

    @staticmethod
    def _input_name(party: Party | str) -> str:
        return f"input_{Party(party).value}.bin"

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
        """Metadata of a live session; an expired one is removed. Call with the lock held."""
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

    def disk_usage(self) -> int:
        """Bytes taken by the stored sessions."""
        total = 0
        for session_id in self.session_ids():
            for file in (self.root / session_id).iterdir():
                with contextlib.suppress(OSError):
                    total += file.stat().st_size
        return total

    def _remove(self, session_id: str, reason: str) -> None:
        """Remove a session: rename it away atomically, then delete the files."""
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

    def purge_expired(self) -> list[str]:
        """Remove every expired session; return their ids."""
        removed = []
        with self._lock:
            now = self.clock()
            for session_id in self.session_ids():
                try:
                    meta = self._read_meta(session_id)
                except SessionNotFoundError:
                    continue
                if self._expired(meta, now):
                    self._remove(session_id, reason="expired")
                    removed.append(session_id)
        return removed

    def clean_leftovers(self) -> None:
        """Delete temporary files and directories left by an interrupted process."""
        with self._lock:
            for entry in self.root.iterdir():
                if entry.name.startswith((".tmp-", ".trash-")):
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            entry.unlink()
            for session_id in self.session_ids():
                for entry in (self.root / session_id).iterdir():
                    if entry.name.startswith(".tmp-"):
                        with contextlib.suppress(OSError):
                            entry.unlink()

    def _make_room(self, needed_bytes: int) -> None:
        """Evict least recently used sessions until one more of ``needed_bytes`` fits."""
        metas = []
        for session_id in self.session_ids():
            try:
                metas.append((self._read_meta(session_id).last_used, session_id))
            except SessionNotFoundError:
                continue
        metas.sort()
        usage = self.disk_usage()
        while metas and (
            len(metas) >= self.max_sessions or usage + needed_bytes > self.disk_budget_bytes
        ):
            _, oldest = metas.pop(0)
            size = sum(f.stat().st_size for f in (self.root / oldest).iterdir() if f.is_file())
            self._remove(oldest, reason="evicted to make room")
            usage -= size

    # -- use cases -------------------------------------------------------------------------
    def create(self, evaluation_keys: bytes, reserve_bytes: int = 0) -> tuple[str, str]:
        """Store a new session holding the given evaluation keys.

        Args:
            evaluation_keys: the serialized evaluation keys (already checked).
            reserve_bytes: disk space to make room for (at least the keys' size).

        Returns:
            (session_id, token); only the token's hash is stored.
        """
        session_id, token = secrets.token_hex(16), secrets.token_urlsafe(32)
        now = self.clock()
        meta = SessionMeta(token_sha256=token_digest(token), created=now, last_used=now)
        # Room is made before the keys are staged, so the store never holds more than its budget,
        # not even for the moment between staging and renaming.
        with self._lock:
            self.purge_expired()
            self._make_room(max(reserve_bytes, len(evaluation_keys)))
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
        with self._lock:
            meta = self._live_meta(session_id)
            if not hmac.compare_digest(token_digest(token), meta.token_sha256):
                raise InvalidTokenError("wrong token for this session")
            meta.last_used = self.clock()
            self._write_meta(session_id, meta)

    def put_input(self, session_id: str, party: Party, data: bytes) -> None:
        """Store (or replace) one party's ciphertext; any stored output becomes stale."""
        with self._lock:
            meta = self._live_meta(session_id)
            directory = self._dir(session_id)
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
        with self._lock:
            meta = self._live_meta(session_id)
            directory = self._dir(session_id)
            found = {}
            for party in parties:
                with contextlib.suppress(FileNotFoundError):
                    found[party] = (directory / self._input_name(party)).read_bytes()
        missing = [party.value for party in parties if party not in found]
        if missing:
            raise StepOutOfOrderError(f"upload the {', '.join(missing)} input(s) first")
        return found, meta.inputs_version

    def read_evaluation_keys(self, session_id: str) -> bytes:
        """Read the session's serialized evaluation keys."""
        try:
            return (self._dir(session_id) / self.EVALUATION_KEYS).read_bytes()
        except FileNotFoundError:
            raise SessionNotFoundError("unknown or expired session") from None

    def store_output(self, session_id: str, data: bytes, inputs_version: int) -> None:
        """Store an encrypted verdict computed from the inputs of ``inputs_version``.

        A session in use does not expire during the request: it only has to be still on disk
        (not yet purged), and storing the verdict counts as a use.

        Raises:
            StepOutOfOrderError: if an input was replaced while the verdict was computed.
            SessionNotFoundError: if the session was deleted or purged meanwhile.
        """
        with self._lock:
            meta = self._read_meta(session_id)
            if meta.inputs_version != inputs_version:
                raise StepOutOfOrderError("an input changed during predict; run predict again")
            atomic_write(self._dir(session_id) / self.OUTPUT, data)
            meta.output_version = inputs_version
            meta.last_used = self.clock()
            self._write_meta(session_id, meta)

    def read_output(self, session_id: str) -> bytes:
        """Read the encrypted verdict of the current inputs.

        Raises:
            StepOutOfOrderError: if predict has not run since the last input was stored.
        """
        with self._lock:
            meta = self._live_meta(session_id)
            if meta.output_version == meta.inputs_version:
                with contextlib.suppress(FileNotFoundError):
                    return (self._dir(session_id) / self.OUTPUT).read_bytes()
        raise StepOutOfOrderError("no verdict for the current inputs: run predict first")

    def delete(self, session_id: str) -> None:
        """Remove a session and everything stored for it."""
        with self._lock:
            self._dir(session_id)
            self._remove(session_id, reason="deleted by the client")


# ---------------------------------------------------------------------------------------------
# Prepared evaluation keys and the FHE worker gate
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Use cases
# ---------------------------------------------------------------------------------------------
class ScoringService:
    """What the routes do, over the model, the store, the key cache and the FHE gate."""

    def __init__(self, model: FHEModel, store: SessionStore, key_cache: KeyCache, gate: FHEGate):
        """Assemble the service (see ``build_service``)."""
        self.model = model
        self.store = store
        self.key_cache = key_cache
        self.gate = gate

    @staticmethod
    async def _io(func: Callable[..., T], *args: Any) -> T:
        """Run blocking storage work off the event loop (default thread pool)."""
        return await anyio.to_thread.run_sync(func, *args)

    def _prepared_keys(self, session_id: str) -> Any:
        """The session's prepared evaluation keys, from the cache or from disk."""
        keys = self.key_cache.get(session_id)
        if keys is None:
            keys = self.model.evaluation_keys(self.store.read_evaluation_keys(session_id))
            self.key_cache.put(session_id, keys)
        return keys

    async def create_session(self, evaluation_keys: bytes) -> tuple[str, str]:
        """Check and prepare the keys, store a new session; return (session_id, token)."""
        prepared = await self._io(self.model.evaluation_keys, evaluation_keys)
        session_id, token = await self._io(
            self.store.create, evaluation_keys, self.model.session_reserve_bytes()
        )
        self.key_cache.put(session_id, prepared)
        return session_id, token

    async def authenticate(self, session_id: str, token: str | None) -> None:
        """Check the session and its token (see ``SessionStore.authenticate``)."""
        await self._io(self.store.authenticate, session_id, token)

    async def put_input(self, session_id: str, party: Party, data: bytes) -> None:
        """Check one party's ciphertext and store it."""
        await self._io(self.model.value, party.value, data)
        await self._io(self.store.put_input, session_id, party, data)

    async def predict(self, session_id: str) -> float:
        """Run predict on the stored inputs, store the encrypted verdict; return the FHE time."""
        inputs, inputs_version = await self._io(self.store.read_inputs, session_id, list(Party))

        def job() -> tuple[bytes, float]:
            keys = self._prepared_keys(session_id)
            values = [self.model.value(party.value, inputs[party]) for party in Party]
            return self.model.run("predict", values, keys)

        output, elapsed = await self.gate.run(job)
        await self._io(self.store.store_output, session_id, output, inputs_version)
        logger.info("session %s: predict ran in %.3f s", short_id(session_id), elapsed)
        return elapsed

    async def output(self, session_id: str) -> bytes:
        """The encrypted verdict of the current inputs."""
        return await self._io(self.store.read_output, session_id)

    async def explain(self, session_id: str, candidates: bytes) -> tuple[bytes, float]:
        """Score candidate credit-bureau rows with the stored applicant and bank inputs."""
        inputs, _ = await self._io(
            self.store.read_inputs, session_id, [Party.applicant, Party.bank]
        )
        await self._io(self.model.value, "candidates", candidates)

        def job() -> tuple[bytes, float]:
            keys = self._prepared_keys(session_id)
            values = [
                self.model.value(Party.applicant.value, inputs[Party.applicant]),
                self.model.value(Party.bank.value, inputs[Party.bank]),
                self.model.value("candidates", candidates),
            ]
            return self.model.run("explain", values, keys)

        output, elapsed = await self.gate.run(job)
        logger.info("session %s: explain ran in %.3f s", short_id(session_id), elapsed)
        return output, elapsed

    async def delete(self, session_id: str) -> None:
        """Remove the session and its cached keys."""
        await self._io(self.store.delete, session_id)
        self.key_cache.discard(session_id)


def build_service(config: ServerSettings) -> ScoringService:
    """Load the model and open the store described by the settings.

    Raises:
        RuntimeError: if the deployment files are unusable or the limits make no sense.
    """
    model = FHEModel.load(config.deployment_dir)
    if config.max_concurrent_fhe < 1 or config.max_waiting_fhe < 0 or config.max_sessions < 1:
        raise RuntimeError(
            "max_concurrent_fhe and max_sessions must be at least 1, max_waiting_fhe at least 0"
        )
    if config.disk_budget_bytes < model.session_reserve_bytes():
        raise RuntimeError(
            f"disk_budget_bytes={config.disk_budget_bytes} cannot hold one session "
            f"({model.session_reserve_bytes()} bytes)"
        )
    for limit_name, limit, wire_name in (
        ("max_evaluation_key_bytes", config.max_evaluation_key_bytes, "evaluation_keys"),
        *(("max_ciphertext_bytes", config.max_ciphertext_bytes, name) for name in settings.PARTIES),
        ("max_ciphertext_bytes", config.max_ciphertext_bytes, "candidates"),
    ):
        if limit < model.wire[wire_name].length:
            logger.warning(
                "%s=%d is below this model's %s size (%d bytes): every upload of it will be "
                "refused with 413",
                limit_name,
                limit,
                wire_name,
                model.wire[wire_name].length,
            )
    key_cache = KeyCache(capacity=config.key_cache_size)
    store = SessionStore(
        root=config.store_dir,
        ttl_seconds=config.session_ttl_seconds,
        max_sessions=config.max_sessions,
        disk_budget_bytes=config.disk_budget_bytes,
        on_remove=key_cache.discard,
    )
    store.clean_leftovers()
    store.purge_expired()
    gate = FHEGate(max_concurrent=config.max_concurrent_fhe, max_waiting=config.max_waiting_fhe)
    return ScoringService(model=model, store=store, key_cache=key_cache, gate=gate)


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------
async def purge_periodically(store: SessionStore, period_seconds: float) -> None:
    """Remove expired sessions every ``period_seconds``, for ever."""
    while True:
        await anyio.sleep(period_seconds)
        try:
            await anyio.to_thread.run_sync(store.purge_expired)
        except OSError as error:
            logger.error("purging expired sessions failed: %r", error)


def app_settings(app: FastAPI) -> ServerSettings:
    """The settings the app's routes get (``get_settings``, or the override a test installed)."""
    return app.dependency_overrides.get(get_settings, get_settings)()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Load the deployment once, purge expired sessions periodically, refuse a bad start."""
    config = app_settings(app)
    try:
        service = build_service(config)
    except RuntimeError as error:
        logger.error("FHE server cannot start: %s", error)
        raise
    logger.info(
        "FHE server ready: model %s, store %s", service.model.card["versions"], config.store_dir
    )
    period = min(60.0, max(1.0, config.session_ttl_seconds / 4))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(purge_periodically, service.store, period)
        yield {"service": service}
        tasks.cancel_scope.cancel()


DESCRIPTION = """
Scores encrypted credit-card applications with a decision tree under fully homomorphic
encryption (Concrete). The server only ever holds evaluation keys and ciphertexts; only the
client, which keeps the secret key, can decrypt the verdict.

**Flow**: `POST /sessions` with the serialized evaluation keys, then each party
`PUT /sessions/{id}/inputs/{party}` its serialized ciphertext, `POST /sessions/{id}/predict`,
`GET /sessions/{id}/output` and decrypt. `POST /sessions/{id}/explain` scores other
credit-bureau rows against the stored applicant and bank inputs.

Binary bodies are `application/octet-stream`. Every call under `/sessions/{id}` needs
`Authorization: Bearer <token>` (the token returned at creation). Errors are
`{"detail": "..."}` JSON.
"""

app = FastAPI(
    title="Encrypted credit-card approval: FHE server",
    version=f"{API_VERSION}.0.0",
    description=DESCRIPTION,
    lifespan=lifespan,
)

bearer = HTTPBearer(auto_error=False, description="The token returned by POST /sessions.")
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
SessionIdPath = Annotated[
    str, PathParam(description="The session id returned by POST /sessions (32 hex characters).")
]


async def get_service(request: Request) -> ScoringService:
    """The service built by the lifespan."""
    return request.state.service


ServiceDep = Annotated[ScoringService, Depends(get_service)]


async def authorized_session(
    session_id: SessionIdPath,
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """Dependency: the path's session id once its bearer token has been checked."""
    token = credentials.credentials if credentials is not None else None
    if token is None:
        raise InvalidTokenError("missing bearer token (Authorization: Bearer <token>)")
    await service.authenticate(session_id, token)
    return session_id


SessionDep = Annotated[str, Depends(authorized_session)]


# Scope key set once a request's body has been received to its end.
BODY_DONE = "fhe.body_done"


async def read_body(request: Request, limit: int, expected: int, what: str) -> bytes:
    """Read a request body chunk by chunk, never holding more than needed.

    Args:
        request: the request.
        limit: the configured size limit (413 beyond it).
        expected: the exact size the route accepts (422 beyond it, when below the limit).
        what: what the body is, for error messages.

    Raises:
        PayloadTooLargeError: if Content-Length or the bytes received exceed ``limit``.
        InvalidPayloadError: if more than ``expected`` bytes arrive (exact size checked later).
        IncompleteBodyError: if the client disconnects before the end of the body.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"{what} over the limit of {limit} bytes")
    cap = min(limit, expected)
    body = bytearray()
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise IncompleteBodyError(f"the client disconnected before sending all of {what}")
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if not more:
            request.scope[BODY_DONE] = True
        if len(body) > limit:
            raise PayloadTooLargeError(f"{what} over the limit of {limit} bytes")
        if len(body) > cap:
            raise InvalidPayloadError(f"{what} must be exactly {expected} bytes for this model")
        if not more:
            return bytes(body)


async def finish_body(request: Request, limit: int, seconds: float) -> bool:
    """Read and discard what is left of a refused request's body, if it is small.

    An answer sent on a connection whose request body is still arriving is then closed with
    unread bytes, and the kernel resets the connection, which can destroy the answer before
    the client reads it. Small leftovers are therefore read first; a large or slow one is not,
    and that connection is closed.

    Args:
        request: the refused request.
        limit: the most bytes to read and discard.
        seconds: the most time to spend on it.

    Returns:
        True when the whole body has been received (the connection can stay open).
    """
    if request.scope.get(BODY_DONE):
        return True
    declared = request.headers.get("content-length")
    chunked = "transfer-encoding" in request.headers
    if not chunked and (declared is None or declared == "0"):
        return True
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return False
    received = 0
    try:
        with anyio.fail_after(seconds):
            while received <= limit:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    return False
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    request.scope[BODY_DONE] = True
                    return True
    except TimeoutError:
        return False
    return False


async def error_headers(
    request: Request, error: Exception, headers: dict[str, str] | None = None
) -> dict[str, str]:
    """Headers of an error answer: ``Connection: close`` unless the body was read to its end."""
    config = app_settings(request.app)
    finished = not isinstance(error, PayloadTooLargeError) and await finish_body(
        request, limit=config.max_ciphertext_bytes, seconds=config.error_drain_seconds
    )
    if finished:
        return dict(headers or {})
    return {**(headers or {}), "Connection": "close"}


class ErrorDetail(BaseModel):
    """Every error's body."""

    detail: str = Field(examples=["unknown or expired session"])


class SessionCreated(BaseModel):
    """A new session."""

    session_id: str = Field(description="Put it in the URLs of the session.")
    token: str = Field(description="Bearer token for every call of the session; shown once.")
    expires_in: float = Field(description="Idle seconds after which the session expires.")


class PredictResult(BaseModel):
    """How long the FHE computation took."""

    fhe_execution_time: float = Field(description="Seconds spent running the encrypted tree.")


class Health(BaseModel):
    """Server status and the model it serves."""

    status: str = Field(examples=["ok"])
    api_version: str
    model: dict[str, Any] = Field(description="Library versions, parameters and input shapes.")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    texts = {
        401: "Missing or wrong bearer token.",
        404: "Unknown or expired session.",
        409: "A step out of order.",
        413: "Body over its size limit.",
        422: "Bytes that are not what this route expects, or an unknown party.",
        503: "The FHE queue is full; retry after the Retry-After header's seconds.",
    }
    return {code: {"model": ErrorDetail, "description": texts[code]} for code in codes}


def _binary_body(description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    }


BINARY_RESPONSE = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
}


@app.exception_handler(ServiceError)
async def service_error_handler(request: Request, error: ServiceError) -> JSONResponse:
    """Turn a service error into its status and ``{"detail": ...}``.

    The rest of a small refused body is read first; after a large one (e.g. a gigabyte sent to
    an upload route) the connection is closed instead of reading on.
    """
    headers = await error_headers(request, error, error.headers())
    return JSONResponse(
        status_code=error.status_code, content={"detail": str(error)}, headers=headers
    )


@app.exception_handler(RequestValidationError)
async def validation_error_handler(request: Request, error: RequestValidationError) -> JSONResponse:
    """Answer FastAPI's own validation errors (e.g. an unknown party) as 422 with a text detail."""
    parts = []
    for item in error.errors():
        location = ".".join(str(piece) for piece in item.get("loc", ()))
        parts.append(f"{location}: {item.get('msg', 'invalid')}")
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content={"detail": "; ".join(parts) or "invalid request"},
        headers=await error_headers(request, error),
    )


@app.exception_handler(Exception)
async def unexpected_error_handler(request: Request, error: Exception) -> JSONResponse:
    """Log an unexpected error with its trace and answer without leaking it."""
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(status_code=500, content={"detail": "internal server error"})


@app.get("/health", response_model=Health, summary="Server status and model versions")
async def health(service: ServiceDep) -> Health:
    """Answer at once, even while FHE computations run."""
    return Health(status="ok", api_version=API_VERSION, model=service.model.summary())


@app.post(
    "/sessions",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionCreated,
    summary="Open a session with the client's evaluation keys",
    responses=_errors(413, 422),
    openapi_extra=_binary_body(
        "`client.evaluation_keys.serialize()` of a key set generated from this model's client "
        "specs (exact size and header checked)."
    ),
)
async def create_session(
    request: Request, service: ServiceDep, config: SettingsDep
) -> SessionCreated:
    """Store the evaluation keys and return the session id and its bearer token (shown once)."""
    data = await read_body(
        request,
        limit=config.max_evaluation_key_bytes,
        expected=service.model.wire["evaluation_keys"].length,
        what="evaluation keys",
    )
    session_id, token = await service.create_session(data)
    return SessionCreated(session_id=session_id, token=token, expires_in=config.session_ttl_seconds)


@app.put(
    "/sessions/{session_id}/inputs/{party}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Upload one party's encrypted input",
    responses=_errors(401, 404, 413, 422),
    openapi_extra=_binary_body(
        'That party\'s ciphertext, `client.encrypt(..., function_name="predict")[i].serialize()`.'
        " A second upload for the same party replaces the first (and the stored verdict)."
    ),
)
async def put_input(
    party: Party, request: Request, session_id: SessionDep, service: ServiceDep, config: SettingsDep
) -> Response:
    """Check and store one party's ciphertext."""
    data = await read_body(
        request,
        limit=config.max_ciphertext_bytes,
        expected=service.model.wire[party.value].length,
        what=f"the {party.value} ciphertext",
    )
    await service.put_input(session_id, party, data)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@app.post(
    "/sessions/{session_id}/predict",
    response_model=PredictResult,
    summary="Run the encrypted decision tree",
    responses=_errors(401, 404, 409, 422, 503),
)
async def predict(session_id: SessionDep, service: ServiceDep) -> PredictResult:
    """Needs all three inputs (409 otherwise); stores the encrypted verdict."""
    elapsed = await service.predict(session_id)
    return PredictResult(fhe_execution_time=elapsed)


@app.get(
    "/sessions/{session_id}/output",
    response_class=Response,
    summary="Download the encrypted verdict",
    responses={200: BINARY_RESPONSE, **_errors(401, 404, 409)},
)
async def get_output(session_id: SessionDep, service: ServiceDep) -> Response:
    """The verdict of the current inputs (409 if predict has not run since the last upload)."""
    return Response(content=await service.output(session_id), media_type="application/octet-stream")


@app.post(
    "/sessions/{session_id}/explain",
    response_class=Response,
    summary="Score candidate credit-bureau rows",
    responses={
        200: {
            **BINARY_RESPONSE,
            "description": "The encrypted verdict of every candidate row.",
            "headers": {
                EXECUTION_TIME_HEADER: {
                    "description": "Seconds spent in FHE.",
                    "schema": {"type": "number"},
                }
            },
        },
        **_errors(401, 404, 409, 413, 422, 503),
    },
    openapi_extra=_binary_body(
        "Ciphertext of the candidate credit-bureau rows, "
        '`client.encrypt(None, None, rows, function_name="explain")[2].serialize()`.'
    ),
)
async def explain(
    request: Request, session_id: SessionDep, service: ServiceDep, config: SettingsDep
) -> Response:
    """Reuse the stored applicant and bank inputs (409 without them) with each candidate row."""
    data = await read_body(
        request,
        limit=config.max_ciphertext_bytes,
        expected=service.model.wire["candidates"].length,
        what="the candidates ciphertext",
    )
    output, elapsed = await service.explain(session_id, data)
    return Response(
        content=output,
        media_type="application/octet-stream",
        headers={EXECUTION_TIME_HEADER: f"{elapsed:.6f}"},
    )


@app.delete(
    "/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete the session and everything stored for it",
    responses=_errors(401, 404),
)
async def delete_session(session_id: SessionDep, service: ServiceDep) -> Response:
    """Remove the keys, inputs and verdict of the session."""
    await service.delete(session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
