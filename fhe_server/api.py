"""The REST API: ``create_app(settings)`` builds the FastAPI application over a ``ScoringService``.

Contract (also at ``/docs``)::

    GET    /health                                -> 200 {"status" ("ok" or "degraded"),
                                                          "store", "api_version", "model",
                                                          "replica", "key_cache", "fhe_queue"}
    POST   /sessions                              body: evaluation keys (octet-stream)
                                                  -> 201 {"session_id", "token", "expires_in"}
    PUT    /sessions/{session_id}/inputs/{party}  body: that party's ciphertext -> 204
    POST   /sessions/{session_id}/predict         -> 200 {"fhe_execution_time": seconds}
    GET    /sessions/{session_id}/output          -> 200 octet-stream: the encrypted verdict
    POST   /sessions/{session_id}/explain         body: ciphertext of the candidate rows
                                                  -> 200 octet-stream, header X-FHE-Execution-Time
    DELETE /sessions/{session_id}                 -> 204
    GET    /admission                             -> 204, or 403 with the refusal in headers
                                                     (for nginx's auth_request; not in /docs)

Every call under ``/sessions/{session_id}`` needs ``Authorization: Bearer <token>``. Errors are
JSON ``{"detail": "..."}`` with the statuses of ``contracts.single_key.ERRORS``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from contracts.parties import Party
from contracts.single_key import (
    ADMISSION_PATH,
    API_VERSION,
    BATCH_PATH,
    BATCH_ROWS,
    CANDIDATES,
    ERRORS,
    EXECUTION_TIME_HEADER,
    EXPLAIN_PATH,
    HEALTH_PATH,
    INPUT_PATH,
    OUTPUT_PATH,
    PREDICT_PATH,
    REFUSAL_DETAIL_HEADER,
    REFUSAL_STATUS_HEADER,
    SESSION_PATH,
    SESSIONS_PATH,
)
from contracts.wire import OCTET_STREAM
from fhe_server.app_base import base_app
from fhe_server.body import BODY_LEFT_UNREAD, error_headers, read_body
from fhe_server.errors import InvalidTokenError, RetryLaterError, ServiceError
from fhe_server.service import ScoringService, build_service
from fhe_server.session_store import SessionStore
from settings import ServerSettings

logger = logging.getLogger("fhe_server")

DESCRIPTION = """
Scores encrypted credit-card applications with a decision tree under fully homomorphic
encryption (Concrete). The server only ever holds evaluation keys and ciphertexts; only the
client, which keeps the secret key, can decrypt the verdict.

**Flow**: `POST /sessions` with the serialized evaluation keys, then each party
`PUT /sessions/{id}/inputs/{party}` its serialized ciphertext, `POST /sessions/{id}/predict`,
`GET /sessions/{id}/output` and decrypt. `POST /sessions/{id}/explain` scores other
credit-bureau rows against the stored applicant and bank inputs.

Binary bodies are `application/octet-stream` (any other Content-Type: 415). Every call under
`/sessions/{id}` needs `Authorization: Bearer <token>` (the token returned at creation). Errors
are `{"detail": "..."}` JSON; a request addressed to a host name the server does not accept
(setting `FHE_ALLOWED_HOSTS`) gets 400.
"""


# ---------------------------------------------------------------------------------------------
# Response models and OpenAPI pieces
# ---------------------------------------------------------------------------------------------
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

    status: str = Field(
        examples=["ok"], description='"ok", or "degraded" when the session store is down.'
    )
    store: dict[str, bool] = Field(
        description="The session store answered lately (reachable) and the replica follows "
        "the removed sessions (subscribed)."
    )
    api_version: str
    model: dict[str, Any] = Field(description="Library versions, parameters and input shapes.")
    replica: str = Field(description="This server process's name (FHE_REPLICA_NAME).")
    key_cache: dict[str, int] = Field(
        description="Prepared evaluation keys: hits and misses (preparations) since start, "
        "size and capacity."
    )
    fhe_queue: dict[str, int] = Field(
        description="FHE requests admitted now (running or waiting) and how many may be."
    )


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorDetail, "description": ERRORS[code].meaning} for code in codes}


def _timed_binary(description: str, *codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of a route answering ciphertext bytes and its FHE time."""
    ok = {
        **BINARY_RESPONSE,
        "description": description,
        "headers": {
            EXECUTION_TIME_HEADER: {
                "description": "Seconds spent in FHE.",
                "schema": {"type": "number"},
            }
        },
    }
    return {200: ok, **_errors(401, 404, *codes, 413, 415, 422, 503)}


