"""Reading request bodies: chunk by chunk within their limits, and draining refused ones."""

from __future__ import annotations

import anyio
from starlette.requests import Request

from contracts.wire import CONTENT_TYPE_HEADER, OCTET_STREAM
from fhe_server.errors import (
    IncompleteBodyError,
    InvalidPayloadError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from settings import ServerSettings

# Scope key set once a request's body has been received to its end.
BODY_DONE = "fhe.body_done"
# Scope key set when a request is refused before any of its body was read: the server (uvicorn)
# then discards the rest of the body as it arrives and keeps the connection, which costs neither
# the app nor a reset connection (closing with unread bytes resets it, and nginx in front would
# take that for a failed replica).
BODY_LEFT_UNREAD = "fhe.body_left_unread"


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
        UnsupportedMediaTypeError: if the Content-Type is not application/octet-stream.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"{what} over the limit of {limit} bytes")
    media_type = request.headers.get(CONTENT_TYPE_HEADER, "").split(";", 1)[0].strip().lower()
    if media_type != OCTET_STREAM:
        # Also what keeps other web sites out: a browser sends a cross-site form or text/plain
        # body without asking first, but an octet-stream body only after a CORS preflight, which
        # this server never grants.
        raise UnsupportedMediaTypeError(
            f"send {what} as {OCTET_STREAM}, not {media_type or 'without a Content-Type'}"
        )
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
    request: Request,
    error: Exception,
    config: ServerSettings,
    headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """Headers of an error answer: ``Connection: close`` unless the body was read to its end.

    A request refused before any of its body was read (``BODY_LEFT_UNREAD``) keeps its
    connection: the server discards the rest of the body itself.
    """
    if request.scope.get(BODY_LEFT_UNREAD):
        return dict(headers or {})
    finished = not isinstance(error, PayloadTooLargeError) and await finish_body(
        request, limit=config.max_ciphertext_bytes, seconds=config.error_drain_seconds
    )
    if finished:
        return dict(headers or {})
    return {**(headers or {}), "Connection": "close"}
