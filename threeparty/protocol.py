"""The three-party mode's wire protocol, named once: roles, steps, routes, framing, error codes.

Both the server (``threeparty.server``) and the party clients (``threeparty.party``) import this
module; it imports nothing heavy (no openfhe), so the page's process can read it too.

Roles, in key-generation order: the applicant (round 1 first), the bank, the credit bureau. The
result's recipients are the applicant and the bank (which decides): every party seals its partial
decryption for each recipient other than itself.

The server is not trusted (README, "Three-party mode", threat model). A session is created with
a *roster*: each party's long-term verify key. Creating it yields one single-use *invitation*
per party, ``<session id>.<invitation secret>``; a party redeems its own by signing, with its
identity key, the hash of a bearer token it chose itself (``JOIN``), so whoever created the
session cannot act as that party. Every upload is a signed step (``threeparty.transcript``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from enum import Enum

API_VERSION = "2"

ROLES: tuple[str, ...] = ("applicant", "bank", "credit_bureau")
LEAD = ROLES[0]
RECIPIENTS: tuple[str, ...] = ("applicant", "bank")
MODES: tuple[str, ...] = ("predict", "explain", "batch")
MAX_APPLICATIONS = 2048
"""Applications one batch session scores in one evaluation: the blocks of one ciphertext
(16,384 slots, 8 per application)."""

# X25519 public keys (PyNaCl) are 32 bytes.
BOX_PUBLIC_KEY_BYTES = 32

SESSION_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
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


def step_blobs(step: str, role: str, vectors: list[int]) -> tuple[str, ...]:
    """The blob names ``role`` uploads in ``step`` (``vectors``: the indices it encrypts)."""
    if step == "round1":
        return ROUND1_BLOBS
    if step == "challenge":
        return (CHALLENGE_BLOB,)
    if step == "confirm_reveal":
        return (PARTIAL_BLOB,)
    if step == "inputs":
        return (ROUND2_BLOB, *(ciphertext_blob(i) for i in vectors))
    if step == "partials":
        return tuple(sealed_blob(r) for r in RECIPIENTS if r != role)
    return ()


def step_roles(step: str) -> tuple[str, ...]:
    """Who uploads ``step``: everyone, or only the lead (the challenge)."""
    return (LEAD,) if step == "challenge" else ROLES


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
BEARER = "Bearer"
OCTET_STREAM = "application/octet-stream"


class ErrorCode(str, Enum):
    """The ``code`` of every error answer (``{"detail": str, "code": str}``), with its status."""

    unauthorized = "unauthorized"  # 401: missing or wrong bearer token
    forbidden = "forbidden"  # 403: an invitation not redeemed by its party's identity key
    unknown_session = "unknown_session"  # 404: unknown, expired or deleted session
    not_found = "not_found"  # 404 / 405: no such route or method
    out_of_order = "out_of_order"  # 409: a step before its prerequisites, or done twice
    too_large = "too_large"  # 413: a body over its limit
    unsupported_media_type = "unsupported_media_type"  # 415: a body not application/octet-stream
    too_many_sessions = "too_many_sessions"  # 429 + Retry-After: this client's session quota
    invalid_blob = "invalid_blob"  # 422: bytes that are not what the route expects
    bad_signature = "bad_signature"  # 422: a statement that its party's key did not sign
    other_session = "other_session"  # 422: a share or ciphertext made for another session
    invalid_request = "invalid_request"  # 422: a bad parameter (role, kind, mode, ...)
    busy = "busy"  # 503 + Retry-After: too many sessions or evaluations

    @property
    def status(self) -> int:
        """The HTTP status this error is answered with."""
        return _STATUS[self]


_STATUS = {
    ErrorCode.unauthorized: 401,
    ErrorCode.forbidden: 403,
    ErrorCode.unknown_session: 404,
    ErrorCode.not_found: 404,
    ErrorCode.out_of_order: 409,
    ErrorCode.too_large: 413,
    ErrorCode.unsupported_media_type: 415,
    ErrorCode.too_many_sessions: 429,
    ErrorCode.invalid_blob: 422,
    ErrorCode.bad_signature: 422,
    ErrorCode.other_session: 422,
    ErrorCode.invalid_request: 422,
    ErrorCode.busy: 503,
}


def previous_role(role: str) -> str | None:
    """The role whose round-1 public key ``role`` builds on (None for the lead)."""
    index = ROLES.index(role)
    return ROLES[index - 1] if index else None


def blocks_for(mode: str, applications: int = 1) -> int:
    """Blocks (applications or candidates) one evaluation scores in a mode.

    predict: the application itself. explain: the application itself in block 0, then the six
    public candidate rows (employed, each years-employed bin) in blocks 1..6, so one evaluation
    gives the verdict and the explanation. batch: ``applications`` applications (a portfolio),
    one per block, each party sending its own columns of each.
    """
    if mode == "batch":
        return applications
    return 1 if mode == "predict" else 7


def session_code(session_id: str, token: str) -> str:
    """One party's invitation code (``<session id>.<secret>``)."""
    return f"{session_id}.{token}"


