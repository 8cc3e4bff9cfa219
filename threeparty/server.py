"""The three-party server: relays signed public material, evaluates, relays sealed partials.

Run it in ``.venv-threeparty`` as ``uvicorn threeparty.server:app`` (settings: THREEPARTY_*
environment variables, see ``ThreePartySettings``). At start-up it runs the engine's known-answer
self-test (a throwaway three-party key set, a fixed probe, the known verdicts) and refuses to
serve if it fails.

The parties do not trust it: every upload is a *step* signed by its party's identity key
(``threeparty.transcript``), and the parties check every signature, every hash and the
evaluation itself before they use anything. The server checks the same signatures (so it
stores nothing a party did not sign), the steps' order, and that every blob parses as its kind.

What it holds, in memory and bounded (``max_sessions`` sessions, each upload under its size
limit, idle sessions dropped after ``session_ttl_seconds``): the roster (verify keys), each
party's signed statements and public blobs (round-1 keys and X25519 box keys, the challenge and
its partial decryptions, round-2 shares, ciphertexts), the joint evaluation keys it combines from
them, the encrypted output, and the partial decryptions *sealed* for their recipients, which it
cannot open. No key share ever reaches it.

Contract (README "Three-party mode" and ``/docs``): see ``threeparty.protocol`` for the routes;
every call under ``/sessions/{sid}`` but ``join`` needs ``Authorization: Bearer <token>``, a token
the party chose and bound to its identity when it redeemed its invitation. Errors are
``{"detail": str, "code": str}`` with the status of ``protocol.ErrorCode``; never a 5xx for
anything a client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhe_server import body as request_body
from fhe_server import errors as fhe_errors
from fhe_server.hosts import AllowedHostsMiddleware
from fhe_server.runtime import SessionQuota
from settings import CommaList
from threeparty import engine, protocol, transcript
from threeparty.layout import LAYOUT_PATH, Layout, load_layout
from threeparty.protocol import ErrorCode
from threeparty.sandbox import Sandbox, SandboxError, blob_kind
from threeparty.session_files import SessionFiles

logger = logging.getLogger("threeparty.server")

T = TypeVar("T")
MiB = 1024 * 1024


class ThreePartySettings(BaseSettings):
    """Limits of the three-party server; each field can be set by a THREEPARTY_* variable."""

    model_config = SettingsConfigDict(env_prefix="THREEPARTY_")

    max_sessions: int = 8
    session_ttl_seconds: float = 1800.0
    # A session's whole life, however active (status calls cannot keep one alive for ever).
    session_lifetime_seconds: float = 3600.0
    max_round1_bytes: int = 96 * MiB
    max_round2_bytes: int = 24 * MiB
    max_ciphertexts_bytes: int = 24 * MiB
    max_partial_bytes: int = 4 * MiB
    max_statement_bytes: int = 64 * 1024
    max_concurrent_evaluations: int = 1
    max_waiting_evaluations: int = 4
    max_status_wait_seconds: float = 20.0
    # Uploads read at once; more get 503 before their body is read.
    max_concurrent_uploads: int = 4
    # OpenFHE work on what clients send runs in worker processes (threeparty.sandbox), each with
    # an address-space limit; a call past its time limit kills its worker.
    sandbox_workers: int = 2
    sandbox_memory_mib: int = 3072
    parse_seconds: float = 10.0
    evaluate_seconds: float = 120.0
    # A blob's size may differ from this parameter set's by this fraction before it is parsed.
    blob_size_tolerance: float = 0.02
    # Sessions one client (IP address) may create per window; 0 turns the quota off. Addresses in
    # session_quota_exempt have none: by default the loopback (the page's own process).
    session_quota: int = 8
    session_quota_window_seconds: float = 600.0
    session_quota_exempt: CommaList = ["127.0.0.1", "::1"]
    # Host names the server answers (any port), comma-separated: loopback only by default.
    allowed_hosts: CommaList = ["localhost", "127.0.0.1", "[::1]"]
    # Where sessions are kept so that they survive a restart ("" keeps them in memory only).
    store_dir: str = str(LAYOUT_PATH.parent.parent / ".fhe_store" / "threeparty")
    # The public slot layout the server evaluates and checks its known answer on.
    layout_path: Path = LAYOUT_PATH


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
class ServiceError(Exception):
    """An error answered with its code's status and ``{"detail", "code"}``."""

    def __init__(self, code: ErrorCode, detail: str, retry_after: int | None = None):
        """Build an error of a protocol code."""
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        """The JSON answer."""
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.code is ErrorCode.unauthorized:
            headers["WWW-Authenticate"] = "Bearer"
        if self.code is ErrorCode.too_large:
            headers["Connection"] = "close"
        return JSONResponse(
            status_code=self.code.status,
            content={"detail": self.detail, "code": self.code.value},
            headers=headers,
        )


