"""The three-party mode's wire contract: roles, steps, blob names, routes and error codes.

Between the three-party server (``threeparty.server``) and the party program
(``threeparty.party``, Python 3.10). The framing of several blobs in one body and the steps'
rules (who uploads what) are code: ``threeparty.protocol``.

Roles, in key-generation order: the applicant (round 1 first), the bank, the credit bureau. The
result's recipients are the applicant and the bank (which decides): every party seals its partial
decryption for each recipient other than itself.

A session is created with a *roster*: each party's long-term verify key. Creating it yields one
single-use *invitation* per party, ``<session id>.<invitation secret>``; a party redeems its own
by signing, with its identity key, the hash of a bearer token it chose itself (``JOIN``), then
sends ``Authorization: Bearer <token>`` (``contracts.wire.bearer``) on every call.
"""

from __future__ import annotations

import re
from enum import Enum

from contracts.errors import ErrorStatus
from contracts.parties import PARTIES

API_VERSION = "2"

ROLES: tuple[str, ...] = PARTIES
"""The parties of a session, in key-generation order (``contracts.parties.PARTIES``); the lead
and the result's recipients are ``contracts.parties.LEAD`` and ``RECIPIENTS``."""
MODES: tuple[str, ...] = ("predict", "explain", "batch")
MAX_APPLICATIONS = 2048
"""Applications one batch session scores in one evaluation: the blocks of one ciphertext
(16,384 slots, 8 per application)."""

BOX_PUBLIC_KEY_BYTES = 32
"""X25519 public keys (PyNaCl) are 32 bytes."""

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{20,100}")
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")

# The steps of a session, in order. Every upload is one step of one party: a frame of its blobs
# plus its signed statement (``STATEMENT_BLOB``); see ``threeparty.transcript``.
#
# - round1: the key chain (applicant, bank, credit bureau in turn): the party's public key in the
#   chain, its shares of the round-1 relinearization and rotation keys, and its X25519 box key.
# - challenge (applicant only): an encryption, under the joint key, of values derived from the
#   round-1 statements: the key-confirmation challenge.
# - confirm_commit / confirm_reveal: each party commits to the hash of its partial decryption of
#   the challenge, then, once all three committed, reveals it; each fuses and compares.
# - inputs_commit / inputs: each party commits to the hashes of its round-2 share and its
#   ciphertexts, then, once all three committed, uploads them.
# - output_commit: after re-evaluating by itself, each party commits to its partial decryption of
#   the output (and the output's hash).
# - partials: once all three committed, each party's partial sealed for each recipient.
STEPS: tuple[str, ...] = (
    "round1",
    "challenge",
    "confirm_commit",
    "confirm_reveal",
    "inputs_commit",
    "inputs",
    "output_commit",
    "partials",
)
STATEMENT_BLOB = "statement"
ROUND1_BLOBS: tuple[str, ...] = ("public_key", "eval_mult", "rotation", "box_key")
ROUND2_BLOB = "round2"
CHALLENGE_BLOB = "ciphertext"
PARTIAL_BLOB = "partial"
BLOB_NAME_PATTERN = re.compile(r"[a-z0-9_]{1,40}")


def ciphertext_blob(index: int) -> str:
    """The blob name of a party's ciphertext ``index`` in its ``inputs`` step."""
    return f"ct_{int(index)}"


def sealed_blob(recipient: str) -> str:
    """The blob name of a partial sealed for ``recipient`` in the ``partials`` step."""
    return f"to_{recipient}"


# Routes (relative to the server's base URL). {sid}: session id.
SESSIONS = "/sessions"
SESSION = "/sessions/{sid}"
JOIN = "/sessions/{sid}/join"
STATUS = "/sessions/{sid}/status"
STEP = "/sessions/{sid}/steps/{step}"
BLOB = "/sessions/{sid}/steps/{step}/{role}/{name}"
EVALUATE = "/sessions/{sid}/evaluate"
OUTPUT = "/sessions/{sid}/output"

# Query parameters of STATUS: long-poll until the session's version exceeds `since`, at most
# `wait` seconds (the server caps it).
STATUS_SINCE = "since"
STATUS_WAIT = "wait"


class ErrorCode(str, Enum):
    """The ``code`` of every error answer (``{"detail": str, "code": str}``), with its status."""

    unauthorized = "unauthorized"
    forbidden = "forbidden"
    unknown_session = "unknown_session"
    not_found = "not_found"
    out_of_order = "out_of_order"
    too_large = "too_large"
    unsupported_media_type = "unsupported_media_type"
    too_many_sessions = "too_many_sessions"
    invalid_blob = "invalid_blob"
    bad_signature = "bad_signature"
    other_session = "other_session"
    invalid_request = "invalid_request"
    busy = "busy"

    @property
    def status(self) -> int:
        """The HTTP status this error is answered with (``ERRORS``)."""
        return ERRORS[self].status


ERRORS: dict[ErrorCode, ErrorStatus[ErrorCode]] = {
    error.code: error
    for error in (
        ErrorStatus(401, ErrorCode.unauthorized, "Missing or wrong bearer token."),
        ErrorStatus(
            403, ErrorCode.forbidden, "An invitation not redeemed by its party's identity key."
        ),
        ErrorStatus(404, ErrorCode.unknown_session, "Unknown, expired or deleted session."),
        ErrorStatus(404, ErrorCode.not_found, "No such route (404) or method (405)."),
        ErrorStatus(409, ErrorCode.out_of_order, "A step before its prerequisites, or done twice."),
        ErrorStatus(413, ErrorCode.too_large, "A body over its limit."),
        ErrorStatus(
            415, ErrorCode.unsupported_media_type, "A body that is not application/octet-stream."
        ),
        ErrorStatus(
            429,
            ErrorCode.too_many_sessions,
            "This client's session quota is used up; retry after Retry-After.",
        ),
        ErrorStatus(422, ErrorCode.invalid_blob, "Bytes that are not what the route expects."),
        ErrorStatus(422, ErrorCode.bad_signature, "A statement its party's key did not sign."),
        ErrorStatus(
            422, ErrorCode.other_session, "A share or ciphertext made for another session."
        ),
        ErrorStatus(422, ErrorCode.invalid_request, "A bad parameter (role, kind, mode, ...)."),
        ErrorStatus(
            503,
            ErrorCode.busy,
            "Too many sessions or evaluations; retry after Retry-After.",
        ),
    )
}
"""Every error of the three-party server, by code (several codes share a status)."""
