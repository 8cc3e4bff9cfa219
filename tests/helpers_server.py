"""Start the real FHE server (``uvicorn server:app``) in a child process for tests.

Usage::

    from helpers_server import running_server

    with running_server(store_dir=tmp_path / "store", env={"FHE_MAX_WAITING_FHE": "0"}) as url:
        httpx.get(f"{url}/health")

The server listens on a free port of 127.0.0.1, keeps its sessions in ``store_dir`` and takes
every other setting from ``env`` (``FHE_*`` variables, see ``settings.ServerSettings``). The
context manager returns once ``/health`` answers 200 and stops the process on exit. If the process
exits or does not answer in time, ``ServerStartError`` carries its log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO_DIR = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 90.0


class ServerStartError(RuntimeError):
    """The server process exited or did not answer /health in time.

    Attributes:
        log: everything the process printed.
        returncode: its exit status, or None if it was still running (then killed).
    """

    def __init__(self, message: str, log: str, returncode: int | None):
        super().__init__(f"{message}\n--- server log (tail) ---\n{log[-4000:]}")
        self.log = log
        self.returncode = returncode


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@contextmanager
def running_server(
    store_dir: Path | None,
    env: dict[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT_SECONDS,
    app: str = "server:app",
) -> Iterator[str]:
    """Run ``uvicorn <app>`` on a free port; yield its base URL (``http://127.0.0.1:PORT``).

    Args:
        store_dir: the server's session directory (FHE_STORE_DIR), None for a server without.
        env: extra environment variables for the server (e.g. FHE_MAX_CONCURRENT_FHE).
        timeout: seconds to wait for /health.
        app: the ASGI app (``threeparty.server:app`` for the three-party server).

    Raises:
        ServerStartError: if the server exits or does not answer /health within ``timeout``.
    """
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if store_dir is not None:
        child_env["FHE_STORE_DIR"] = str(store_dir)
    child_env.update(env or {})
    command = [
        sys.executable, "-m", "uvicorn", app,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "info",
    ]  # fmt: skip
    with tempfile.TemporaryFile(mode="w+b") as log:

        def read_log() -> str:
            log.flush()
            log.seek(0)
            return log.read().decode("utf-8", errors="replace")

        process = subprocess.Popen(
            command, cwd=REPO_DIR, env=child_env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise ServerStartError(
                        f"server exited with status {process.returncode} before answering",
                        log=read_log(),
                        returncode=process.returncode,
                    )
                try:
                    if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"server did not answer /health within {timeout} s",
                        log=read_log(),
                        returncode=None,
                    )
                time.sleep(0.2)
            yield base_url
        finally:
            _stop(process)
