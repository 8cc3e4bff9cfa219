"""What both modes share on the wire: the bearer scheme, the media type, common headers."""

from __future__ import annotations

import re

AUTHORIZATION_HEADER = "Authorization"
WWW_AUTHENTICATE_HEADER = "WWW-Authenticate"
BEARER_SCHEME = "Bearer"
"""A session's calls carry ``Authorization: Bearer <token>`` (both modes)."""
CONTENT_TYPE_HEADER = "Content-Type"
RETRY_AFTER_HEADER = "Retry-After"
OCTET_STREAM = "application/octet-stream"
"""The only media type of binary bodies (keys, ciphertexts, frames) in both directions."""

SESSION_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
"""Session ids are ``secrets.token_hex(16)``: 128 random bits. Anything else is never a session."""


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a session's calls.

    Args:
        token: the session's (or the party's) bearer token.

    Returns:
        ``{"Authorization": "Bearer <token>"}``.
    """
    return {AUTHORIZATION_HEADER: f"{BEARER_SCHEME} {token}"}
