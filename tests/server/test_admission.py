"""Refusing a session creation before its body is read (issue 22), in process (file store).

``GET /admission`` answers what nginx asks before streaming a creation's body; ``POST
/sessions`` checks the same before reading its body, and such a refusal does not ask for the
connection to be closed (the server discards the unread body itself). The cluster, with nginx
answering the refusals, is exercised in ``tests/cluster/test_faults.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fhe_server.protocol import REFUSAL_DETAIL_HEADER, REFUSAL_STATUS_HEADER
from tests.support.http import OCTET
from tests.support.inprocess import app_client
from tests.support.kit import Kit


@pytest.fixture
def quota_of_one(tmp_path: Path) -> Iterator[TestClient]:
    with app_client(tmp_path / "store", session_quota=1, session_quota_exempt=[]) as http:
        yield http


def test_health_says_the_local_store_is_up(quota_of_one: TestClient) -> None:
    body = quota_of_one.get("/health").json()
    assert body["status"] == "ok" and body["store"] == {"reachable": True, "subscribed": True}


def test_a_client_over_its_quota_is_refused_before_its_body(
    quota_of_one: TestClient, kit: Kit
) -> None:
    http = quota_of_one
    assert http.get("/admission").status_code == 204
    assert http.post("/sessions", content=kit.evaluation_keys, headers=OCTET).status_code == 201
    asked = http.get("/admission")
    assert asked.status_code == 403
    assert asked.headers[REFUSAL_STATUS_HEADER] == "429"
    assert "sessions" in asked.headers[REFUSAL_DETAIL_HEADER] == asked.json()["detail"]
    assert 1 <= int(asked.headers["Retry-After"]) <= 600
    refused = http.post("/sessions", content=kit.evaluation_keys, headers=OCTET)
    assert refused.status_code == 429 and refused.json()["detail"]
    assert refused.headers.get("connection") != "close"  # the server discards the body itself


def test_a_full_store_is_refused_before_the_body(tmp_path: Path, kit: Kit) -> None:
    with app_client(tmp_path / "store", max_sessions=1) as http:
        assert http.post("/sessions", content=kit.evaluation_keys, headers=OCTET).status_code == 201
        asked = http.get("/admission")
        assert asked.status_code == 403 and asked.headers[REFUSAL_STATUS_HEADER] == "503"
        refused = http.post("/sessions", content=kit.evaluation_keys, headers=OCTET)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert refused.headers.get("connection") != "close"