def _timed_answer(output: bytes, elapsed: float) -> Response:
    """Ciphertext bytes with the FHE time in ``EXECUTION_TIME_HEADER``."""
    return Response(
        content=output,
        media_type=OCTET_STREAM,
        headers={EXECUTION_TIME_HEADER: f"{elapsed:.6f}"},
    )


def _binary_body(description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        }
    }


BINARY_RESPONSE = {"content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}}}


# ---------------------------------------------------------------------------------------------
# Dependencies
# ---------------------------------------------------------------------------------------------
def app_settings(request: Request) -> ServerSettings:
    """The settings the app was created with (``create_app``)."""
    return request.app.state.settings


async def get_service(request: Request) -> ScoringService:
    """The service built by the lifespan."""
    return request.state.service


bearer = HTTPBearer(auto_error=False, description="The token returned by POST /sessions.")
SettingsDep = Annotated[ServerSettings, Depends(app_settings)]
ServiceDep = Annotated[ScoringService, Depends(get_service)]
SessionIdPath = Annotated[
    str, PathParam(description="The session id returned by POST /sessions (32 hex characters).")
]


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


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------
router = APIRouter()


@router.get(HEALTH_PATH, response_model=Health, summary="Server status and model versions")
async def health(request: Request, service: ServiceDep) -> Health:
    """Answer at once, even while FHE computations run.

    The status is "degraded" (still 200: this replica answers) when the session store did not
    answer lately or the replica's subscription to removed sessions is down.
    """
    cache = service.key_cache
    store = service.store_status()
    return Health(
        status="ok" if all(store.values()) else "degraded",
        store=store,
        api_version=API_VERSION,
        model=service.model.summary(),
        replica=app_settings(request).replica_name or f"{socket.gethostname()}:{os.getpid()}",
        key_cache={
            "hits": cache.hits,
            "misses": cache.misses,
            "size": len(cache),
            "capacity": cache.capacity,
        },
        fhe_queue={"admitted": service.gate.admitted, "capacity": service.gate.capacity},
    )


@router.get(ADMISSION_PATH, include_in_schema=False)
async def admission(request: Request, service: ServiceDep) -> Response:
    """Whether a creation from this client would be admitted now (asked by nginx, no body).

    nginx asks before it streams a creation's body (the 25 MB keys) to a replica, and answers a
    refusal itself: 403 carries the refusal's status (429 or 503), detail, Retry-After and
    transient mark in headers, which nginx's ``auth_request`` passes on.
    """
    client = request.client.host if request.client is not None else "unknown"
    try:
        await service.check_room(client)
    except RetryLaterError as refused:
        headers = {
            **(refused.headers() or {}),
            REFUSAL_STATUS_HEADER: str(int(refused.status_code)),
            REFUSAL_DETAIL_HEADER: str(refused),
        }
        return JSONResponse(status_code=403, content={"detail": str(refused)}, headers=headers)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    SESSIONS_PATH,
    status_code=status.HTTP_201_CREATED,
    response_model=SessionCreated,
    summary="Open a session with the client's evaluation keys",
    responses=_errors(413, 415, 422, 429, 503),
    openapi_extra=_binary_body(
        "`client.evaluation_keys.serialize()` of a key set generated from this model's client "
        "specs (exact size and header checked)."
    ),
)
async def create_session(
    request: Request, service: ServiceDep, config: SettingsDep
) -> SessionCreated:
    """Store the evaluation keys and return the session id and its bearer token (shown once).

    Refused with 503 when the server holds as many sessions as it can (live sessions are never
    evicted), with 429 when this client opened its quota of sessions; both say Retry-After, and
    both are checked before the body is read, so a refusal costs no upload to the replica.
    """
    client = request.client.host if request.client is not None else "unknown"
    try:
        await service.check_room(client)
    except ServiceError:
        request.scope[BODY_LEFT_UNREAD] = True
        raise
    data = await read_body(
        request,
        limit=config.max_evaluation_key_bytes,
        expected=service.model.wire["evaluation_keys"].length,
        what="evaluation keys",
    )
    session_id, token = await service.create_session(data, client)
    return SessionCreated(session_id=session_id, token=token, expires_in=config.session_ttl_seconds)


