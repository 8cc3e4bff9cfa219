"""The wire contract between the FHE server and its clients, named once.

Parties, paths, headers, media type and the error codes every refusal maps to. Both the server
(``fhe_server.api``) and the client library (``backend.py``) import these names; this module
imports nothing beyond the standard library (no concrete, no FastAPI), so any client can use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

API_VERSION = "1"


class StrEnum(str, Enum):  # noqa: UP042 (enum.StrEnum is Python 3.11+)
    """``enum.StrEnum`` that also runs on Python 3.10, the three-party engine's interpreter.

    The party clients of the three-party mode import this module (through ``settings``) in
    ``.venv-threeparty``; a member is its value as a string, in ``str()`` and in formatting.
    """

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Party(StrEnum):
    """The parties whose ciphertexts a session holds, in the circuit's argument order."""

    applicant = "applicant"
    bank = "bank"
    credit_bureau = "credit_bureau"


PARTIES: tuple[str, ...] = tuple(party.value for party in Party)
# Name of explain's third input (the encrypted candidate credit-bureau rows).
CANDIDATES = "candidates"

# Session ids are secrets.token_hex(16): 128 random bits. Anything else is never a session.
SESSION_ID_PATTERN = re.compile(r"[0-9a-f]{32}")

# ---------------------------------------------------------------------------------------------
# Paths (format the templates with session_id= and party=)
# ---------------------------------------------------------------------------------------------
HEALTH_PATH = "/health"
# Asked by nginx before it streams a creation's body (``auth_request``): 204 if a new session
# would be admitted now, else 403 with the refusal's status, detail and Retry-After in headers.
ADMISSION_PATH = "/admission"
REFUSAL_STATUS_HEADER = "X-FHE-Refusal-Status"
REFUSAL_DETAIL_HEADER = "X-FHE-Refusal-Detail"
SESSIONS_PATH = "/sessions"
SESSION_PATH = SESSIONS_PATH + "/{session_id}"
INPUT_PATH = SESSION_PATH + "/inputs/{party}"
PREDICT_PATH = SESSION_PATH + "/predict"
OUTPUT_PATH = SESSION_PATH + "/output"
EXPLAIN_PATH = SESSION_PATH + "/explain"

# ---------------------------------------------------------------------------------------------
# Headers and media type
# ---------------------------------------------------------------------------------------------
AUTHORIZATION_HEADER = "Authorization"
BEARER_SCHEME = "Bearer"
CONTENT_TYPE_HEADER = "Content-Type"
RETRY_AFTER_HEADER = "Retry-After"
EXECUTION_TIME_HEADER = "X-FHE-Execution-Time"
# On a 503: the failure was transient (a replica or the store went away, nothing was changed),
# and the same request may be sent again at once.
TRANSIENT_HEADER = "X-FHE-Transient"
# The only media type of binary bodies (keys, ciphertexts) in both directions.
OCTET_STREAM = "application/octet-stream"


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a session's calls."""
    return {AUTHORIZATION_HEADER: f"{BEARER_SCHEME} {token}"}


# ---------------------------------------------------------------------------------------------
# Errors: every refusal is a status with a JSON body {"detail": "..."}
# ---------------------------------------------------------------------------------------------
class ErrorCode(StrEnum):
    """Short stable names of the server's refusals (the client library's ``ClientError.code``)."""

    bad_request = "bad_request"
    unauthorized = "unauthorized"
    not_found = "not_found"
    order_server = "order_server"
    too_large = "too_large"
    unsupported_media_type = "unsupported_media_type"
    invalid_payload = "invalid_payload"
    too_many_sessions = "too_many_sessions"
    busy = "busy"


@dataclass(frozen=True)
class ErrorStatus:
    """One error status of the contract.

    Attributes:
        status: the HTTP status code.
        code: its stable name.
        meaning: when the server answers it (OpenAPI's description of the response).
    """

    status: int
    code: ErrorCode
    meaning: str


ERRORS: dict[int, ErrorStatus] = {
    error.status: error
    for error in (
        ErrorStatus(
            400,
            ErrorCode.bad_request,
            "A Host header this server does not accept, or a body cut short.",
        ),
        ErrorStatus(401, ErrorCode.unauthorized, "Missing or wrong bearer token."),
        ErrorStatus(404, ErrorCode.not_found, "Unknown or expired session."),
        ErrorStatus(409, ErrorCode.order_server, "A step out of order."),
        ErrorStatus(413, ErrorCode.too_large, "Body over its size limit."),
        ErrorStatus(
            415, ErrorCode.unsupported_media_type, "A body that is not application/octet-stream."
        ),
        ErrorStatus(
            422,
            ErrorCode.invalid_payload,
            "Bytes that are not what this route expects, or an unknown party.",
        ),
        ErrorStatus(
            429,
            ErrorCode.too_many_sessions,
            "This client opened too many sessions lately; retry after the Retry-After header's "
            "seconds.",
        ),
        ErrorStatus(
            503,
            ErrorCode.busy,
            "The FHE queue or the session store is full; retry after the Retry-After header's "
            "seconds.",
        ),
    )
}
