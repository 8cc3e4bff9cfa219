"""The three-party server: relays public key material, evaluates, relays sealed partials.

Run it in ``.venv-threeparty`` as ``uvicorn threeparty.server:app`` (settings: THREEPARTY_*
environment variables, see ``ThreePartySettings``). At start-up it runs the engine's known-answer
self-test (a throwaway three-party key set, a fixed probe, the known verdicts) and refuses to
serve if it fails.

What it holds, in memory and bounded (``max_sessions`` sessions, each upload under its size
limit, idle sessions dropped after ``session_ttl_seconds``): each party's X25519 *public* box key,
the round-1 public blobs, the joint public and evaluation keys it combines from them, the round-2
shares, the parties' ciphertexts, the encrypted output, and the partial decryptions *sealed* for
their recipients, which it cannot open. No key share ever reaches it.

Contract (README "Three-party mode" and ``/docs``): see ``threeparty.protocol`` for the routes;
every call under ``/sessions/{sid}`` needs ``Authorization: Bearer <token>`` and the token says
which party calls. Errors are ``{"detail": str, "code": str}`` with the status of
``protocol.ErrorCode``; never a 5xx for anything a client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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

from threeparty import engine, protocol
from threeparty.layout import LAYOUT_PATH, Layout, load_layout
from threeparty.protocol import ErrorCode

logger = logging.getLogger("threeparty.server")

T = TypeVar("T")
MiB = 1024 * 1024


class ThreePartySettings(BaseSettings):
    """Limits of the three-party server; each field can be set by a THREEPARTY_* variable."""

    model_config = SettingsConfigDict(env_prefix="THREEPARTY_")

    max_sessions: int = 8
    session_ttl_seconds: float = 1800.0
    max_round1_bytes: int = 96 * MiB
    max_round2_bytes: int = 24 * MiB
    max_ciphertexts_bytes: int = 24 * MiB
    max_partial_bytes: int = 4 * MiB
    max_concurrent_evaluations: int = 1
    max_waiting_evaluations: int = 4
    max_status_wait_seconds: float = 20.0
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


def blob_error(error: engine.EngineError, what: str) -> ServiceError:
    """422 for what the engine refused (``other_session`` when made under another key set)."""
    code = (
        ErrorCode.other_session if isinstance(error, engine.KeyTagError) else ErrorCode.invalid_blob
    )
    return ServiceError(code, f"{what}: {error}")


# The engine's kind of each round-1 blob.
ROUND1_BLOB_KINDS = {
    "public_key": "public_key",
    "eval_mult": "eval_key",
    "rotation": "rotation_keys",
}


def check_round1(blobs: dict[str, bytes]) -> None:
    """Refuse round-1 blobs that do not deserialize as their kinds."""
    for name, data in blobs.items():
        engine.check_blob(ROUND1_BLOB_KINDS[name], data)


# ---------------------------------------------------------------------------------------------
# Sessions (in memory; only public material and sealed partials)
# ---------------------------------------------------------------------------------------------
def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass
class Session:
    """One three-party session.

    Attributes:
        session_id: 32 hex characters.
        mode: "predict" or "explain" (how many applications one evaluation scores).
        token_digests: SHA-256 of each party's bearer token.
        last_used: time of the last authenticated call (idle sessions expire).
        version: bumped by every change (status long-polls wait for it).
    """

    session_id: str
    mode: str
    token_digests: dict[str, bytes]
    last_used: float
    version: int = 0
    box_keys: dict[str, bytes] = field(default_factory=dict)
    round1: dict[str, dict[str, bytes]] = field(default_factory=dict)
    joint: engine.JointRound1 | None = None
    round2: dict[str, bytes] = field(default_factory=dict)
    relinearization_key: bytes | None = None
    ciphertexts: dict[str, dict[int, bytes]] = field(default_factory=dict)
    output: bytes | None = None
    evaluation_seconds: float | None = None
    evaluating: bool = False
    partials: dict[tuple[str, str], bytes] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def touch(self) -> None:
        """Record a change and wake the status long-polls."""
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def role_of(self, token: str) -> str | None:
        """The party whose token this is, if any (constant-time comparisons)."""
        digest = _digest(token)
        found = None
        for role, expected in self.token_digests.items():
            if hmac.compare_digest(digest, expected):
                found = role
        return found

    def status(self, expires_in: float) -> dict[str, Any]:
        """What every party of the session may know about its progress."""
        return {
            "session_id": self.session_id,
            "mode": self.mode,
            "blocks": protocol.blocks_for(self.mode),
            "version": self.version,
            "expires_in": expires_in,
            "box_keys": {role: key.hex() for role, key in self.box_keys.items()},
            "round1": [role for role in protocol.ROLES if role in self.round1],
            "joint_keys": self.joint is not None,
            "key_tag": self.joint.key_tag if self.joint is not None else None,
            "round2": [role for role in protocol.ROLES if role in self.round2],
            "keys_ready": self.relinearization_key is not None,
            "ciphertexts": [role for role in protocol.ROLES if role in self.ciphertexts],
            "output": self.output is not None,
            "evaluation_seconds": self.evaluation_seconds,
            "partials": [{"sender": s, "recipient": r} for s, r in sorted(self.partials)],
        }


class SessionStore:
    """The live sessions, touched only from the event loop's thread."""

    def __init__(self, config: ThreePartySettings, clock: Callable[[], float] = time.monotonic):
        """An empty store with the settings' limits."""
        self.config = config
        self.clock = clock
        self.sessions: dict[str, Session] = {}

    def expires_in(self, session: Session) -> float:
        """Idle seconds left before the session expires."""
        return max(0.0, session.last_used + self.config.session_ttl_seconds - self.clock())

    def purge_expired(self) -> None:
        """Drop every expired session."""
        for session_id in [s for s, v in self.sessions.items() if self.expires_in(v) <= 0]:
            self.drop(session_id, "expired")

    def drop(self, session_id: str, reason: str) -> None:
        """Forget a session and everything stored for it."""
        session = self.sessions.pop(session_id, None)
        if session is not None:
            session.touch()  # wake its long-polls: they answer 404 next time
            logger.info("session %s dropped (%s)", session_id[:8], reason)

    def create(self, mode: str) -> tuple[Session, dict[str, str]]:
        """A new session and each party's token.

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
        tokens = {role: secrets.token_urlsafe(32) for role in protocol.ROLES}
        session = Session(
            session_id=secrets.token_hex(16),
            mode=mode,
            token_digests={role: _digest(token) for role, token in tokens.items()},
            last_used=self.clock(),
        )
        self.sessions[session.session_id] = session
        logger.info("session %s created (%s)", session.session_id[:8], mode)
        return session, tokens

    def authenticate(self, session_id: str, token: str | None) -> tuple[Session, str]:
        """The live session and the calling party's role.

        Raises:
            ServiceError: unknown_session (404) or unauthorized (401).
        """
        session = self.sessions.get(session_id)
        if session is not None and self.expires_in(session) <= 0:
            self.drop(session_id, "expired")
            session = None
        if session is None:
            raise ServiceError(ErrorCode.unknown_session, "unknown or expired session")
        role = session.role_of(token) if token else None
        if role is None:
            raise ServiceError(ErrorCode.unauthorized, "missing or wrong token for this session")
        session.last_used = self.clock()
        return session, role


# ---------------------------------------------------------------------------------------------
# The use cases
# ---------------------------------------------------------------------------------------------
class ThreePartyService:
    """What the routes do: order checks, engine calls in worker threads, storage."""

    def __init__(self, config: ThreePartySettings, layout: Layout):
        """Create the store and the worker limits (inside the event loop)."""
        self.config = config
        self.layout = layout
        self.store = SessionStore(config)
        # Every engine call goes through one limiter: OpenFHE's key caches are process-global.
        self.crypto = anyio.CapacityLimiter(max(1, config.max_concurrent_evaluations))
        self.evaluations_admitted = 0

    async def _crypto(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(lambda: func(*args), limiter=self.crypto)

    async def _check(self, what: str, func: Callable[..., T], *args: Any) -> T:
        try:
            return await self._crypto(func, *args)
        except engine.EngineError as error:
            raise blob_error(error, what) from None

    async def put_box_key(self, session: Session, role: str, key: bytes) -> None:
        """Register a party's X25519 public box key (once)."""
        if len(key) != protocol.BOX_PUBLIC_KEY_BYTES:
            raise ServiceError(
                ErrorCode.invalid_blob,
                f"a box key is {protocol.BOX_PUBLIC_KEY_BYTES} bytes, got {len(key)}",
            )
        if role in session.box_keys:
            if session.box_keys[role] == key:
                return
            raise out_of_order(f"the {role}'s box key is already registered")
        session.box_keys[role] = key
        session.touch()

    async def put_round1(self, session: Session, role: str, body: bytes) -> None:
        """Store a party's round-1 blobs, in chain order; after the third, combine them."""
        before = protocol.previous_role(role)
        self._require_round1_turn(session, role, before)
        blobs = unpack(body, protocol.ROUND1_KINDS, "round 1")
        await self._check(f"the {role}'s round-1 blobs", check_round1, blobs)
        async with session.lock:
            self._require_round1_turn(session, role, before)
            candidate = {**session.round1, role: blobs}
            if len(candidate) == len(protocol.ROLES):
                session.joint = await self._check(
                    "combining round 1",
                    engine.combine_round1,
                    [engine.Round1Blobs(**candidate[r]) for r in protocol.ROLES],
                )
            # Once combined, nobody needs the parties' round-1 blobs again: keep only who did it.
            session.round1 = {r: {} for r in candidate} if session.joint else candidate
            session.touch()

    @staticmethod
    def _require_round1_turn(session: Session, role: str, before: str | None) -> None:
        if role in session.round1:
            raise out_of_order(f"the {role}'s round 1 is already done")
        if before is not None and before not in session.round1:
            raise out_of_order(f"round 1 goes in chain order: the {before} uploads first")

    def round1_blob(self, session: Session, role: str, kind: str) -> bytes:
        """One party's round-1 blob (409 before it is there)."""
        if role not in session.round1:
            raise out_of_order(f"the {role} has not done round 1 yet")
        if kind not in session.round1[role]:
            raise out_of_order(
                "round 1 is combined: its blobs are no longer kept (use the joint keys)"
            )
        return session.round1[role][kind]

    def joint_blob(self, session: Session, kind: str) -> bytes:
        """A joint key (409 before round 1 is combined)."""
        joint = self._joint(session, "the joint keys")
        return joint.joint_public_key if kind == "public_key" else joint.joint_eval_mult_round1

    @staticmethod
    def _joint(session: Session, what: str) -> engine.JointRound1:
        if session.joint is None:
            raise out_of_order(f"{what} need round 1 combined: all three parties upload first")
        return session.joint

    async def put_round2(self, session: Session, role: str, share: bytes) -> None:
        """Store a party's round-2 share; after the third, combine the relinearization key."""
        joint = self._joint(session, "round-2 shares")
        if role in session.round2:
            raise out_of_order(f"the {role}'s round-2 share is already in")
        await self._check(
            f"the {role}'s round-2 share", engine.check_blob, "mult_key", share, joint.key_tag
        )
        async with session.lock:
            if role in session.round2:
                raise out_of_order(f"the {role}'s round-2 share is already in")
            candidate = {**session.round2, role: share}
            if len(candidate) == len(protocol.ROLES):
                session.relinearization_key = await self._check(
                    "combining round 2",
                    engine.combine_round2,
                    [candidate[r] for r in protocol.ROLES],
                    joint.key_tag,
                )
            session.round2 = (
                {r: b"" for r in candidate} if session.relinearization_key else candidate
            )
            session.touch()

    async def put_ciphertexts(self, session: Session, role: str, body: bytes) -> None:
        """Store a party's ciphertexts (made under this session's joint key)."""
        joint = self._joint(session, "ciphertexts")
        if role in session.ciphertexts:
            raise out_of_order(f"the {role}'s ciphertexts are already in")
        blobs = unpack(body, None, "ciphertexts")
        expected = [str(index) for index in self.layout.party_vectors(role)]
        if sorted(blobs) != sorted(expected):
            raise ServiceError(
                ErrorCode.invalid_blob,
                f"the {role} encrypts the vectors [{', '.join(expected)}]; "
                f"got [{', '.join(sorted(blobs))}]",
            )
        for index, data in blobs.items():
            await self._check(
                f"the {role}'s ciphertext {index}",
                engine.check_blob,
                "ciphertext",
                data,
                joint.key_tag,
            )
        if role in session.ciphertexts:
            raise out_of_order(f"the {role}'s ciphertexts are already in")
        session.ciphertexts[role] = {int(index): data for index, data in blobs.items()}
        session.touch()

    async def evaluate(self, session: Session) -> float:
        """Evaluate once (later calls get the same output); return the evaluation's seconds."""
        missing = [r for r in protocol.ROLES if r not in session.ciphertexts]
        if session.relinearization_key is None or missing:
            waiting = ["all three round-2 shares"] if session.relinearization_key is None else []
            raise out_of_order(
                "evaluation needs "
                + ", ".join(waiting + [f"the {r}'s ciphertexts" for r in missing])
            )
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
        joint = self._joint(session, "evaluation")
        keys = engine.EvaluationKeys(
            key_tag=joint.key_tag,
            relinearization=session.relinearization_key,
            rotation=joint.joint_rotation,
        )
        start = time.perf_counter()
        output = await self._check(
            "evaluation",
            engine.evaluate,
            keys,
            dict(session.ciphertexts),
            protocol.blocks_for(session.mode),
            self.layout,
        )
        session.evaluation_seconds = time.perf_counter() - start
        session.output = output
        session.touch()
        logger.info(
            "session %s evaluated in %.2f s", session.session_id[:8], session.evaluation_seconds
        )

    def output(self, session: Session) -> bytes:
        """The encrypted (masked) output (409 before evaluation)."""
        if session.output is None:
            raise out_of_order("not evaluated yet")
        return session.output

    def put_partial(self, session: Session, sender: str, recipient: str, sealed: bytes) -> None:
        """Relay a sealed partial decryption from ``sender`` to ``recipient`` (once)."""
        if recipient not in protocol.RECIPIENTS or recipient == sender:
            raise ServiceError(
                ErrorCode.invalid_request,
                f"partials go to {' or '.join(protocol.RECIPIENTS)}, never to their sender",
            )
        if session.output is None:
            raise out_of_order("a partial decryption needs the evaluated output first")
        if (sender, recipient) in session.partials:
            raise out_of_order(f"the {sender}'s partial for the {recipient} is already in")
        if not sealed:
            raise ServiceError(ErrorCode.invalid_blob, "an empty sealed partial")
        session.partials[(sender, recipient)] = sealed
        session.touch()

    def partial(self, session: Session, recipient: str, sender: str) -> bytes:
        """The sealed partial ``sender`` left for ``recipient`` (409 before it is there)."""
        if (sender, recipient) not in session.partials:
            raise out_of_order(f"no partial decryption from the {sender} for the {recipient} yet")
        return session.partials[(sender, recipient)]

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
    """Read a body, refusing it (413) as soon as it is over ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ServiceError(ErrorCode.too_large, f"{what} over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ServiceError(ErrorCode.too_large, f"{what} over the limit of {limit} bytes")
    return bytes(body)


class ErrorBody(BaseModel):
    """Every error's body."""

    detail: str
    code: str = Field(description="One of: " + ", ".join(c.value for c in ErrorCode))


