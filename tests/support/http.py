"""Raw HTTP to the single-key server: a session's steps and the checks of its answers.

- ``OCTET``: the Content-Type header of every binary body.
- ``open_session``, ``upload``, ``full_flow_verdict``: a session's steps with a ``Kit``'s bytes.
- ``assert_client_error``: a 4xx answer whose body is ``{"detail": <non-empty str>}``;
  ``assert_error``: an answer of one status (5xx too) whose detail says something.
"""

from __future__ import annotations

import httpx

import settings
from contracts.wire import CONTENT_TYPE_HEADER, OCTET_STREAM, SESSION_ID_PATTERN, bearer
from tests.support.applications import Profile
from tests.support.kit import Kit

OCTET = {CONTENT_TYPE_HEADER: OCTET_STREAM}


def assert_client_error(response: httpx.Response, expected: int | set[int] | None = None) -> str:
    """Assert a 4xx answer with a JSON ``{"detail": str}`` body; return the detail.

    Args:
        response: the answer.
        expected: the status (or statuses) required; any 4xx when None.
    """
    allowed = {expected} if isinstance(expected, int) else expected
    status = response.status_code
    assert 400 <= status < 500, f"{status}: {response.text[:300]}"
    if allowed is not None:
        assert status in allowed, f"{status} not in {allowed}: {response.text[:300]}"
    assert response.headers.get("content-type", "").startswith("application/json"), response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail, response.text
    assert "Traceback" not in response.text
    return detail


def assert_error(response: httpx.Response, status_code: int, contains: str = "") -> None:
    """Assert an answer of ``status_code`` whose JSON detail contains ``contains`` (any case)."""
    assert response.status_code == status_code, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert contains.lower() in detail.lower()
    assert "Traceback" not in response.text


def open_session(http: httpx.Client, evaluation_keys: bytes) -> tuple[str, dict[str, str]]:
    """POST /sessions; return the session id (checked against the contract) and its header."""
    response = http.post("/sessions", content=evaluation_keys, headers=OCTET)
    assert response.status_code == 201, response.text
    body = response.json()
    assert SESSION_ID_PATTERN.fullmatch(body["session_id"]), body
    return body["session_id"], bearer(body["token"])


def upload(
    http: httpx.Client, session_id: str, auth: dict[str, str], encrypted: dict[str, bytes]
) -> None:
    """PUT each party's ciphertext found in ``encrypted``; each must answer 204."""
    for party in settings.PARTIES:
        if party in encrypted:
            response = http.put(
                f"/sessions/{session_id}/inputs/{party}",
                content=encrypted[party],
                headers={**auth, **OCTET},
            )
            assert response.status_code == 204, response.text


def full_flow_verdict(http: httpx.Client, kit: Kit, profile: Profile) -> int:
    """Open a session, upload, predict, fetch, decrypt and delete it; return the verdict."""
    session_id, auth = open_session(http, kit.evaluation_keys)
    upload(http, session_id, auth, kit.encrypt(profile))
    response = http.post(f"/sessions/{session_id}/predict", headers=auth)
    assert response.status_code == 200, response.text
    output = http.get(f"/sessions/{session_id}/output", headers=auth)
    assert output.status_code == 200, output.text
    assert http.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
    return int(kit.decrypt(output.content))
