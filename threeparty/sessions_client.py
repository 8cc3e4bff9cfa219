"""Requests about a whole session, outside a party's run: create it, delete it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from contracts.wire import bearer
from threeparty import protocol
from threeparty.party_base import (
    TOKEN_FILE,
    PartyError,
)


def create_session(
    server_url: str, roster: Mapping[str, str], mode: str = "predict", applications: int = 1
) -> dict[str, Any]:
    """Create a session for a roster; return {"session_id", "mode", "roster", "invitations"...}.

    Args:
        server_url: the three-party server's base URL.
        roster: {role: verify key hex} of the three parties (``python -m threeparty identity``).
        mode: "predict", "explain" or "batch".
        applications: how many applications a batch scores (1 to ``protocol.MAX_APPLICATIONS``).

    Raises:
        PartyError: if the server cannot be reached or refuses.
    """
    response = _session_request(
        "POST",
        server_url,
        protocol.SESSIONS,
        201,
        "create a session",
        json={"mode": mode, "roster": dict(roster), "applications": applications},
    )
    return response.json()


def delete_session(server_url: str, key_dir: Path, invitation: str) -> None:
    """Delete a session as the party whose folder ``key_dir`` is (it joined with its token).

    Raises:
        PartyError: if the invitation is malformed, the party never joined, the server cannot
            be reached or refuses.
    """
    try:
        session_id, _secret = protocol.parse_session_code(invitation)
    except ValueError as error:
        raise PartyError(str(error), "invalid_code") from None
    token_path = Path(key_dir) / f"session-{session_id}" / TOKEN_FILE
    try:
        token = token_path.read_text()
    except OSError:
        raise PartyError(f"no token in {token_path}: this party never joined", "key_dir") from None
    _session_request(
        "DELETE",
        server_url,
        protocol.SESSION.format(sid=session_id),
        204,
        "delete the session",
        headers=bearer(token),
    )


def _session_request(
    method: str, server_url: str, path: str, expected: int, action: str, **kwargs: Any
) -> httpx.Response:
    """One request about a whole session, outside a party's run; other answers are PartyError."""
    try:
        response = httpx.request(method, f"{server_url.rstrip('/')}{path}", timeout=30.0, **kwargs)
    except httpx.HTTPError as error:
        raise PartyError(f"cannot reach the three-party server: {error}", "unreachable") from None
    if response.status_code != expected:
        raise PartyError(
            f"the server refused to {action} (HTTP {response.status_code}): {response.text[:200]}",
            "server_error",
        )
    return response