class NewSession(BaseModel):
    """What ``POST /sessions`` takes."""

    mode: str = Field(default="predict", pattern="^(predict|explain)$")


class SessionCreated(BaseModel):
    """A new session: hand each party its own code (it holds that party's bearer token)."""

    session_id: str
    mode: str
    codes: dict[str, str] = Field(description="Session code of each party: <session id>.<token>")
    expires_in: float


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

Flow: `POST /sessions` -> three session codes; each party registers its box key, uploads round 1
in chain order (applicant, bank, credit bureau), fetches the joint keys, uploads its round-2
share and its ciphertexts; `POST .../evaluate`; each party fetches the output, seals its partial
decryption for each recipient; the recipients fuse the three partials.
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
            await anyio.to_thread.run_sync(engine.self_test, layout)
        except Exception as error:
            logger.error("known-answer self-test FAILED, refusing to serve: %s", error)
            raise RuntimeError(f"three-party self-test failed: {error}") from error
        logger.info("known-answer self-test passed in %.1f s", time.perf_counter() - start)
        app.state.service = ThreePartyService(config, layout)
        period = min(30.0, max(0.5, config.session_ttl_seconds / 4))
        async with anyio.create_task_group() as tasks:

            async def purge() -> None:
                while True:
                    await anyio.sleep(period)
                    app.state.service.store.purge_expired()

            tasks.start_soon(purge)
            yield
            tasks.cancel_scope.cancel()

    app = FastAPI(
        title="Encrypted credit-card approval: three-party server",
        version=f"{protocol.API_VERSION}.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
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
        summary="Create a session; returns the three parties' codes",
        responses=_errors(422, 503),
    )
    async def create_session(request: Request, body: NewSession | None = None) -> SessionCreated:
        store = service_of(request).store
        session, tokens = store.create((body or NewSession()).mode)
        return SessionCreated(
            session_id=session.session_id,
            mode=session.mode,
            codes={r: protocol.session_code(session.session_id, t) for r, t in tokens.items()},
            expires_in=store.expires_in(session),
        )

    @app.get(
        protocol.STATUS,
        summary="Progress of the session (long-poll with ?since=<version>&wait=<seconds>)",
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

    def upload(
        route: str,
        summary: str,
        body: str,
        limit: Callable[[ThreePartySettings], int],
        what: str,
        use_case: Callable[[ThreePartyService, Session, str, bytes], Awaitable[None]],
    ) -> None:
        """Register a PUT route whose body is bytes under a size limit, given to a use case."""

        async def handler(request: Request, c: Caller = caller_dep) -> Response:
            service, session, role = c
            data = await read_body(request, limit(service.config), what)
            await use_case(service, session, role, data)
            return Response(status_code=204)

        app.put(
            route,
            status_code=204,
            summary=summary,
            name=f"put_{what.replace(' ', '_').replace('-', '_')}",
            responses=_errors(401, 404, 409, 413, 422),
            openapi_extra=_binary_body(body),
        )(handler)

    upload(
        protocol.BOX_KEY,
        "Register the caller's X25519 public box key (32 bytes)",
        "The raw 32-byte X25519 public key.",
        lambda _config: protocol.BOX_PUBLIC_KEY_BYTES,
        "box key",
        ThreePartyService.put_box_key,
    )
    upload(
        protocol.ROUND1,
        "Upload the caller's round-1 public blobs (chain order; the third is combined)",
        "A frame (threeparty.protocol.pack) of public_key, eval_mult and rotation.",
        lambda config: config.max_round1_bytes,
        "round 1",
        ThreePartyService.put_round1,
    )
    upload(
        protocol.ROUND2,
        "Upload the caller's round-2 share (the third is combined)",
        "The engine's round2() output: the caller's share of the relinearization key.",
        lambda config: config.max_round2_bytes,
        "round-2 share",
        ThreePartyService.put_round2,
    )
    upload(
        protocol.CIPHERTEXTS,
        "Upload the caller's ciphertexts",
        "A frame of {index: ciphertext} under the joint public key (the vectors it owns).",
        lambda config: config.max_ciphertexts_bytes,
        "ciphertexts",
        ThreePartyService.put_ciphertexts,
    )

    @app.get(
        protocol.ROUND1_BLOB,
        response_class=Response,
        summary="Download one party's round-1 public blob",
        responses={200: {"content": _BINARY}, **_errors(401, 404, 409, 422)},
    )
    async def get_round1(
        role: str = PathParam(..., pattern=role_path),
        kind: str = PathParam(..., pattern=f"^({'|'.join(protocol.ROUND1_KINDS)})$"),
        c: Caller = caller_dep,
    ) -> Response:
        service, session, _ = c
        return octets(service.round1_blob(session, role, kind))

    @app.get(
        protocol.JOINT,
        response_class=Response,
        summary="Download a joint key (public_key, or eval_mult: the round-1 joint eval-mult key)",
        responses={200: {"content": _BINARY}, **_errors(401, 404, 409, 422)},
    )
    async def get_joint(
        kind: str = PathParam(..., pattern=f"^({'|'.join(protocol.JOINT_KINDS)})$"),
        c: Caller = caller_dep,
    ) -> Response:
        service, session, _ = c
        return octets(service.joint_blob(session, kind))

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

    @app.put(
        protocol.PARTIAL_TO,
        status_code=204,
        summary="Leave the caller's sealed partial decryption for a recipient",
        responses=_errors(401, 404, 409, 413, 422),
        openapi_extra=_binary_body("The partial decryption sealed (X25519) to the recipient."),
    )
    async def put_partial(
        request: Request,
        recipient: str = PathParam(..., pattern=role_path),
        c: Caller = caller_dep,
    ) -> Response:
        service, session, role = c
        body = await read_body(request, service.config.max_partial_bytes, "a sealed partial")
        service.put_partial(session, role, recipient, body)
        return Response(status_code=204)

    @app.get(
        protocol.PARTIAL_FROM,
        response_class=Response,
        summary="Fetch the sealed partial a sender left for the caller",
        responses={200: {"content": _BINARY}, **_errors(401, 404, 409, 422)},
    )
    async def get_partial(
        sender: str = PathParam(..., pattern=role_path), c: Caller = caller_dep
    ) -> Response:
        service, session, role = c
        return octets(service.partial(session, role, sender))

    return app


def __getattr__(name: str) -> Any:
    """``app`` for ``uvicorn threeparty.server:app``, built on first use from the environment."""
    if name == "app":
        globals()["app"] = created = create_app()
        return created
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
