"""The cluster's command: ``python -m fhe_server.cluster`` starts everything and Ctrl-C stops it.

One replica, Redis and nginx on free loopback ports, started by the command as ``make cluster``
runs it; after SIGINT the command exits 0 and nothing listens on any of its ports. Without
redis-server or nginx the module is skipped (an error under ``REQUIRE_CLUSTER=1``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fhe_server.cluster import REPO_DIR, free_port
from tests.support.cluster import health, require_cluster_binaries

require_cluster_binaries()


def test_the_cluster_command_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    ports = {"port": free_port(), "redis": free_port(), "replica": free_port()}
    command = [
        sys.executable, "-m", "fhe_server.cluster", "--replicas", "1",
        "--port", str(ports["port"]), "--redis-port", str(ports["redis"]),
        "--replica-port", str(ports["replica"]),
    ]  # fmt: skip
    env = {**os.environ, "FHE_STORE_DIR": str(tmp_path / "unused"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        cwd=REPO_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "[cluster] ready at" in line:
                break
        assert any("ready at" in line for line in lines), "".join(lines[-40:])
        url = f"http://127.0.0.1:{ports['port']}"
        assert health(url)["replica"] == "replica-1"
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=60) == 0
        for port in ports.values():  # nginx, Redis and the replica are all stopped
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