@router.put(
    INPUT_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Upload one party's encrypted input",
    responses=_errors(401, 404, 413, 415, 422),
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


@router.post(
    PREDICT_PATH,
    response_model=PredictResult,
    summary="Run the encrypted decision tree",
    responses=_errors(401, 404, 409, 422, 503),
)
async def predict(session_id: SessionDep, service: ServiceDep) -> PredictResult:
    """Needs all three inputs (409 otherwise); stores the encrypted verdict."""
    elapsed = await service.predict(session_id)
    return PredictResult(fhe_execution_time=elapsed)


@router.get(
    OUTPUT_PATH,
    response_class=Response,
    summary="Download the encrypted verdict",
    responses={200: BINARY_RESPONSE, **_errors(401, 404, 409)},
)
async def get_output(session_id: SessionDep, service: ServiceDep) -> Response:
    """The verdict of the current inputs (409 if predict has not run since the last upload)."""
    return Response(content=await service.output(session_id), media_type=OCTET_STREAM)


@router.post(
    EXPLAIN_PATH,
    response_class=Response,
    summary="Score candidate credit-bureau rows",
    responses=_timed_binary("The encrypted verdict of every candidate row.", 409),
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
        expected=service.model.wire[CANDIDATES].length,
        what="the candidates ciphertext",
    )
    output, elapsed = await service.explain(session_id, data)
    return _timed_answer(output, elapsed)


@router.post(
    BATCH_PATH,
    response_class=Response,
    summary="Decide a batch of applications (a portfolio)",
    responses=_timed_binary(f"The encrypted verdicts of the {BATCH_ROWS} applications."),
    openapi_extra=_binary_body(
        f"The three parties' ciphertexts of {BATCH_ROWS} applications, one after the other: "
        '`b"".join(v.serialize() for v in client.encrypt(applicant_rows, bank_rows, '
        'credit_bureau_rows, function_name="predict_batch"))`.'
    ),
)
async def predict_batch(
    request: Request, session_id: SessionDep, service: ServiceDep, config: SettingsDep
) -> Response:
    """Run the tree on many applications in one call; the session's inputs are not touched."""
    data = await read_body(
        request,
        limit=max(config.max_ciphertext_bytes, service.batch_bytes),
        expected=service.batch_bytes,
        what="the batch ciphertexts",
    )
    output, elapsed = await service.predict_batch(session_id, data)
    return _timed_answer(output, elapsed)


@router.delete(
    SESSION_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete the session and everything stored for it",
    responses=_errors(401, 404),
)
async def delete_session(session_id: SessionDep, service: ServiceDep) -> Response:
    """Remove the keys, inputs and verdict of the session."""
    await service.delete(session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------------------------------------
# Error handlers
# ---------------------------------------------------------------------------------------------
async def service_error_handler(request: Request, error: ServiceError) -> JSONResponse:
    """Turn a service error into its status and ``{"detail": ...}``.

    The rest of a small refused body is read first; after a large one (e.g. a gigabyte sent to
    an upload route) the connection is closed instead of reading on.
    """
    headers = await error_headers(request, error, app_settings(request), error.headers())
    return JSONResponse(
        status_code=error.status_code, content={"detail": str(error)}, headers=headers
    )


async def validation_error_handler(request: Request, error: RequestValidationError) -> JSONResponse:
    """Answer FastAPI's own validation errors (e.g. an unknown party) as 422 with a text detail."""
    parts = []
    for item in error.errors():
        location = ".".join(str(piece) for piece in item.get("loc", ()))
        parts.append(f"{location}: {item.get('msg', 'invalid')}")
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content={"detail": "; ".join(parts) or "invalid request"},
        headers=await error_headers(request, error, app_settings(request)),
    )


async def unexpected_error_handler(request: Request, error: Exception) -> JSONResponse:
    """Log an unexpected error with its trace and answer without leaking it."""
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(status_code=500, content={"detail": "internal server error"})


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


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Load the deployment once, purge expired sessions periodically, refuse a bad start."""
    config: ServerSettings = app.state.settings
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


def create_app(config: ServerSettings) -> FastAPI:
    """Build the application; the deployment is loaded when it starts (its lifespan).

    Args:
        config: the server settings every route and the lifespan use.
    """
    return base_app(
        title="Encrypted credit-card approval: FHE server",
        version=f"{API_VERSION}.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        settings=config,
        router=router,
        handlers={
            ServiceError: service_error_handler,
            RequestValidationError: validation_error_handler,
            Exception: unexpected_error_handler,
        },
    )
