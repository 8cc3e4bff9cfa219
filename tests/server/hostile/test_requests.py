"""Hostile requests against a real server process: parties, session ids, tokens, the steps.

Unknown parties, path-like and over-long session ids, missing, wrong and other sessions' tokens,
calls after DELETE and steps out of order. Each gets a 4xx with a JSON ``{"detail": str}``,
never a 5xx nor a crash; the fixtures and the checks after each test are in this folder's
conftest and ``tests.support.hostile``. Expiry is covered in tests/server/test_restart.py.
"""

from __future__ import annotations

import httpx
import pytest

from contracts.wire import bearer
from tests.support.hostile import (
    CASE_COUNTS,
    SESSION_ROUTES,
    Bystander,
    Live,
    assert_still_serving,
    attack_session,
    session_files,
)
from tests.support.http import OCTET, assert_client_error, open_session, upload
from tests.support.kit import Kit

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------
# Parties, session ids, tokens, deleted sessions, order of the steps
# ---------------------------------------------------------------------------------------------
def test_unknown_parties_are_refused(
    live: Live, kit_a: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    session_id, auth = attack_session(live, kit_a, encrypted_a)
    before = session_files(live.store_dir)
    parties = [
        "insurer",
        "APPLICANT",
        "Applicant",
        "applicant.bin",
        "input_applicant.bin",
        "applicant%00",
        "%2e%2e",
        "..%2Fmeta.json",
        "credit-bureau",
        "candidates",
        "%20applicant",
        "a" * 5000,
    ]
    for party in parties:
        response = live.http.put(
            f"/sessions/{session_id}/inputs/{party}",
            content=encrypted_a["applicant"],
            headers={**auth, **OCTET},
        )
        assert_client_error(response, {404, 422})
    assert session_files(live.store_dir) == before
    assert len(parties) == CASE_COUNTS["unknown_party"]
    assert_still_serving(live, bystander)


def test_path_like_and_over_long_session_ids_are_refused(
    live: Live, kit_a: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    session_id, auth = attack_session(live, kit_a, encrypted_a)
    before = session_files(live.store_dir.parent)
    bad_ids = [
        "../../etc",
        "..",
        "%2e%2e",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%5c..%5cwindows",
        "%00",
        session_id.upper(),
        session_id + "0",
        session_id[:-1],
        f".trash-{session_id}",
        "0" * 10_000,
        "x" * 60_000,
        "meta.json",
        "%2F" + session_id,
    ]
    tried = []
    for bad_id in bad_ids:
        for method, template in SESSION_ROUTES:
            body = encrypted_a["applicant"] if method in ("PUT", "POST") else None
            response = live.http.request(
                method, template.format(id=bad_id), content=body, headers={**auth, **OCTET}
            )
            assert_client_error(response, 404)
            # The small refused body was read to its end, so the connection stays open: closing
            # it with unread bytes would reset it and could destroy the answer in flight.
            assert response.headers.get("connection") != "close", (bad_id[:20], method)
            tried.append((bad_id[:20], method))
    assert session_files(live.store_dir.parent) == before
    assert len(tried) == CASE_COUNTS["bad_session_id"]
    assert_still_serving(live, bystander)


def test_missing_wrong_or_other_sessions_tokens_are_refused(
    live: Live, kit_a: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    session_id, auth = attack_session(live, kit_a, encrypted_a)
    token = auth["Authorization"].removeprefix("Bearer ")
    before = session_files(live.store_dir / session_id)
    header_sets = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        bearer(token.swapcase()),
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": token},  # no scheme
        bearer(token[:-1]),
        bearer(token + "x"),
        bearer("x" * 10_000),
        bystander.auth,  # a real token, of another live session
    ]
    tried = []
    for headers in header_sets:
        for method, template in SESSION_ROUTES:
            body = encrypted_a["applicant"] if method in ("PUT", "POST") else None
            response = live.http.request(
                method, template.format(id=session_id), content=body, headers={**headers, **OCTET}
            )
            assert_client_error(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
            tried.append((method, template))
    assert session_files(live.store_dir / session_id) == before  # nothing changed, not deleted
    assert len(tried) == CASE_COUNTS["bad_token"]
    assert_still_serving(live, bystander)


def test_calls_after_delete_are_refused(
    live: Live, kit_a: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    session_id, auth = attack_session(live, kit_a, encrypted_a)
    assert live.http.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
    assert not (live.store_dir / session_id).exists()
    tried = []
    for method, template in SESSION_ROUTES:
        body = encrypted_a["applicant"] if method in ("PUT", "POST") else None
        response = live.http.request(
            method, template.format(id=session_id), content=body, headers={**auth, **OCTET}
        )
        assert_client_error(response, 404)
        tried.append(method)
    # Another live session's token does not make the deleted one exist again.
    response = live.http.get(f"/sessions/{session_id}/output", headers=bystander.auth)
    assert_client_error(response, 404)
    tried.append("GET output with another session's token")
    assert len(tried) == CASE_COUNTS["after_delete"]
    assert_still_serving(live, bystander)


def test_steps_out_of_order_are_refused(
    live: Live, kit_a: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    session_id, auth = open_session(live.http, kit_a.evaluation_keys)
    url = f"/sessions/{session_id}"
    http = live.http
    candidates = {"content": encrypted_a["candidates"], "headers": {**auth, **OCTET}}
    tried = []

    def refused(response: httpx.Response, mentions: str) -> None:
        assert mentions in assert_client_error(response, 409)
        tried.append(mentions)

    refused(http.post(f"{url}/predict", headers=auth), "applicant")
    refused(http.get(f"{url}/output", headers=auth), "predict")
    refused(http.post(f"{url}/explain", **candidates), "applicant, bank")
    upload(http, session_id, auth, {"credit_bureau": encrypted_a["credit_bureau"]})
    refused(http.post(f"{url}/predict", headers=auth), "applicant, bank")
    upload(http, session_id, auth, {"bank": encrypted_a["bank"]})
    refused(http.post(f"{url}/explain", **candidates), "applicant")
    refused(http.get(f"{url}/output", headers=auth), "predict")
    upload(http, session_id, auth, {"applicant": encrypted_a["applicant"]})
    refused(http.get(f"{url}/output", headers=auth), "predict")
    assert http.post(f"{url}/predict", headers=auth).status_code == 200
    assert http.get(f"{url}/output", headers=auth).status_code == 200
    upload(http, session_id, auth, {"bank": encrypted_a["bank"]})  # the verdict is now stale
    refused(http.get(f"{url}/output", headers=auth), "predict")
    # Delete, then the steps again: the session is gone (404), not out of order.
    assert http.delete(url, headers=auth).status_code == 204
    assert_client_error(http.post(f"{url}/predict", headers=auth), 404)
    tried.append("predict after delete")
    assert len(tried) == CASE_COUNTS["out_of_order"]
    assert_still_serving(live, bystander)
