"""An unexpected error is a JSON 500 on a connection that stays open (issue 22), on real uvicorn.

Starlette's outermost middleware re-raises an unexpected error after answering it, and uvicorn
then closes the connection; behind nginx, that kept-alive connection failed the next request
and took a healthy replica out. ``fhe_server.json_errors`` answers it without re-raising.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from fhe_server.api import create_app
from fhe_server.launcher import free_port
from fhe_server.service import ScoringService
from settings import ServerSettings


def test_an_unexpected_error_is_a_json_500_and_the_connection_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_status = ScoringService.store_status

    def fails_once(self: ScoringService) -> dict[str, bool]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("secret internal state")
        return real_status(self)

    monkeypatch.setattr(ScoringService, "store_status", fails_once)
    config = ServerSettings(store_dir=tmp_path / "store", allowed_hosts=["127.0.0.1"])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.1)
        connection.request("GET", "/health")
        answer = connection.getresponse()
        body = answer.read()
        assert answer.status == 500 and body == b'{"detail":"internal server error"}'
        assert not answer.will_close
        kept = connection.sock
        connection.request("GET", "/health")
        answer = connection.getresponse()
        assert answer.status == 200, answer.read()
        answer.read()
        assert connection.sock is kept  # the same connection answered both
    finally:
        connection.close()
        server.should_exit = True
        thread.join(timeout=30)
