"""The three-party mode's wire protocol, named once: roles, steps, routes, framing, error codes.

Both the server (``threeparty.server``) and the party clients (``threeparty.party``) import this
module; it imports nothing heavy (no openfhe), so the page's process can read it too.

Roles, in key-generation order: the applicant (round 1 first), the bank, the credit bureau. The
result's recipients are the applicant and the bank (which decides): every party seals its partial
decryption for each recipient other than itself.

A *session code* is what one party needs to join: ``<session id>.<that party's bearer token>``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from enum import Enum

API_VERSION = "1"

ROLES: tuple[str, ...] = ("applicant", "bank", "credit_bureau")
LEAD = ROLES[0]
RECIPIENTS: tuple[str, ...] = ("applicant", "bank")
MODES: tuple[str, ...] = ("predict", "explain")

# Round-1 blobs each party uploads (public material): its public key in the chain, its share of
# the relinearization key (eval-mult) and its share of the rotation keys.
ROUND1_KINDS: tuple[str, ...] = ("public_key", "eval_mult", "rotation")
# What the server serves once round 1 is combined: the joint public key (to encrypt) and the
# joint round-1 eval-mult key (each party turns it into its round-2 share).
JOINT_KINDS: tuple[str, ...] = ("public_key", "eval_mult")

# X25519 public keys (PyNaCl) are 32 bytes.
BOX_PUBLIC_KEY_BYTES = 32

SESSION_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{20,100}")

# Routes (relative to the server's base URL). {sid}: session id; role/kind/sender from the lists.
SESSIONS = "/sessions"
SESSION = "/sessions/{sid}"
STATUS = "/sessions/{sid}/status"
BOX_KEY = "/sessions/{sid}/box-key"
ROUND1 = "/sessions/{sid}/round1"
ROUND1_BLOB = "/sessions/{sid}/round1/{role}/{kind}"
JOINT = "/sessions/{sid}/joint/{kind}"
ROUND2 = "/sessions/{sid}/round2"
CIPHERTEXTS = "/sessions/{sid}/ciphertexts"
EVALUATE = "/sessions/{sid}/evaluate"
OUTPUT = "/sessions/{sid}/output"
PARTIAL_TO = "/sessions/{sid}/partials/{recipient}"
PARTIAL_FROM = "/sessions/{sid}/partials/from/{sender}"

# Query parameters of STATUS: long-poll until the session's version exceeds `since`, at most
# `wait` seconds (the server caps it).
STATUS_SINCE = "since"
STATUS_WAIT = "wait"


class ErrorCode(str, Enum):
    """The ``code`` of every error answer (``{"detail": str, "code": str}``), with its status."""

    unauthorized = "unauthorized"  # 401: missing or wrong bearer token
    unknown_session = "unknown_session"  # 404: unknown, expired or deleted session
    not_found = "not_found"  # 404 / 405: no such route or method
    out_of_order = "out_of_order"  # 409: a step before its prerequisites, or done twice
    too_large = "too_large"  # 413: a body over its limit
    invalid_blob = "invalid_blob"  # 422: bytes that are not what the route expects
    other_session = "other_session"  # 422: a share or ciphertext made for another session
    invalid_request = "invalid_request"  # 422: a bad parameter (role, kind, mode, ...)
    busy = "busy"  # 503 + Retry-After: too many sessions or evaluations

    @property
    def status(self) -> int:
        """The HTTP status this error is answered with."""
        return _STATUS[self]


_STATUS = {
    ErrorCode.unauthorized: 401,
    ErrorCode.unknown_session: 404,
    ErrorCode.not_found: 404,
    ErrorCode.out_of_order: 409,
    ErrorCode.too_large: 413,
    ErrorCode.invalid_blob: 422,
    ErrorCode.other_session: 422,
    ErrorCode.invalid_request: 422,
    ErrorCode.busy: 503,
}


def previous_role(role: str) -> str | None:
    """The role whose round-1 public key ``role`` builds on (None for the lead)."""
    index = ROLES.index(role)
    return ROLES[index - 1] if index else None


def blocks_for(mode: str) -> int:
    """Applications (blocks) one evaluation scores in a mode.

    predict: the application itself. explain: the application itself in block 0, then the credit
    bureau's six candidate rows (employed, each years-employed bin) in blocks 1..6, so one
    evaluation gives the verdict and the explanation.
    """
    return 1 if mode == "predict" else 7


def session_code(session_id: str, token: str) -> str:
    """One party's session code."""
    return f"{session_id}.{token}"


def parse_session_code(code: str) -> tuple[str, str]:
    """Split a session code into (session id, token).

    Raises:
        ValueError: if the code is not ``<32 hex>.<token>``.
    """
    session_id, _, token = code.strip().partition(".")
    if not SESSION_ID_PATTERN.fullmatch(session_id) or not TOKEN_PATTERN.fullmatch(token):
        raise ValueError("a session code looks like <32 hex characters>.<token>")
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
