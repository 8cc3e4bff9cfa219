"""Abuse of the server's open doors, against a real ``uvicorn server:app`` (issue 10, item 2).

- Session floods: the store never evicts a live session to make room. 200 creations from many
  clients fill the store and are then refused with 503 and Retry-After, while a session opened
  before the flood finishes its flow; one client opening sessions in a loop gets 429 and
  Retry-After past its quota, other clients and the loopback (the page's process) are not
  limited by it. Client addresses are given in X-Forwarded-For, which uvicorn believes from
  127.0.0.1 only (its ``--forwarded-allow-ips`` default), as behind nginx.
- Bodies that a cross-site form or ``fetch`` can send without a CORS preflight (text/plain, a
  URL-encoded or multipart form, no Content-Type) are refused with 415 and store nothing.
- A request whose Host header names another site (DNS rebinding) is refused with 400.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contracts.wire import bearer
from tests.support.applications import varied_profiles
from tests.support.http import OCTET, assert_client_error, open_session, upload
from tests.support.kit import Kit
from tests.support.servers import running_server

pytestmark = pytest.mark.slow

MAX_SESSIONS = 6
QUOTA = 3
QUOTA_WINDOW_SECONDS = 600
TTL_SECONDS = 3600
FLOOD = 200
FLOOD_THREADS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    store_dir = tmp_path_factory.mktemp("abuse") / "store"
    env = {
        "FHE_MAX_SESSIONS": str(MAX_SESSIONS),
        "FHE_SESSION_QUOTA": str(QUOTA),
        "FHE_SESSION_QUOTA_WINDOW_SECONDS": str(QUOTA_WINDOW_SECONDS),
        "FHE_SESSION_TTL_SECONDS": str(TTL_SECONDS),
    }
    with running_server(store_dir=store_dir, env=env) as base_url:
        yield base_url, store_dir


def sessions_on_disk(store_dir: Path) -> list[str]:
    return sorted(p.name for p in store_dir.iterdir() if not p.name.startswith("."))


def assert_retry_later(response: httpx.Response, status: int, at_most: float) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    assert 1 <= int(response.headers["Retry-After"]) <= at_most


def test_a_live_session_survives_a_flood_of_session_creations(
    server: tuple[str, Path], kit: Kit
) -> None:
    base_url, store_dir = server
    profile = varied_profiles(1)[0]
    with httpx.Client(base_url=base_url, timeout=120) as http:
        live_id, live_auth = open_session(http, kit.evaluation_keys)
        upload(http, live_id, live_auth, kit.encrypt(profile))
        room = MAX_SESSIONS - len(sessions_on_disk(store_dir))

        # 200 creations from 200 clients, 4 at a time: the store fills up, then refuses.
        answers: list[httpx.Response] = []
        lock = threading.Lock()

        def flood(first: int) -> None:
            with httpx.Client(base_url=base_url, timeout=120) as attacker:
                for index in range(first, FLOOD, FLOOD_THREADS):
                    client_ip = f"10.0.{index // 256}.{index % 256}"
                    response = attacker.post(
                        "/sessions",
                        content=kit.evaluation_keys,
                        headers={**OCTET, "X-Forwarded-For": client_ip},
                    )
                    with lock:
                        answers.append(response)

        threads = [threading.Thread(target=flood, args=(i,)) for i in range(FLOOD_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert len(answers) == FLOOD
        created = [r for r in answers if r.status_code == 201]
        refused = [r for r in answers if r.status_code != 201]
        assert len(created) == room
        for response in refused:
            assert_retry_later(response, 503, at_most=TTL_SECONDS)
        assert live_id in sessions_on_disk(store_dir)
        assert len(sessions_on_disk(store_dir)) == MAX_SESSIONS

        # The session opened before the flood finishes its flow.
        assert http.post(f"/sessions/{live_id}/predict", headers=live_auth).status_code == 200
        output = http.get(f"/sessions/{live_id}/output", headers=live_auth)
        assert int(kit.decrypt(output.content)) == int(profile.verdict())

        # The flood's sessions deleted, one client creating in a loop meets its quota.
        delete_created(http, created)
        one_client = {**OCTET, "X-Forwarded-For": "10.9.9.9"}
        statuses, kept = [], []
        for _ in range(QUOTA + 5):
            response = http.post("/sessions", content=kit.evaluation_keys, headers=one_client)
            statuses.append(response.status_code)
            kept.append(response)
            if response.status_code != 201:
                assert_retry_later(response, 429, at_most=QUOTA_WINDOW_SECONDS)
        assert statuses == [201] * QUOTA + [429] * 5
        delete_created(http, kept)
        # Another client is not affected by that one's quota, and the loopback (where the page's
        # process is the client, limiting its own users) has none: only the store limits it.
        other = http.post(
            "/sessions",
            content=kit.evaluation_keys,
            headers={**OCTET, "X-Forwarded-For": "10.7.7.7"},
        )
        loopback = [
            http.post("/sessions", content=kit.evaluation_keys, headers=OCTET)
            for _ in range(QUOTA + 1)
        ]
        assert [r.status_code for r in (other, *loopback)] == [201] * (QUOTA + 2)
        assert http.get(f"/sessions/{live_id}/output", headers=live_auth).status_code == 200
        delete_created(http, [other, *loopback])  # leave room for the other tests


def delete_created(http: httpx.Client, responses: list[httpx.Response]) -> None:
    """DELETE the sessions that these POST /sessions answers created."""
    for response in responses:
        if response.status_code == 201:
            body = response.json()
            deleted = http.delete(f"/sessions/{body['session_id']}", headers=bearer(body["token"]))
            assert deleted.status_code == 204


@pytest.mark.parametrize(
    ("label", "request_args"),
    [
        ("text/plain", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}),
        ("form", {"data": {"field": "value"}}),
        ("multipart form", {"files": {"file": ("keys.bin", b"\0" * 64)}}),
        ("no Content-Type", {"content": b"\0" * 64}),
    ],
)
def test_bodies_other_than_octet_stream_get_415(
    server: tuple[str, Path], kit: Kit, label: str, request_args: dict
) -> None:
    base_url, store_dir = server
    with httpx.Client(base_url=base_url, timeout=60) as http:
        created = http.post(
            "/sessions",
            content=kit.evaluation_keys,
            headers={**OCTET, "X-Forwarded-For": f"10.6.6.{len(label)}"},
        )
        assert created.status_code == 201, created.text
        session_id, auth = created.json()["session_id"], bearer(created.json()["token"])
        before = sessions_on_disk(store_dir)
        for method, path, headers in (
            ("POST", "/sessions", {}),
            ("PUT", f"/sessions/{session_id}/inputs/bank", auth),
            ("POST", f"/sessions/{session_id}/explain", auth),
        ):
            args = {**request_args, "headers": {**request_args.get("headers", {}), **headers}}
            response = http.request(method, path, **args)
            detail = assert_client_error(response, 415)
            assert "application/octet-stream" in detail, (label, detail)
        assert sessions_on_disk(store_dir) == before
        assert sorted(p.name for p in (store_dir / session_id).iterdir()) == [
            "evaluation_keys.bin",
            "meta.json",
        ]
        assert http.delete(f"/sessions/{session_id}", headers=auth).status_code == 204


def test_a_foreign_host_header_is_refused(server: tuple[str, Path], kit: Kit) -> None:
    base_url, store_dir = server
    port = base_url.rsplit(":", 1)[1]
    with httpx.Client(base_url=base_url, timeout=60) as http:
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host
        before = sessions_on_disk(store_dir)
        for host in ("attacker.example", f"attacker.example:{port}", "localhost.attacker.example"):
            detail = assert_client_error(http.get("/health", headers={"Host": host}), 400)
            assert "host" in detail
            # (A small body: a refused request's body is not read, the connection is closed.)
            response = http.post("/sessions", content=bytes(64), headers={**OCTET, "Host": host})
            assert_client_error(response, 400)
        assert sessions_on_disk(store_dir) == before
