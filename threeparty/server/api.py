"""The three-party REST API: ``create_app(settings)`` over a ``ThreePartyService``.

Routes (``threeparty.protocol``; also at ``/docs``)::

    GET    /health                                     -> 200 once the self-test passed
    POST   /sessions                                   {mode, roster, applications}
                                                       -> 201 {session_id, invitations, ...}
    POST   /sessions/{sid}/join                        {role, invitation, token_digest,
                                                        signature} -> 204
    GET    /sessions/{sid}/status?since=&wait=         -> 200 progress and signed transcript
    DELETE /sessions/{sid}                             -> 204
    PUT    /sessions/{sid}/steps/{step}                framed blobs + statement -> 204
    GET    /sessions/{sid}/steps/{step}/{role}/{name}  -> 200 octet-stream
    POST   /sessions/{sid}/evaluate                    -> 200 {evaluation_seconds}
    GET    /sessions/{sid}/output                      -> 200 octet-stream

Every call under ``/sessions/{sid}`` but ``join`` needs ``Authorization: Bearer <token>``.
Errors are ``{"detail": str, "code": str}`` (``errors.py``). The lifespan runs the engine's
known-answer self-test, starts the sandbox's workers and reads back the stored sessions; nothing
of that happens at import, so ``app = create_app()`` in ``__init__`` costs only definitions.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, NamedTuple

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhe_server import body as request_body
from fhe_server import errors as fhe_errors
from fhe_server.app_base import base_app
from threeparty import engine, protocol, transcript
from threeparty.layout import load_layout
from threeparty.protocol import ErrorCode
from threeparty.sandbox import Sandbox
from threeparty.server.errors import (
    ServiceError,
    from_body_error,
    http_error_handler,
    service_error_handler,
    validation_error_handler,
)
from threeparty.server.service import ThreePartyService
from threeparty.server.sessions import Session
from threeparty.server.settings import MiB, ThreePartySettings

logger = logging.getLogger("threeparty.server")


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """Read an octet-stream body within ``limit`` with the single-key server's reader.

    Raises:
        ServiceError: too_large (413), unsupported_media_type (415) or invalid_request.
    """
    try:
        return await request_body.read_body(request, limit, limit, what)
    except fhe_errors.ServiceError as error:
        raise from_body_error(error) from None


# ---------------------------------------------------------------------------------------------
# Bodies and OpenAPI pieces
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Dependencies
# ---------------------------------------------------------------------------------------------
async def get_service(request: Request) -> ThreePartyService:
    """The service built by the lifespan."""
    return request.state.service


bearer = HTTPBearer(auto_error=False, description="The token part of the party's code.")
ServiceDep = Annotated[ThreePartyService, Depends(get_service)]


class Caller(NamedTuple):
    """An authenticated call: the service, the live session and the calling party's role."""

    service: ThreePartyService
    session: Session
    role: str