def out_of_order(detail: str) -> ServiceError:
    """409: a step before its prerequisites, or done twice."""
    return ServiceError(ErrorCode.out_of_order, detail)


def sandbox_error(error: SandboxError, what: str) -> ServiceError:
    """422 for what a worker refused, died on or timed out on (the server goes on)."""
    code = ErrorCode.other_session if error.code == "other_session" else ErrorCode.invalid_blob
    return ServiceError(code, f"{what}: {error}")


def check_sizes(
    blobs: dict[str, bytes], step: str, sizes: dict[str, int], tolerance: float
) -> None:
    """Refuse, before any parsing, a blob whose size is not its kind's for these parameters."""
    for name, data in blobs.items():
        kind = blob_kind(step, name)
        if kind is None or kind not in sizes:
            continue
        expected = sizes[kind]
        if abs(len(data) - expected) > tolerance * expected:
            raise ServiceError(
                ErrorCode.invalid_blob,
                f"{name} is {len(data)} bytes; a {kind} of these parameters is about {expected}",
            )


# ---------------------------------------------------------------------------------------------
# Sessions (in memory; only public material, signed statements and sealed partials)
# ---------------------------------------------------------------------------------------------
def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass
class Session:
    """One three-party session.

    Attributes:
        session_id: 32 hex characters.
        mode: "predict" or "explain" (how many applications one evaluation scores).
        roster: {role: verify key hex}, fixed at creation.
        invitation_digests: SHA-256 of each party's single-use invitation secret.
        token_digests: {role: SHA-256 hex of the bearer token it bound when it joined}.
        created: creation time (a session never lives past ``session_lifetime_seconds``).
        last_used: time of the last authenticated call (idle sessions expire).
        version: bumped by every change (status long-polls wait for it).
        statements: {role: {step: signed envelope}}.
        blobs: {(role, step): {name: bytes}}.
    """

    session_id: str
    mode: str
    roster: dict[str, str]
    invitation_digests: dict[str, bytes]
    created: float
    last_used: float
    applications: int = 1
    token_digests: dict[str, str] = field(default_factory=dict)
    version: int = 0
    statements: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    blobs: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)
    joint: engine.JointRound1 | None = None
    keys: engine.EvaluationKeys | None = None
    output: bytes | None = None
    evaluation_seconds: float | None = None
    evaluating: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def touch(self) -> None:
        """Record a change and wake the status long-polls."""
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def role_of(self, token: str) -> str | None:
        """The party whose bearer token this is, if any (constant-time comparisons)."""
        digest = _digest(token).hex()
        found = None
        for role, expected in self.token_digests.items():
            if hmac.compare_digest(digest, expected):
                found = role
        return found

    def done(self, step: str) -> list[str]:
        """The roles that uploaded ``step``."""
        return [role for role in protocol.ROLES if step in self.statements.get(role, {})]

    def all_done(self, step: str) -> bool:
        """Whether every role that uploads ``step`` did."""
        return set(self.done(step)) == set(protocol.step_roles(step))

    def meta(self, wall_offset: float) -> dict[str, Any]:
        """What ``SessionFiles`` writes (times as wall-clock seconds: now + ``wall_offset``)."""
        return {
            "session_id": self.session_id,
            "mode": self.mode,
            "applications": self.applications,
            "roster": self.roster,
            "invitation_digests": {r: d.hex() for r, d in self.invitation_digests.items()},
            "token_digests": self.token_digests,
            "created": self.created + wall_offset,
            "last_used": self.last_used + wall_offset,
            "statements": self.statements,
            "key_tag": self.joint.key_tag if self.joint is not None else None,
            "evaluation_seconds": self.evaluation_seconds,
        }

    @classmethod
    def restore(cls, meta: dict[str, Any], files: dict[str, bytes], wall_offset: float) -> Session:
        """A session read back by ``SessionFiles.load``."""
        session = cls(
            session_id=meta["session_id"],
            mode=meta["mode"],
            applications=int(meta.get("applications", 1)),
            roster=dict(meta["roster"]),
            invitation_digests={r: bytes.fromhex(d) for r, d in meta["invitation_digests"].items()},
            token_digests=dict(meta["token_digests"]),
            created=float(meta["created"]) - wall_offset,
            last_used=float(meta["last_used"]) - wall_offset,
            statements=meta["statements"],
            evaluation_seconds=meta.get("evaluation_seconds"),
        )
        for stem, data in files.items():
            parts = stem.split("__")
            if len(parts) == 3:
                session.blobs.setdefault((parts[0], parts[1]), {})[parts[2]] = data
        derived = {
            stem.split("__", 1)[1]: data
            for stem, data in files.items()
            if stem.startswith("derived__")
        }
        if meta.get("key_tag") and "joint_rotation" in derived:
            session.joint = engine.JointRound1(
                joint_public_key=derived["joint_public_key"],
                joint_eval_mult_round1=derived["joint_eval_mult_round1"],
                joint_rotation=derived["joint_rotation"],
                key_tag=meta["key_tag"],
            )
        if session.joint is not None and "relinearization" in derived:
            session.keys = engine.EvaluationKeys(
                key_tag=session.joint.key_tag,
                relinearization=derived["relinearization"],
                rotation=session.joint.joint_rotation,
            )
        session.output = derived.get("output")
        return session

    def status(self, expires_in: float) -> dict[str, Any]:
        """What every party of the session may know about its progress."""
        return {
            "session_id": self.session_id,
            "mode": self.mode,
            "applications": self.applications,
            "blocks": protocol.blocks_for(self.mode, self.applications),
            "version": self.version,
            "expires_in": expires_in,
            "roster": dict(self.roster),
            "joined": [role for role in protocol.ROLES if role in self.token_digests],
            "steps": {step: self.done(step) for step in protocol.STEPS},
            "transcript": {role: dict(steps) for role, steps in self.statements.items()},
            "key_tag": self.joint.key_tag if self.joint is not None else None,
            "output": self.output is not None,
            "output_digest": transcript.digest(self.output) if self.output else None,
            "evaluation_seconds": self.evaluation_seconds,
        }


