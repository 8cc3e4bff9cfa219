"""The errors the client library raises, each with a stable ``code`` a page can translate.

The server's refusals map to classes through the single-key contract's error table
(``contracts.single_key.ERRORS``): a class names its contract code, and its status and message
come from the table. Standard library and ``contracts`` only, so the three-party party program
(Python 3.10) can use ``ClientError`` and ``InvalidFieldError`` too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from contracts.single_key import ERRORS, TRANSIENT_HEADER, TRANSIENT_STATUSES, ErrorCode
from contracts.wire import RETRY_AFTER_HEADER


class ClientError(Exception):
    """Base class of every error the client library raises on purpose.

    Attributes:
        message: readable English message.
        code: short stable key (e.g. "not_found", "order_keys_first") a page can translate.
        details: extra values a translated message may show (e.g. ``parties``, ``retry_after``).
    """

    code: str = "client_error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class InvalidFieldError(ClientError, ValueError):
    """A field value is missing, of the wrong type, out of range or not a known category."""

    code = "invalid_field"


class ServerError(ClientError):
    """The server refused a request, could not be reached, or a step was asked out of order.

    Attributes:
        status_code: the HTTP status the server answered, or None (unreachable, or raised locally).
        transient: the failure was transient (502, 504, or a 503 marked so: a replica or the
            session store went away, nothing changed); the library retries those by itself.
    """

    code = "server_error"
    transient = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, code=code, **details)
        self.status_code = status_code


class AuthenticationError(ServerError):
    """401: the session token is missing or wrong."""

    code = ErrorCode.unauthorized


class SessionNotFoundError(ServerError):
    """404: the server does not know the session (never opened, deleted or expired)."""

    code = ErrorCode.not_found


class StepOrderError(ServerError):
    """409 from the server, or a step asked locally before the steps it needs.

    Local codes: "order_keys_first", "order_inputs_first" (details: ``parties``, the missing ones),
    "order_run_first", "order_decrypt_first"; "order_server" when the server answered 409.
    """

    code = ErrorCode.order_server


class PayloadTooLargeError(ServerError):
    """413: a body was over the server's size limit."""

    code = ErrorCode.too_large


class InvalidPayloadError(ServerError):
    """422: the server could not read the bytes sent (or an unknown party)."""

    code = ErrorCode.invalid_payload


class ServerBusyError(ServerError):
    """503: the server's FHE queue is full.

    Attributes:
        retry_after: seconds the server asks to wait before retrying (None if it did not say).
    """

    code = ErrorCode.busy

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)
        self.retry_after = retry_after


class TooManySessionsError(ServerBusyError):
    """429: this client (IP address) opened as many sessions as the server's quota allows.

    A kind of ``ServerBusyError``: ``retry_after`` says when the oldest of them leaves the quota's
    window, and ``retry_while_busy`` waits for it like for a full queue.
    """

    code = ErrorCode.too_many_sessions


class ServerUnreachableError(ServerError):
    """No answer from the server (connection refused, DNS, timeout); code "timeout" on timeouts."""

    code = "unreachable"


_TYPED_ERRORS: tuple[type[ServerError], ...] = (
    AuthenticationError,
    SessionNotFoundError,
    StepOrderError,
    PayloadTooLargeError,
    InvalidPayloadError,
    ServerBusyError,
    TooManySessionsError,
)
STATUS_ERRORS: dict[int, type[ServerError]] = {
    error.status: next(cls for cls in _TYPED_ERRORS if cls.code == error.code)
    for error in ERRORS.values()
    if any(cls.code == error.code for cls in _TYPED_ERRORS)
}
"""The class raised for each status of the contract's table (others raise ``ServerError``)."""

LOCAL_CODES: frozenset[str] = frozenset(
    {
        "bad_response",
        "order_keys_first",
        "order_inputs_first",
        "order_run_first",
        "order_decrypt_first",
        "timeout",
    }
)
"""Codes the library sets on an instance rather than a class (raised without a server status)."""

ERROR_CODES: frozenset[str] = frozenset(
    {
        ClientError.code,
        InvalidFieldError.code,
        ServerError.code,
        ServerUnreachableError.code,
        *(cls.code for cls in _TYPED_ERRORS),
        *LOCAL_CODES,
    }
)
"""Every ``code`` the library can raise (a page keeps one translated message per code)."""


def parse_seconds(value: str | None) -> float | None:
    """Seconds from a header (Retry-After's delta-seconds form).

    Args:
        value: the header's value, or None when absent.

    Returns:
        The seconds, or None if absent, unreadable, negative or not finite.
    """
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def error_for_status(status: int, detail: str, headers: Mapping[str, str]) -> ServerError:
    """Build the typed error of a non-success answer, from the contract's table.

    Args:
        status: the HTTP status.
        detail: the server's ``detail`` (or the start of its body).
        headers: the answer's headers (Retry-After, the transient marker).

    Returns:
        The error to raise: its class and message follow ``contracts.single_key.ERRORS``.
    """
    known = ERRORS.get(status)
    summary = known.summary if known is not None and known.summary else None
    message = f"HTTP {status}: {summary or 'the server answered an error'} ({detail})"
    error_class = STATUS_ERRORS.get(status, ServerError)
    if issubclass(error_class, ServerBusyError):
        error: ServerError = error_class(
            message,
            retry_after=parse_seconds(headers.get(RETRY_AFTER_HEADER)),
            status_code=status,
            detail=detail,
        )
    else:
        error = error_class(message, status_code=status, detail=detail)
    marked = status == 503 and TRANSIENT_HEADER in headers
    error.transient = status in TRANSIENT_STATUSES or marked
    return error
