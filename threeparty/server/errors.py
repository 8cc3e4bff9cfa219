"""The three-party server's errors: ``ServiceError`` of a ``protocol.ErrorCode``, its handlers.

Every refusal is a ``ServiceError`` of a code of ``threeparty.protocol.ErrorCode`` (the one table
of codes and their statuses), answered ``{"detail": str, "code": str}``; FastAPI's own validation
and routing errors are answered in the same shape, never as a 5xx.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhe_server import errors as fhe_errors
from threeparty.protocol import ErrorCode
from threeparty.sandbox import SandboxError


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


def unknown_session() -> ServiceError:
    """404: no such live session."""
    return ServiceError(ErrorCode.unknown_session, "unknown or expired session")


def sandbox_error(error: SandboxError, what: str) -> ServiceError:
    """422 for what a worker refused, died on or timed out on (the server goes on)."""
    code = ErrorCode.other_session if error.code == "other_session" else ErrorCode.invalid_blob
    return ServiceError(code, f"{what}: {error}")


def from_body_error(error: fhe_errors.ServiceError) -> ServiceError:
    """The three-party code of a refusal by the single-key server's body reader."""
    if isinstance(error, fhe_errors.PayloadTooLargeError):
        return ServiceError(ErrorCode.too_large, str(error))
    if isinstance(error, fhe_errors.UnsupportedMediaTypeError):
        return ServiceError(ErrorCode.unsupported_media_type, str(error))
    return ServiceError(ErrorCode.invalid_request, str(error))


async def service_error_handler(_request: Request, error: ServiceError) -> JSONResponse:
    """Answer a ``ServiceError``."""
    return error.response()


async def validation_error_handler(
    _request: Request, error: RequestValidationError
) -> JSONResponse:
    """FastAPI's validation errors as ``invalid_request`` with a text detail."""
    parts = [
        f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg', 'invalid')}"
        for item in error.errors()
    ]
    return ServiceError(ErrorCode.invalid_request, "; ".join(parts)).response()


async def http_error_handler(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Routing errors (unknown path, wrong method) with their 4xx status and a code."""
    answer = ServiceError(ErrorCode.not_found, str(error.detail)).response()
    answer.status_code = error.status_code if 400 <= error.status_code < 500 else 404
    return answer