class SessionStore:
    """The live sessions, touched only from the event loop's thread."""

    def __init__(
        self,
        config: ThreePartySettings,
        clock: Callable[[], float] = time.monotonic,
        files: SessionFiles | None = None,
    ):
        """An empty store with the settings' limits (``files``: where sessions are kept)."""
        self.config = config
        self.clock = clock
        self.files = files or SessionFiles(None)
        self.sessions: dict[str, Session] = {}

    @property
    def wall_offset(self) -> float:
        """Wall-clock time minus this store's clock (times on disk are wall-clock)."""
        return time.time() - self.clock()

    def save(self, session: Session) -> None:
        """Write the session's meta (after any blob it lists)."""
        self.files.write_meta(session.session_id, session.meta(self.wall_offset))

    def restore(self) -> int:
        """Read back the sessions kept on disk (expired ones are dropped); return how many."""
        for meta, files in self.files.load():
            try:
                session = Session.restore(meta, files, self.wall_offset)
            except (KeyError, TypeError, ValueError) as error:
                logger.warning("a stored session cannot be read back (%s): removed", error)
                self.files.delete(str(meta.get("session_id", "")))
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
        self.files.delete(session_id)
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
            invitation_digests={r: _digest(t) for r, t in secrets_by_role.items()},
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
            raise ServiceError(ErrorCode.unknown_session, "unknown or expired session")
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
            _digest(invitation), session.invitation_digests[role]
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


# ---------------------------------------------------------------------------------------------
# The use cases
# ---------------------------------------------------------------------------------------------
# What each step needs first: every role's ``after`` step (and, for round 1, the previous
# party's round 1; for the output commitment, the evaluated output).
_PREREQUISITE = {
    "challenge": "round1",
    "confirm_commit": "challenge",
    "confirm_reveal": "confirm_commit",
    "inputs_commit": "confirm_reveal",
    "inputs": "inputs_commit",
    "partials": "output_commit",
}


