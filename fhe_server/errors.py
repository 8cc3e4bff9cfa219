"""The service's errors: each one is the client's doing (or a full server) and maps to one status.

The API answers a ``ServiceError`` with its ``status_code``, its ``headers()`` and the JSON body
``{"detail": str(error)}``; the statuses and their meanings are listed in
``contracts.single_key.ERRORS``.
"""

from __future__ import annotations

from http import HTTPStatus

from contracts.single_key import TRANSIENT_HEADER
from contracts.wire import BEARER_SCHEME, RETRY_AFTER_HEADER, WWW_AUTHENTICATE_HEADER


class ServiceError(Exception):
    """An error answered with ``status_code`` and ``{"detail": str(error)}``."""

    status_code: int = HTTPStatus.BAD_REQUEST

    def headers(self) -> dict[str, str] | None:
        """Extra response headers."""
        return None


class IncompleteBodyError(ServiceError):
    """The client went away before the end of its request body (nobody reads the answer)."""

    status_code = HTTPStatus.BAD_REQUEST


class InvalidTokenError(ServiceError):
    """Missing or wrong bearer token."""

    status_code = HTTPStatus.UNAUTHORIZED

    def headers(self) -> dict[str, str] | None:
        """Tell the client which authentication scheme to use."""
        return {WWW_AUTHENTICATE_HEADER: BEARER_SCHEME}


class SessionNotFoundError(ServiceError):
    """Unknown, expired or deleted session (or a malformed session id)."""

    status_code = HTTPStatus.NOT_FOUND


class StepOutOfOrderError(ServiceError):
    """A step was asked for before the steps it depends on."""

    status_code = HTTPStatus.CONFLICT


class PayloadTooLargeError(ServiceError):
    """A request body over its configured limit."""

    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaTypeError(ServiceError):
    """A binary body sent with another Content-Type than application/octet-stream."""

    status_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class InvalidPayloadError(ServiceError):
    """Bytes that are not what the route expects (wrong length, header or encoding)."""

    status_code = HTTPStatus.UNPROCESSABLE_ENTITY


class RetryLaterError(ServiceError):
    """A refusal that says, in Retry-After, when the same request may succeed."""

    def __init__(self, message: str, retry_after: int):
        """Build the error with the number of seconds the client should wait."""
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str] | None:
        """Tell the client when to retry."""
        return {RETRY_AFTER_HEADER: str(self.retry_after)}


class TooManySessionsError(RetryLaterError):
    """This client opened its quota of sessions within the quota's window."""

    status_code = HTTPStatus.TOO_MANY_REQUESTS


class ServerBusyError(RetryLaterError):
    """Too many FHE computations running and waiting, or the store is full; retry later."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE


class StoreUnavailableError(ServerBusyError):
    """The session store cannot be reached or cannot write now (restarting, read-only).

    Nothing was changed, and the same request can be sent again at once to any replica: the
    answer says so with ``TRANSIENT_HEADER``, which the client library retries by itself.
    """

    def headers(self) -> dict[str, str] | None:
        """Retry-After, and the mark of a transient failure."""
        return {**(super().headers() or {}), TRANSIENT_HEADER: "1"}
