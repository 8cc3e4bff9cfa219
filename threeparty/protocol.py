"""The three-party mode's protocol: its contract (defined in ``contracts``) and its rules.

The names of the wire contract (roles, recipients, steps, blob names, routes, error codes) live
in ``contracts.threeparty``, ``contracts.parties`` and ``contracts.wire``; this module re-exports
them under their historical names (``protocol.ROLES``, ``protocol.ErrorCode``, ...) and holds the
rules and codecs built on them: who uploads which blobs in a step, invitation codes and the
framing of several blobs in one body. Standard library only (no openfhe), so the page's process
can read it too.

The server is not trusted (README, "Three-party mode", threat model): every upload is a signed
step (``threeparty.transcript``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from contracts.parties import LEAD, RECIPIENTS
from contracts.threeparty import (
    API_VERSION,
    BLOB,
    BLOB_NAME_PATTERN,
    BOX_PUBLIC_KEY_BYTES,
    CHALLENGE_BLOB,
    DIGEST_PATTERN,
    ERRORS,
    EVALUATE,
    JOIN,
    MAX_APPLICATIONS,
    MODES,
    OUTPUT,
    PARTIAL_BLOB,
    ROLES,
    ROUND1_BLOBS,
    ROUND2_BLOB,
    SESSION,
    SESSIONS,
    STATEMENT_BLOB,
    STATUS,
    STATUS_SINCE,
    STATUS_WAIT,
    STEP,
    STEPS,
    TOKEN_PATTERN,
    ErrorCode,
    ciphertext_blob,
    sealed_blob,
)
from contracts.wire import BEARER_SCHEME, OCTET_STREAM, SESSION_ID_PATTERN

BEARER = BEARER_SCHEME

__all__ = [
    "API_VERSION",
    "BEARER",
    "BLOB",
    "BLOB_NAME_PATTERN",
    "BOX_PUBLIC_KEY_BYTES",
    "CHALLENGE_BLOB",
    "DIGEST_PATTERN",
    "ERRORS",
    "EVALUATE",
    "FRAME_MAGIC",
    "JOIN",
    "LEAD",
    "MAX_APPLICATIONS",
    "MAX_FRAMES",
    "MODES",
    "OCTET_STREAM",
    "OUTPUT",
    "PARTIAL_BLOB",
    "RECIPIENTS",
    "ROLES",
    "ROUND1_BLOBS",
    "ROUND2_BLOB",
    "SESSION",
    "SESSIONS",
    "SESSION_ID_PATTERN",
    "STATEMENT_BLOB",
    "STATUS",
    "STATUS_SINCE",
    "STATUS_WAIT",
    "STEP",
    "STEPS",
    "TOKEN_PATTERN",
    "ErrorCode",
    "FrameError",
    "blocks_for",
    "ciphertext_blob",
    "pack",
    "parse_session_code",
    "previous_role",
    "sealed_blob",
    "session_code",
    "step_blobs",
    "step_roles",
    "unpack",
]


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