class ThreePartyService:
    """What the routes do: order checks, engine calls in worker threads, storage."""

    def __init__(
        self,
        config: ThreePartySettings,
        layout: Layout,
        sandbox: Sandbox,
        sizes: dict[str, int],
    ):
        """Create the store and the worker limits (inside the event loop).

        Args:
            config: the settings.
            layout: the public slot layout.
            sandbox: the worker processes that do OpenFHE work on what clients send.
            sizes: each blob kind's size under these parameters (``engine.self_test``).
        """
        self.config = config
        self.layout = layout
        self.sandbox = sandbox
        self.sizes = sizes
        self.store = SessionStore(
            config, files=SessionFiles(Path(config.store_dir) if config.store_dir else None)
        )
        self.quota = SessionQuota(
            config.session_quota,
            config.session_quota_window_seconds,
            exempt=config.session_quota_exempt,
        )
        # Threads that wait on the workers: one per worker, so no call waits in a thread pool.
        self.workers = anyio.CapacityLimiter(max(1, config.sandbox_workers))
        self.evaluations_admitted = 0
        self.uploads = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def _sandbox(
        self,
        what: str,
        op: str,
        args: dict[str, Any],
        blobs: dict[str, bytes],
        seconds: float,
    ) -> dict[str, bytes]:
        """Run ``op`` in a worker process; its refusal, death or time-out is a 422."""
        try:
            return await anyio.to_thread.run_sync(
                lambda: self.sandbox.call(op, args, blobs, seconds), limiter=self.workers
            )
        except SandboxError as error:
            if error.code in ("crashed", "timeout"):
                logger.warning("%s: a sandbox worker was replaced (%s)", what, error)
            raise sandbox_error(error, what) from None

    @contextlib.contextmanager
    def upload_slot(self) -> Iterator[None]:
        """Hold one of the concurrent uploads (503 before the body is read when none is free).

        Raises:
            ServiceError: busy with Retry-After.
        """
        if self.uploads >= self.config.max_concurrent_uploads:
            raise ServiceError(ErrorCode.busy, "too many uploads at once", retry_after=1)
        self.uploads += 1
        try:
            yield
        finally:
            self.uploads -= 1

    def step_limit(self, step: str) -> int:
        """The largest body a step may have."""
        config = self.config
        limits = {
            "round1": config.max_round1_bytes,
            "challenge": config.max_ciphertexts_bytes,
            "confirm_reveal": config.max_partial_bytes,
            "inputs": config.max_round2_bytes + config.max_ciphertexts_bytes,
            "partials": 2 * config.max_partial_bytes,
        }
        return limits.get(step, config.max_statement_bytes)

    def _require_turn(self, session: Session, role: str, step: str) -> None:
        if role not in protocol.step_roles(step):
            raise ServiceError(ErrorCode.invalid_request, f"the {role} has no {step} step")
        if step in session.statements.get(role, {}):
            raise out_of_order(f"the {role}'s {step} is already in")
        if step == "round1":
            before = protocol.previous_role(role)
            if before is not None and "round1" not in session.statements.get(before, {}):
                raise out_of_order(f"round 1 goes in chain order: the {before} uploads first")
        elif step == "output_commit":
            if session.output is None:
                raise out_of_order("the output commitment needs the evaluated output first")
        elif not session.all_done(_PREREQUISITE[step]):
            raise out_of_order(f"{step} needs every party's {_PREREQUISITE[step]} first")

    def _signed(
        self, session: Session, role: str, step: str, body: bytes
    ) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The signed envelope and the blobs of an upload, checked against the roster."""
        blobs = unpack(body, None, step)
        try:
            envelope = json.loads(blobs.pop(protocol.STATEMENT_BLOB, b"").decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ServiceError(
                ErrorCode.invalid_blob, f"{step}: no signed statement in the upload"
            ) from None
        try:
            statement = transcript.verify_signature(bytes.fromhex(session.roster[role]), envelope)
        except transcript.TranscriptError as error:
            raise ServiceError(ErrorCode.bad_signature, str(error)) from None
        expected = {"session": session.session_id, "role": role, "step": step}
        if any(statement.get(key) != value for key, value in expected.items()):
            raise ServiceError(
                ErrorCode.bad_signature, f"{step}: the statement is for another session or step"
            )
        names = protocol.step_blobs(step, role, engine.vector_indices(self.layout, role))
        if sorted(blobs) != sorted(names):
            raise ServiceError(
                ErrorCode.invalid_blob,
                f"the {role}'s {step} holds [{', '.join(names)}]; got [{', '.join(sorted(blobs))}]",
            )
        if statement.get("blobs") != {
            name: transcript.digest(data) for name, data in blobs.items()
        }:
            raise ServiceError(
                ErrorCode.bad_signature, f"{step}: the blobs are not the ones the statement signs"
            )
        if step == "round1" and len(blobs["box_key"]) != protocol.BOX_PUBLIC_KEY_BYTES:
            raise ServiceError(
                ErrorCode.invalid_blob, f"a box key is {protocol.BOX_PUBLIC_KEY_BYTES} bytes"
            )
        return envelope, blobs

    async def put_step(self, session: Session, role: str, step: str, body: bytes) -> None:
        """Check and store one party's signed step; combine keys when a round is complete."""
        self._require_turn(session, role, step)
        envelope, blobs = self._signed(session, role, step, body)
        check_sizes(blobs, step, self.sizes, self.config.blob_size_tolerance)
        key_tag = session.joint.key_tag if session.joint is not None else None
        await self._sandbox(
            f"the {role}'s {step}",
            "check",
            {"step": step, "key_tag": key_tag},
            blobs,
            self.config.parse_seconds,
        )
        async with session.lock:
            self._require_turn(session, role, step)
            # The step shows in the status (statements) only once what it completes is done, so
            # no party sees every input in while the evaluation keys are still being combined.
            session.blobs[(role, step)] = blobs
            completes = set(session.done(step)) | {role} == set(protocol.step_roles(step))
            try:
                derived: dict[str, bytes] = {}
                if step == "round1" and completes:
                    session.joint = joint = await self._combine_round1(session)
                    derived = {
                        "joint_public_key": joint.joint_public_key,
                        "joint_eval_mult_round1": joint.joint_eval_mult_round1,
                        "joint_rotation": joint.joint_rotation,
                    }
                if step == "inputs" and completes:
                    session.keys = await self._evaluation_keys(session)
                    derived = {"relinearization": session.keys.relinearization}
            except ServiceError:
                del session.blobs[(role, step)]
                raise
            await self._write(session, f"{role}__{step}", blobs)
            await self._write(session, "derived", derived)
            session.statements.setdefault(role, {})[step] = envelope
            self.store.save(session)
            session.touch()
        if step == "inputs" and session.keys is not None and session.output is None:
            # Every input is in: evaluate now, while the parties evaluate again on their side.
            task = asyncio.get_running_loop().create_task(self._evaluate_soon(session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, session: Session, prefix: str, blobs: dict[str, bytes]) -> None:
        """Write blobs of the session to disk, off the event loop."""
        if blobs:
            await anyio.to_thread.run_sync(
                self.store.files.write_blobs, session.session_id, prefix, blobs
            )

    async def _combine_round1(self, session: Session) -> engine.JointRound1:
        blobs = {
            "public_key_credit_bureau": session.blobs[("credit_bureau", "round1")]["public_key"]
        }
        for role in protocol.ROLES:
            own = session.blobs[(role, "round1")]
            blobs |= {f"eval_mult_{role}": own["eval_mult"], f"rotation_{role}": own["rotation"]}
        joint = await self._sandbox(
            "combining round 1", "combine_round1", {}, blobs, self.config.evaluate_seconds
        )
        return engine.JointRound1(
            joint_public_key=joint["joint_public_key"],
            joint_eval_mult_round1=joint["joint_eval_mult_round1"],
            joint_rotation=joint["joint_rotation"],
            key_tag=joint["key_tag"].decode(),
        )

    async def _evaluation_keys(self, session: Session) -> engine.EvaluationKeys:
        joint = session.joint
        assert joint is not None  # inputs come after round 1
        shares = {
            f"round2_{r}": session.blobs[(r, "inputs")][protocol.ROUND2_BLOB]
            for r in protocol.ROLES
        }
        combined = await self._sandbox(
            "combining round 2",
            "combine_round2",
            {"key_tag": joint.key_tag},
            shares,
            self.config.evaluate_seconds,
        )
        return engine.EvaluationKeys(
            key_tag=joint.key_tag,
            relinearization=combined["relinearization"],
            rotation=joint.joint_rotation,
        )

    def blob(self, session: Session, role: str, step: str, name: str) -> bytes:
        """One blob of a party's step (409 before the step is in, 404 for another name)."""
        blobs = session.blobs.get((role, step))
        if blobs is None:
            raise out_of_order(f"the {role} has not done {step} yet")
        if name not in blobs:
            raise ServiceError(ErrorCode.not_found, f"the {role}'s {step} has no blob {name!r}")
        return blobs[name]

    async def _evaluate_soon(self, session: Session) -> None:
        """Evaluate in the background; a refusal (a full queue) waits for a party's own call."""
        with contextlib.suppress(ServiceError):
            await self.evaluate(session)

    async def evaluate(self, session: Session) -> float:
        """Evaluate once (later calls get the same output); return the evaluation's seconds."""
        if session.keys is None:
            raise out_of_order("evaluation needs every party's inputs (round-2 share, ciphertexts)")
        if session.output is not None:
            return session.evaluation_seconds or 0.0
        # The parties of a session all ask; only the first takes a place in the queue, the
        # others wait for its output.
        admitted = not session.evaluating
        if admitted:
            capacity = self.config.max_concurrent_evaluations + self.config.max_waiting_evaluations
            if self.evaluations_admitted >= capacity:
                raise ServiceError(ErrorCode.busy, "the evaluation queue is full", retry_after=2)
            self.evaluations_admitted += 1
            session.evaluating = True
        try:
            async with session.lock:
                if session.output is None:
                    await self._evaluate(session)
        finally:
            if admitted:
                self.evaluations_admitted -= 1
                session.evaluating = False
        return session.evaluation_seconds or 0.0

    async def _evaluate(self, session: Session) -> None:
        assert session.keys is not None
        blobs = {
            f"ct_{role}_{index}": session.blobs[(role, "inputs")][protocol.ciphertext_blob(index)]
            for role in protocol.ROLES
            for index in engine.vector_indices(self.layout, role)
        }
        blobs |= {
            "relinearization": session.keys.relinearization,
            "rotation": session.keys.rotation,
        }
        args = {
            "key_tag": session.keys.key_tag,
            "mode": session.mode,
            "blocks": protocol.blocks_for(session.mode, session.applications),
        }
        start = time.perf_counter()
        answer = await self._sandbox(
            "evaluation", "evaluate", args, blobs, self.config.evaluate_seconds
        )
        output = answer["output"]
        session.evaluation_seconds = time.perf_counter() - start
        await self._write(session, "derived", {"output": output})
        session.output = output
        self.store.save(session)
        session.touch()
        logger.info(
            "session %s evaluated in %.2f s", session.session_id[:8], session.evaluation_seconds
        )

    def output(self, session: Session) -> bytes:
        """The encrypted (masked) output (409 before evaluation)."""
        if session.output is None:
            raise out_of_order("not evaluated yet")
        return session.output

    async def wait_status(self, session: Session, since: int, wait: float) -> dict[str, Any]:
        """The status once the session's version exceeds ``since`` (or after ``wait`` seconds)."""
        wait = min(max(0.0, wait), self.config.max_status_wait_seconds)
        if session.version <= since and wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.changed.wait(), timeout=wait)
        if session.session_id not in self.store.sessions:
            raise ServiceError(ErrorCode.unknown_session, "unknown or expired session")
        return session.status(self.store.expires_in(session))