async def caller(
    sid: str,
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """Dependency: the path's session and the party whose bearer token was sent (401, 404)."""
    token = credentials.credentials if credentials is not None else None
    session, role = service.store.authenticate(sid, token)
    return Caller(service, session, role)


CallerDep = Annotated[Caller, Depends(caller)]
StepPath = Annotated[str, PathParam(pattern=f"^({'|'.join(protocol.STEPS)})$")]
RolePath = Annotated[str, PathParam(pattern=f"^({'|'.join(protocol.ROLES)})$")]
NamePath = Annotated[str, PathParam(pattern=f"^{protocol.BLOB_NAME_PATTERN.pattern}$")]


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------
router = APIRouter()


@router.get("/health", summary="Status (answers only after the known-answer self-test passed)")
async def health() -> dict[str, Any]:
    """Answer at once; the server answers nothing before its self-test passed."""
    return {"status": "ok", "api_version": protocol.API_VERSION, "self_test": "passed"}


@router.post(
    protocol.SESSIONS,
    status_code=201,
    response_model=SessionCreated,
    summary="Create a session for a roster of three verify keys; returns three invitations",
    responses=_errors(422, 429, 503),
)
async def create_session(request: Request, body: NewSession, service: ServiceDep) -> SessionCreated:
    """A new session within the client's quota and the server's room (429, 503 otherwise)."""
    store = service.store
    client = request.client.host if request.client is not None else "unknown"
    if body.mode != "batch" and body.applications != 1:
        raise ServiceError(ErrorCode.invalid_request, "several applications need the batch mode")
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


@router.post(
    protocol.JOIN,
    status_code=204,
    summary="Redeem the caller's invitation for a bearer token bound to its identity key",
    responses=_errors(403, 404, 422),
)
async def join(sid: str, body: Join, service: ServiceDep) -> Response:
    """Bind the party's token (see ``SessionStore.join``)."""
    service.store.join(sid, body.role, body.invitation, body.token_digest, body.signature)
    return Response(status_code=204)


@router.get(
    protocol.STATUS,
    summary="Progress and signed transcript (long-poll with ?since=<version>&wait=<seconds>)",
    responses=_errors(401, 404, 422),
)
async def status(
    c: CallerDep,
    since: Annotated[int, Query(alias=protocol.STATUS_SINCE)] = -1,
    wait: Annotated[float, Query(alias=protocol.STATUS_WAIT)] = 0.0,
) -> dict[str, Any]:
    """The status once it changed after ``since`` (or after ``wait`` seconds)."""
    return await c.service.wait_status(c.session, since, wait)


@router.delete(protocol.SESSION, status_code=204, summary="Delete the session (any party)")
async def delete_session(c: CallerDep) -> Response:
    """Forget the session and everything stored for it."""
    c.service.store.drop(c.session.session_id, f"deleted by the {c.role}")
    return Response(status_code=204)


@router.put(
    protocol.STEP,
    status_code=204,
    summary="Upload one of the caller's steps: its blobs and its signed statement",
    responses=_errors(401, 404, 409, 413, 415, 422, 503),
    openapi_extra=_binary_body(
        "A frame (threeparty.protocol.pack) of the step's blobs and `statement`, the "
        "signed envelope (JSON) over their hashes."
    ),
)
async def put_step(request: Request, step: StepPath, c: CallerDep) -> Response:
    """Check and store the step (503 before its body is read when too many uploads run)."""
    with c.service.upload_slot():
        data = await read_body(request, c.service.step_limit(step), f"the {step} upload")
        await c.service.put_step(c.session, c.role, step, data)
    return Response(status_code=204)


@router.get(
    protocol.BLOB,
    response_class=Response,
    summary="Download one blob of a party's step",
    responses={200: {"content": _BINARY}, **_errors(401, 404, 409, 422)},
)
async def get_blob(step: StepPath, role: RolePath, name: NamePath, c: CallerDep) -> Response:
    """One blob (409 before the step is in)."""
    return octets(c.service.blob(c.session, role, step, name))


@router.post(
    protocol.EVALUATE,
    response_model=Evaluated,
    summary="Evaluate the tree (once; later calls return at once)",
    responses=_errors(401, 404, 409, 422, 503),
)
async def evaluate(c: CallerDep) -> Evaluated:
    """Evaluate once every input is in (409 before)."""
    return Evaluated(evaluation_seconds=await c.service.evaluate(c.session))


@router.get(
    protocol.OUTPUT,
    response_class=Response,
    summary="Download the encrypted, masked output",
    responses={200: {"content": _BINARY}, **_errors(401, 404, 409)},
)
async def get_output(c: CallerDep) -> Response:
    """The encrypted output (409 before evaluation)."""
    return octets(c.service.output(c.session))


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------
async def purge_periodically(service: ThreePartyService, period_seconds: float) -> None:
    """Drop expired sessions every ``period_seconds``, for ever."""
    while True:
        await anyio.sleep(period_seconds)
        try:
            service.store.purge_expired()
        except (ServiceError, OSError) as error:  # the storage is down: try again next time
            logger.error("purging expired sessions failed: %s", error)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Run ``engine.self_test()`` (refuse to start if it fails), then serve and purge."""
    config: ThreePartySettings = app.state.settings
    start = time.perf_counter()
    try:
        layout = load_layout(config.layout_path)
        sizes = await anyio.to_thread.run_sync(engine.self_test, layout)
    except Exception as error:
        logger.error("known-answer self-test FAILED, refusing to serve: %s", error)
        raise RuntimeError(f"three-party self-test failed: {error}") from error
    logger.info("known-answer self-test passed in %.1f s", time.perf_counter() - start)
    sandbox = Sandbox(config.sandbox_workers, config.sandbox_memory_mib * MiB, config.layout_path)
    try:
        service = ThreePartyService(config, layout, sandbox, sizes)
        restored = service.store.restore()
        where = "Redis" if config.store_url else config.store_dir or "memory"
        logger.info("%d session(s) restored from %s", restored, where)
        period = min(30.0, max(0.5, config.session_ttl_seconds / 4))
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(purge_periodically, service, period)
            yield {"service": service}
            tasks.cancel_scope.cancel()
    finally:
        sandbox.close()


def create_app(config: ThreePartySettings | None = None) -> FastAPI:
    """Build the application (default settings: the THREEPARTY_* environment).

    The lifespan runs ``engine.self_test()``; if it fails the server does not start.
    """
    return base_app(
        title="Encrypted credit-card approval: three-party server",
        version=f"{protocol.API_VERSION}.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        settings=config or ThreePartySettings(),
        router=router,
        handlers={
            ServiceError: service_error_handler,
            RequestValidationError: validation_error_handler,
            StarletteHTTPException: http_error_handler,
        },
    )