def parse_session_code(code: str) -> tuple[str, str]:
    """Split an invitation code into (session id, secret).

    Raises:
        ValueError: if the code is not ``<32 hex>.<token>``.
    """
    session_id, _, token = code.strip().partition(".")
    if not SESSION_ID_PATTERN.fullmatch(session_id) or not TOKEN_PATTERN.fullmatch(token):
        raise ValueError("an invitation looks like <32 hex characters>.<secret>")
    return session_id, token


# ---------------------------------------------------------------------------------------------
# Framing: several named blobs in one body (round 1, a party's level ciphertexts)
# ---------------------------------------------------------------------------------------------
FRAME_MAGIC = b"3PTY"
_COUNT = struct.Struct(">H")
_NAME = struct.Struct(">B")
_SIZE = struct.Struct(">Q")
MAX_FRAMES = 16


class FrameError(ValueError):
    """Bytes that are not a well-formed frame."""


def pack(blobs: Mapping[str, bytes]) -> bytes:
    """Join named blobs into one body: magic, count, then (name length, name, size, bytes)."""
    parts = [FRAME_MAGIC, _COUNT.pack(len(blobs))]
    for name, data in blobs.items():
        encoded = name.encode("ascii")
        parts += [_NAME.pack(len(encoded)), encoded, _SIZE.pack(len(data)), bytes(data)]
    return b"".join(parts)


def unpack(body: bytes) -> dict[str, bytes]:
    """Split a body made by ``pack``.

    Raises:
        FrameError: on a wrong magic, a truncated or over-long body, a repeated or non-ASCII name.
    """
    view = memoryview(body)
    if bytes(view[:4]) != FRAME_MAGIC or len(view) < 4 + _COUNT.size:
        raise FrameError("not a three-party frame (wrong header)")
    (count,) = _COUNT.unpack_from(view, 4)
    if count > MAX_FRAMES:
        raise FrameError(f"a frame holds at most {MAX_FRAMES} blobs")
    offset, blobs = 4 + _COUNT.size, {}
    for _ in range(count):
        try:
            (name_length,) = _NAME.unpack_from(view, offset)
            offset += _NAME.size
            name = bytes(view[offset : offset + name_length]).decode("ascii")
            offset += name_length
            (size,) = _SIZE.unpack_from(view, offset)
            offset += _SIZE.size
        except (struct.error, UnicodeDecodeError) as error:
            raise FrameError("truncated frame") from error
        if offset + size > len(view) or name in blobs or not name:
            raise FrameError("truncated frame or repeated name")
        blobs[name] = bytes(view[offset : offset + size])
        offset += size
    if offset != len(view):
        raise FrameError("bytes after the last blob")
    return blobs