def unpack(body: bytes, names: tuple[str, ...] | None, what: str) -> dict[str, bytes]:
    """Split a framed body, checking its names when they are fixed (422 otherwise)."""
    try:
        blobs = protocol.unpack(body)
    except protocol.FrameError as error:
        raise ServiceError(ErrorCode.invalid_blob, f"{what}: {error}") from None
    if names is not None and set(blobs) != set(names):
        raise ServiceError(
            ErrorCode.invalid_blob, f"{what} holds exactly {', '.join(names)}; got {sorted(blobs)}"
        )
    if any(not data for data in blobs.values()):
        raise ServiceError(ErrorCode.invalid_blob, f"{what}: an empty blob")
    return blobs


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------
async def read_body(request: Request, limit: int, what: str) -> bytes:
    """Read an octet-stream body within ``limit`` with the single-key server's reader.

    Raises:
        ServiceError: too_large (413), unsupported_media_type (415) or invalid_request.
    """
    try:
        return await request_body.read_body(request, limit, limit, what)
    except fhe_errors.PayloadTooLargeError as error:
        raise ServiceError(ErrorCode.too_large, str(error)) from None
    except fhe_errors.UnsupportedMediaTypeError as error:
        raise ServiceError(ErrorCode.unsupported_media_type, str(error)) from None
    except fhe_errors.ServiceError as error:
        raise ServiceError(ErrorCode.invalid_request, str(error)) from None


