"""The single-key mode's wire contract: between the FHE server and the client library.

Paths, headers and the error codes every refusal maps to. The server (``fhe_server.api``) and the
client library (``fhe_client``) import these names; standard library only, so any client can.
"""

from __future__ import annotations

from contracts.errors import ErrorStatus
from contracts.parties import PARTIES, StrEnum

API_VERSION = "1"

CANDIDATES = "candidates"
"""Name of explain's third input (the encrypted candidate credit-bureau rows)."""

BATCH_ROWS = 16
"""Applications decided by one call of the module's ``predict_batch`` (a portfolio's unit): the
bootstrap key's per-call preparation and the call's overhead are paid once for all of them, and
the bootstraps of 16 rows keep both cores busy. A shorter last batch is padded by the client."""
BATCH_INPUTS: dict[str, str] = {party: f"batch_{party}" for party in PARTIES}
"""Each party's (BATCH_ROWS x fields) input of ``predict_batch``, by party, in party order (the
order of a batch request's body): the names of the model card's wire formats."""

# ---------------------------------------------------------------------------------------------
# Paths (format the templates with session_id= and party=)
# ---------------------------------------------------------------------------------------------
HEALTH_PATH = "/health"
ADMISSION_PATH = "/admission"
"""Asked by nginx before it streams a creation's body (``auth_request``): 204 if a new session
would be admitted now, else 403 with the refusal's status, detail and Retry-After in headers."""
SESSIONS_PATH = "/sessions"
SESSION_PATH = SESSIONS_PATH + "/{session_id}"
INPUT_PATH = SESSION_PATH + "/inputs/{party}"
PREDICT_PATH = SESSION_PATH + "/predict"
OUTPUT_PATH = SESSION_PATH + "/output"
EXPLAIN_PATH = SESSION_PATH + "/explain"
BATCH_PATH = SESSION_PATH + "/batch"
"""POST the three parties' batch ciphertexts, one after the other in party order (each of the
model's fixed length); the answer is the encrypted verdicts of the BATCH_ROWS applications."""

# ---------------------------------------------------------------------------------------------
# Headers of this mode (the shared ones are in contracts.wire)
# ---------------------------------------------------------------------------------------------
REFUSAL_STATUS_HEADER = "X-FHE-Refusal-Status"
REFUSAL_DETAIL_HEADER = "X-FHE-Refusal-Detail"
EXECUTION_TIME_HEADER = "X-FHE-Execution-Time"
TRANSIENT_HEADER = "X-FHE-Transient"
"""On a 503: the failure was transient (a replica or the store went away, nothing was changed),
and the same request may be sent again at once."""
TRANSIENT_STATUSES: tuple[int, ...] = (502, 504)
"""Statuses a client treats as transient by themselves (a proxy lost its replica); a 503 is
transient only with ``TRANSIENT_HEADER``."""


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


ERRORS: dict[int, ErrorStatus[ErrorCode]] = {
    error.status: error
    for error in (
        ErrorStatus(
            400,
            ErrorCode.bad_request,
            "A Host header this server does not accept, or a body cut short.",
        ),
        ErrorStatus(
            401,
            ErrorCode.unauthorized,
            "Missing or wrong bearer token.",
            "the session token was refused",
        ),
        ErrorStatus(
            404,
            ErrorCode.not_found,
            "Unknown or expired session.",
            "the server does not know this session (it may have expired): generate new keys",
        ),
        ErrorStatus(
            409,
            ErrorCode.order_server,
            "A step out of order.",
            "the server refused a step asked out of order",
        ),
        ErrorStatus(
            413,
            ErrorCode.too_large,
            "Body over its size limit.",
            "the data sent is larger than the server accepts",
        ),
        ErrorStatus(
            415, ErrorCode.unsupported_media_type, "A body that is not application/octet-stream."
        ),
        ErrorStatus(
            422,
            ErrorCode.invalid_payload,
            "Bytes that are not what this route expects, or an unknown party.",
            "the server could not read the data sent",
        ),
        ErrorStatus(
            429,
            ErrorCode.too_many_sessions,
            "This client opened too many sessions lately; retry after the Retry-After header's "
            "seconds.",
            "this client has opened as many sessions as the server allows",
        ),
        ErrorStatus(
            503,
            ErrorCode.busy,
            "The FHE queue or the session store is full; retry after the Retry-After header's "
            "seconds.",
            "the server is busy",
        ),
    )
}
"""Every error status of the single-key server, by status."""
