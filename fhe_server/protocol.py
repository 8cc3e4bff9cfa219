"""The single-key mode's wire contract under its historical name: defined in ``contracts``.

The names live in ``contracts.single_key`` (routes, headers, error table), ``contracts.wire``
(bearer scheme, media type, shared headers) and ``contracts.parties``; this module re-exports
them so that ``from fhe_server.protocol import ...`` keeps working. New code imports
``contracts`` directly.
"""

from __future__ import annotations

from contracts.errors import ErrorStatus
from contracts.parties import PARTIES, Party, StrEnum
from contracts.single_key import (
    ADMISSION_PATH,
    API_VERSION,
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
    TRANSIENT_HEADER,
    ErrorCode,
)
from contracts.wire import (
    AUTHORIZATION_HEADER,
    BEARER_SCHEME,
    CONTENT_TYPE_HEADER,
    OCTET_STREAM,
    RETRY_AFTER_HEADER,
    SESSION_ID_PATTERN,
    bearer,
)

__all__ = [
    "ADMISSION_PATH",
    "API_VERSION",
    "AUTHORIZATION_HEADER",
    "BEARER_SCHEME",
    "CANDIDATES",
    "CONTENT_TYPE_HEADER",
    "ERRORS",
    "EXECUTION_TIME_HEADER",
    "EXPLAIN_PATH",
    "HEALTH_PATH",
    "INPUT_PATH",
    "OCTET_STREAM",
    "OUTPUT_PATH",
    "PARTIES",
    "PREDICT_PATH",
    "REFUSAL_DETAIL_HEADER",
    "REFUSAL_STATUS_HEADER",
    "RETRY_AFTER_HEADER",
    "SESSION_ID_PATTERN",
    "SESSION_PATH",
    "SESSIONS_PATH",
    "TRANSIENT_HEADER",
    "ErrorCode",
    "ErrorStatus",
    "Party",
    "StrEnum",
    "bearer",
]