class ErrorBody(BaseModel):
    """Every error's body."""

    detail: str
    code: str = Field(description="One of: " + ", ".join(c.value for c in ErrorCode))


_VERIFY_KEY = f"^[0-9a-f]{{{2 * transcript.VERIFY_KEY_BYTES}}}$"


class Roster(BaseModel):
    """The three parties' Ed25519 verify keys (hex), which sign every step of the session."""

    applicant: str = Field(pattern=_VERIFY_KEY)
    bank: str = Field(pattern=_VERIFY_KEY)
    credit_bureau: str = Field(pattern=_VERIFY_KEY)


class NewSession(BaseModel):
    """What ``POST /sessions`` takes."""

    mode: str = Field(default="predict", pattern="^(predict|explain|batch)$")
    roster: Roster
    applications: int = Field(
        default=1,
        ge=1,
        le=protocol.MAX_APPLICATIONS,
        description="Applications scored in one evaluation (batch mode; 1 otherwise)",
    )


class SessionCreated(BaseModel):
    """A new session: hand each party its own single-use invitation."""

    session_id: str
    mode: str
    applications: int
    roster: dict[str, str]
    invitations: dict[str, str] = Field(
        description="Each party's single-use invitation: <session id>.<secret>"
    )
    expires_in: float


class Join(BaseModel):
    """Redeem an invitation: bind a bearer token the party chose, signed by its identity key."""

    role: str = Field(pattern=f"^({'|'.join(protocol.ROLES)})$")
    invitation: str = Field(min_length=20, max_length=100)
    token_digest: str = Field(pattern=protocol.DIGEST_PATTERN.pattern)
    signature: str = Field(pattern="^[0-9a-f]{128}$")


