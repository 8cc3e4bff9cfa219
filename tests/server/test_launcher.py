"""The shared server launcher (fhe_server/launcher.py) with a tiny ASGI app under real uvicorn.

The tiny app (written to a temporary folder) answers /health at once, so these tests take about a
second each: what they check is the launcher (ports, the wait, the stop), not the FHE server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from development.instrumentation import HealthProbe, RecordingTransport
from fhe_server.launcher import (
    PortInUseError,
    ServerProcess,
    ServerStartError,
    free_port,
    port_is_free,
    stop_process,
)

TINY_APP = """
import os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = os.environ.get("TINY_ANSWER", "ok").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture
def tiny_app(tmp_path: Path) -> Path:
    (tmp_path / "tiny.py").write_text(textwrap.dedent(TINY_APP))
    return tmp_path


def test_start_waits_for_health_and_stop_reaps(tiny_app: Path) -> None:
    log_path = tiny_app / "logs" / "server.log"
    server = ServerProcess(
        "tiny:app", cwd=tiny_app, env={"TINY_ANSWER": "hello"}, log_path=log_path
    )
    with server:
        assert httpx.get(f"{server.url}/health", timeout=10).text == "hello"
        process = server.process
        assert process is not None and process.poll() is None
    assert process.returncode is not None  # reaped: no zombie left
    assert server.process is None
    assert "Application startup complete" in server.log_tail()
    assert "Application startup complete" in log_path.read_text()


def test_a_restart_on_the_same_port_right_after_a_stop(tiny_app: Path) -> None:
    server = ServerProcess("tiny:app", cwd=tiny_app, port=free_port())
    with httpx.Client(base_url=server.url, timeout=10) as http:
        with server:
            # The connection stays open: the server closes it at the stop (TIME_WAIT on its port).
            assert http.get("/health").status_code == 200
    port = server.port
    assert port is not None and port_is_free(port)
    assert _in_time_wait(port), "the test meant to restart beside a socket in TIME_WAIT"
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # why the check binds with SO_REUSEADDR, as uvicorn does
    with ServerProcess("tiny:app", cwd=tiny_app, port=port) as again:
        assert httpx.get(f"{again.url}/health", timeout=10).status_code == 200


def _in_time_wait(port: int) -> bool:
    """Whether a TCP socket of 127.0.0.1:port is in TIME_WAIT (Linux /proc/net/tcp, state 06)."""
    local = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(line.split()[1] == local and line.split()[3] == "06" for line in lines)


def test_a_port_with_a_listening_socket_is_refused(tiny_app: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_is_free(port)
        with pytest.raises(PortInUseError, match="already in use"):
            ServerProcess("tiny:app", cwd=tiny_app, port=port).start()


def test_an_exit_before_ready_carries_the_output_tail(tiny_app: Path) -> None:
    server = ServerProcess("missing_module:app", cwd=tiny_app)
    with pytest.raises(ServerStartError) as caught:
        server.start()
    assert caught.value.returncode not in (None, 0)
    assert "missing_module" in caught.value.log
    assert server.process is None


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    # An app whose import blocks: uvicorn never listens.
    (tmp_path / "stuck.py").write_text("import time\ntime.sleep(600)\napp = None\n")
    server = ServerProcess("stuck:app", cwd=tmp_path, start_timeout=1.0, stop_grace=5.0)
    with pytest.raises(ServerStartError, match="did not become healthy within 1 s") as caught:
        server.start()
    assert caught.value.returncode is None
    assert server.process is None


def test_stop_kills_a_process_that_ignores_sigterm() -> None:
    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('r', flush=True); time.sleep(600)"  # noqa: E501
    process = subprocess.Popen([sys.executable, "-c", ignore], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"r\n"
    stop_process(process, grace=0.5)
    assert process.returncode == -signal.SIGKILL
    with pytest.raises(ChildProcessError):
        os.waitpid(process.pid, os.WNOHANG)  # already reaped


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert port_is_free(port)


def test_recording_transport_records_method_path_body_and_failures(tiny_app: Path) -> None:
    transport = RecordingTransport()
    with ServerProcess("tiny:app", cwd=tiny_app) as server:
        with httpx.Client(base_url=server.url, transport=transport, timeout=10) as http:
            http.put("/sessions/s1/inputs/bank", content=b"cipher")
    refused = RecordingTransport()
    with httpx.Client(base_url=server.url, transport=refused, timeout=2) as http:
        with pytest.raises(httpx.ConnectError):
            http.get("/health")
    assert refused.calls == [("GET", "/health")]
    assert transport.calls == [("PUT", "/sessions/s1/inputs/bank")]
    (record,) = transport.requests
    assert record.body == b"cipher" and record.seconds > 0
    assert (
        record.wire_bytes().startswith(b"PUT http://127.0.0.1:")
        and b"cipher" in record.wire_bytes()
    )


def test_health_probe_measures_from_another_process(tiny_app: Path) -> None:
    with ServerProcess("tiny:app", cwd=tiny_app) as server:
        with HealthProbe(server.url, period_seconds=0.05) as probe:
            time.sleep(0.5)
    assert probe.failures == []
    assert len(probe.latencies) >= 2 and all(0 < s < 30 for s in probe.latencies)


def test_health_probe_reports_failures_and_a_dead_address() -> None:
    with pytest.raises(RuntimeError, match="did not start"):
        with HealthProbe("http://127.0.0.1:9", start_timeout=0.01):
            pass
    with HealthProbe(f"http://127.0.0.1:{free_port()}", period_seconds=0.05) as probe:
        time.sleep(0.2)
    assert probe.latencies == [] and probe.failures and "ConnectError" in probe.failures[0]
