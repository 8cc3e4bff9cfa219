"""The FHE server as it runs: ``uvicorn server:app`` in a child process, with real keys.

A full flow, a full FHE queue answered 503 while /health stays fast, bodies over the limits
refused while they stream, sessions kept across a restart, and a refusal to start with
artifacts of other versions.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

import settings
from development.reference import clear_verdict
from fhe_server.launcher import ServerStartError
from tests.support.applications import CANDIDATE_ROWS, VERDICT_PROFILES
from tests.support.http import OCTET, assert_error, open_session, upload
from tests.support.kit import CARD, Kit
from tests.support.servers import one_fhe_slot_server, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with one_fhe_slot_server(tmp_path_factory.mktemp("live") / "store") as base_url:
        yield base_url


def test_uvicorn_full_flow(live_server: str, kit: Kit) -> None:
    with httpx.Client(base_url=live_server, timeout=60) as http:
        assert http.get("/health").json()["model"]["versions"] == CARD["versions"]
        session_id, auth = open_session(http, kit.evaluation_keys)
        upload(http, session_id, auth, kit.encrypt(VERDICT_PROFILES[1]))
        response = http.post(f"/sessions/{session_id}/predict", headers=auth)
        assert response.status_code == 200 and response.json()["fhe_execution_time"] > 0
        output = http.get(f"/sessions/{session_id}/output", headers=auth)
        assert int(kit.decrypt(output.content, "predict")) == int(VERDICT_PROFILES[1].verdict())
        candidates = kit.encrypt_candidates()
        response = http.post(
            f"/sessions/{session_id}/explain", content=candidates, headers={**auth, **OCTET}
        )
        assert response.status_code == 200
        applicant, bank = VERDICT_PROFILES[1].applicant, VERDICT_PROFILES[1].bank
        expected = [int(clear_verdict(applicant, bank, row)) for row in CANDIDATE_ROWS]
        assert [int(v) for v in kit.decrypt(response.content, "explain")] == expected
        assert http.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
        assert_error(http.get(f"/sessions/{session_id}/output", headers=auth), 404)


def test_uvicorn_503_when_the_fhe_queue_is_full_and_health_stays_fast(
    live_server: str, kit: Kit, ciphertexts: dict
) -> None:
    with httpx.Client(base_url=live_server, timeout=60) as http:
        session_id, auth = open_session(http, kit.evaluation_keys)
        upload(http, session_id, auth, ciphertexts)
        results: dict[str, httpx.Response] = {}

        def explain() -> None:  # ~1-2 s of FHE, holding the only slot
            with httpx.Client(base_url=live_server, timeout=60) as other:
                results["first"] = other.post(
                    f"/sessions/{session_id}/explain",
                    content=ciphertexts["candidates"],
                    headers={**auth, **OCTET},
                )

        worker = threading.Thread(target=explain)
        worker.start()
        # Wait until the explain holds the slot (however slow the machine), then ask for more.
        deadline = time.monotonic() + 60
        while http.get("/health").json()["fhe_queue"]["admitted"] == 0:
            assert worker.is_alive() and time.monotonic() < deadline, "explain never started"
            time.sleep(0.02)
        busy = http.post(f"/sessions/{session_id}/predict", headers=auth)
        health_latencies = []
        while worker.is_alive() and len(health_latencies) < 20:
            start = time.perf_counter()
            assert http.get("/health", timeout=5).status_code == 200
            health_latencies.append(time.perf_counter() - start)
            time.sleep(0.05)
        worker.join(timeout=60)
        assert results["first"].status_code == 200, results["first"].text
        assert_error(busy, 503, "queue")
        assert int(busy.headers["Retry-After"]) >= 1
        assert health_latencies and max(health_latencies) < 1.0
        # Once the slot is free the same request goes through.
        assert http.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200


def raw_request(base_url: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send a request head and some body bytes, never finish the body, read the response."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without a response: {data!r}"
            data += chunk
        raw_head, rest = data.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), headers, rest


def chunked_head(base_url: str, method: str, path: str, extra: str = "") -> str:
    host = urlsplit(base_url).netloc
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
        f"Transfer-Encoding: chunked\r\n{extra}"
    )


def one_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_uvicorn_limits_while_streaming_and_restart(
    tmp_path: Path, kit: Kit, ciphertexts: dict
) -> None:
    store_dir = tmp_path / "store"
    with running_server(store_dir=store_dir) as base_url:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            session_id, auth = open_session(http, kit.evaluation_keys)
            upload(http, session_id, auth, ciphertexts)
            assert http.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200
            output = http.get(f"/sessions/{session_id}/output", headers=auth).content

    limits = {"FHE_MAX_EVALUATION_KEY_BYTES": "1000000", "FHE_MAX_CIPHERTEXT_BYTES": "100"}
    with running_server(store_dir=store_dir, env=limits) as base_url:
        # The session made by the previous process is intact.
        with httpx.Client(base_url=base_url, timeout=60) as http:
            again = http.get(f"/sessions/{session_id}/output", headers=auth)
            assert again.status_code == 200 and again.content == output

        # Bodies over the limit are refused while they stream in: the bodies below are never
        # finished (no closing chunk), so any answer proves the server did not wait for the end.
        head = chunked_head(base_url, "POST", "/sessions")
        status, _, body = raw_request(base_url, head, one_chunk(kit.evaluation_keys[:1_000_001]))
        assert status == 413 and b"limit" in body
        auth_line = f"Authorization: {auth['Authorization']}\r\n"
        for path, data in (
            (f"/sessions/{session_id}/inputs/applicant", ciphertexts["applicant"]),
            (f"/sessions/{session_id}/explain", ciphertexts["candidates"]),
        ):
            method = "PUT" if "inputs" in path else "POST"
            head = chunked_head(base_url, method, path, auth_line)
            status, _, body = raw_request(base_url, head, one_chunk(data[:101]))
            assert status == 413 and b"limit" in body, body
        # A declared Content-Length over the limit is refused before any body byte is sent.
        head = (
            f"POST /sessions HTTP/1.1\r\nHost: {urlsplit(base_url).netloc}\r\n"
            "Content-Length: 2000000\r\n"
        )
        status, _, body = raw_request(base_url, head)
        assert status == 413 and b"limit" in body
        with httpx.Client(base_url=base_url, timeout=60) as http:
            assert http.get("/health").status_code == 200


def test_uvicorn_refuses_to_start_with_artifacts_of_other_versions(tmp_path: Path) -> None:
    deployment = tmp_path / "deployment"
    shutil.copytree(settings.DEPLOYMENT_DIR, deployment)
    card = json.loads((deployment / "model_card.json").read_text())
    card["versions"]["concrete-ml"] = "0.0.1"
    (deployment / "model_card.json").write_text(json.dumps(card))
    env = {"FHE_DEPLOYMENT_DIR": str(deployment)}
    with pytest.raises(ServerStartError) as error:
        with running_server(store_dir=tmp_path / "store", env=env):
            pass
    assert error.value.returncode not in (None, 0)
    assert "refusing to start" in error.value.log and "concrete-ml" in error.value.log