class Evaluated(BaseModel):
    """The evaluation's time."""

    evaluation_seconds: float


def octets(data: bytes) -> Response:
    """A binary answer."""
    return Response(data, media_type="application/octet-stream")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _binary_body(description: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": description, "content": _BINARY}}


DESCRIPTION = """
Three-party (threshold BFV, OpenFHE) scoring: the applicant, the bank and the credit bureau each
keep one share of a joint secret key; this server only relays public key material, evaluates the
public decision tree on their ciphertexts, and relays partial decryptions sealed for their
recipients (the applicant and the bank). See the README's "Three-party mode".

Flow: `POST /sessions` with the roster (three verify keys) -> three invitations; each party
redeems its own (`POST .../join`, signed by its identity key), then uploads signed steps
(`PUT .../steps/{step}`): round 1 in chain order, the applicant's key-confirmation challenge,
commitments and reveals of the challenge's partial decryptions, commitments and uploads of the
round-2 shares and ciphertexts; `POST .../evaluate`; each party re-evaluates by itself, commits to
its partial decryption and seals it for each recipient; the recipients fuse the three partials.
The parties check every signature and hash; the server is not trusted.
"""


def create_app(config: ThreePartySettings | None = None) -> FastAPI:
    """The FastAPI application (``uvicorn threeparty.server:app`` uses the environment's settings).

    The lifespan runs ``engine.self_test()``; if it fails the server does not start.
    """
    config = config or ThreePartySettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        start = time.perf_counter()
        try:
            layout = load_layout(config.layout_path)
            sizes = await anyio.to_thread.run_sync(engine.self_test, layout)
        except Exception as error:
            logger.error("known-answer self-test FAILED, refusing to serve: %s", error)
            raise RuntimeError(f"three-party self-test failed: {error}") from error
        logger.info("known-answer self-test passed in %.1f s", time.perf_counter() - start)
        sandbox = Sandbox(
            config.sandbox_workers, config.sandbox_memory_mib * MiB, config.layout_path
        )
        app.state.service = service = ThreePartyService(config, layout, sandbox, sizes)
        restored = service.store.restore()
        logger.info("%d session(s) restored from %s", restored, config.store_dir or "memory")
        period = min(30.0, max(0.5, config.session_ttl_seconds / 4))
        try:
            async with anyio.create_task_group() as tasks:

                async def purge() -> None:
                    while True:
                        await anyio.sleep(period)
                        app.state.service.store.purge_expired()

                tasks.start_soon(purge)
                yield
                tasks.cancel_scope.cancel()
        finally:
            sandbox.close()

    app = FastAPI(
        title="Encrypted credit-card approval: three-party server",
        version=f"{protocol.API_VERSION}.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.add_middleware(AllowedHostsMiddleware, allowed_hosts=config.allowed_hosts)
    bearer = HTTPBearer(auto_error=False, description="The token part of the party's code.")

    def service_of(request: Request) -> ThreePartyService:
        return request.app.state.service

    async def caller(
        sid: str,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> tuple[ThreePartyService, Session, str]:
        service = service_of(request)
        token = credentials.credentials if credentials is not None else None
        session, role = service.store.authenticate(sid, token)
        return service, session, role

    Caller = tuple[ThreePartyService, Session, str]
    caller_dep = Depends(caller)

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, error: ServiceError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg', 'invalid')}"
            for item in error.errors()
        ]
        return ServiceError(ErrorCode.invalid_request, "; ".join(parts)).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        answer = ServiceError(ErrorCode.not_found, str(error.detail)).response()
        answer.status_code = error.status_code if 400 <= error.status_code < 500 else 404
        return answer

    @app.exception_handler(Exception)
    async def unexpected(request: Request, _error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    role_path = f"^({'|'.join(protocol.ROLES)})$"

    @app.get("/health", summary="Status (answers only after the known-answer self-test passed)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "api_version": protocol.API_VERSION, "self_test": "passed"}

    @app.post(
        protocol.SESSIONS,
        status_code=201,
        response_model=SessionCreated,
        summary="Create a session for a roster of three verify keys; returns three invitations",
        responses=_errors(422, 429, 503),
    )
    async def create_session(request: Request, body: NewSession) -> SessionCreated:
        service = service_of(request)
        store = service.store
        client = request.client.host if request.client is not None else "unknown"
        if body.mode != "batch" and body.applications != 1:
            raise ServiceError(
                ErrorCode.invalid_request, "several applications need the batch mode"
            )
        try:
            with service.quota.admit(client):
                session, invitations = store.create(
                    body.mode, body.roster.model_dump(), body.applications
                )
        except fhe_errors.TooManySessionsError as error:
            raise ServiceError(
                ErrorCode.too_many_sessions, str(error), retry_after=error.retry_after
            ) from None
        return SessionCreated(
            session_id=session.session_id,
            mode=session.mode,
            applications=session.applications,
            roster=session.roster,
            invitations={
                r: protocol.session_code(session.session_id, t) for r, t in invitations.items()
            },
            expires_in=store.expires_in(session),
        )

    @app.post(
        protocol.JOIN,
        status_code=204,
        summary="Redeem the caller's invitation for a bearer token bound to its identity key",
        responses=_errors(403, 404, 422),
    )
    async def join(sid: str, request: Request, body: Join) -> Response:
        service_of(request).store.join(
            sid, body.role, body.invitation, body.token_digest, body.signature
        )
        return Response(status_code=204)

    @app.get(
        protocol.STATUS,
        summary="Progress and signed transcript (long-poll with ?since=<version>&wait=<seconds>)",
        responses=_errors(401, 404, 422),
    )
    async def status(
        c: Caller = caller_dep,
        since: int = Query(-1, alias=protocol.STATUS_SINCE),
        wait: float = Query(0.0, alias=protocol.STATUS_WAIT),
    ) -> dict[str, Any]:
        service, session, _role = c
        return await service.wait_status(session, since, wait)

    @app.delete(protocol.SESSION, status_code=204, summary="Delete the session (any party)")
    async def delete_session(c: Caller = caller_dep) -> Response:
        service, session, role = c
        service.store.drop(session.session_id, f"deleted by the {role}")
        return Response(status_code=204)

    step_path = f"^({'|'.join(protocol.STEPS)})$"

    @app.put(
        protocol.STEP,
        status_code=204,
        summary="Upload one of the caller's steps: its blobs and its signed statement",
        responses=_errors(401, 404, 409, 413, 415, 422, 503),
        openapi_extra=_binary_body(
            "A frame (threeparty.protocol.pack) of the step's blobs and `statement`, the "
            "signed envelope (JSON) over their hashes."
        ),
    )
    async def put_step(
        request: Request,
        step: str = PathParam(..., pattern=step_path),
        c: Caller = caller_dep,
    ) -> Response:
        service, session, role = c
        with service.upload_slot():
            data = await read_body(request, service.step_limit(step), f"the {step} upload")
            await service.put_step(session, role, step, data)
        return Response(status_code=204)

    @app.get(
        protocol.BLOB,
        response_class=Response,
        summary="Download one blob of a party's step",
        responses={200: {"content": _BINARY}, **_errors(401, 404, 409, 422)},
    )
    async def get_blob(
        step: str = PathParam(..., pattern=step_path),
        role: str = PathParam(..., pattern=role_path),
        name: str = PathParam(..., pattern=f"^{protocol.BLOB_NAME_PATTERN.pattern}$"),
        c: Caller = caller_dep,
    ) -> Response:
        service, session, _ = c
        return octets(service.blob(session, role, step, name))

    @app.post(
        protocol.EVALUATE,
        response_model=Evaluated,
        summary="Evaluate the tree (once; later calls return at once)",
        responses=_errors(401, 404, 409, 422, 503),
    )
    async def evaluate(c: Caller = caller_dep) -> Evaluated:
        service, session, _ = c
        return Evaluated(evaluation_seconds=await service.evaluate(session))

    @app.get(
        protocol.OUTPUT,
        response_class=Response,
        summary="Download the encrypted, masked output",
        responses={200: {"content": _BINARY}, **_errors(401, 404, 409)},
    )
    async def get_output(c: Caller = caller_dep) -> Response:
        service, session, _ = c
        return octets(service.output(session))

    return app


def __getattr__(name: str) -> Any:
    """``app`` for ``uvicorn threeparty.server:app``, built on first use from the environment."""
    if name == "app":
        globals()["app"] = created = create_app()
        return created
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
