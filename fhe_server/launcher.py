"""Start, watch and stop a real ``uvicorn server:app`` child process.

One harness for everything that runs the FHE server beside itself: the page (``app.py``), the
tests and the benchmark. It imports neither concrete nor fastapi (only httpx and the standard
library), so the page can use it without loading the server.

Usage::

    from fhe_server.launcher import ServerProcess

    with ServerProcess(env={"FHE_STORE_DIR": "/tmp/store"}) as server:
        httpx.get(f"{server.url}/health")

- ``free_port()`` / ``port_is_free()``: a free loopback port; whether a port can be bound now.
- ``ServerProcess``: starts ``uvicorn APP`` on a given or free port of 127.0.0.1, waits for
  ``/health`` (``ServerStartError`` with the process's output tail if it exits or a time-out
  passes), stops it (SIGTERM, then SIGKILL after a grace period, always reaped).
- ``wait_for_health()``: the same wait for a server this process did not start.
- ``stop_process()``: SIGTERM, SIGKILL after a grace period, reap.

The tests' and the benchmark's instrumentation (a recording transport, a /health probe) is in
``development.instrumentation``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

REPO_DIR = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
DEFAULT_APP = "server:app"
DEFAULT_START_TIMEOUT_SECONDS = 90.0
DEFAULT_STOP_GRACE_SECONDS = 15.0
HEALTH_POLL_INTERVAL_SECONDS = 0.2
# One /health request may wait this long: a loaded machine can be slow to answer.
HEALTH_REQUEST_TIMEOUT_SECONDS = 5.0
LOG_TAIL_CHARS = 4000
# A free port can be taken by another process between free_port() and uvicorn's bind; when this
# launcher chose the port itself, it tries that many ports before giving up.
BIND_ATTEMPTS = 3
_ADDRESS_IN_USE = "address already in use"


class ServerStartError(RuntimeError):
    """The server process exited or did not answer /health in time.

    Attributes:
        log: the tail of what the process printed ("" when its output was not captured).
        returncode: its exit status, or None if it was still running (then stopped).
    """

    def __init__(self, message: str, log: str = "", returncode: int | None = None):
        text = f"{message}\n--- server log (tail) ---\n{log[-LOG_TAIL_CHARS:]}" if log else message
        super().__init__(text)
        self.log = log
        self.returncode = returncode


class PortInUseError(ServerStartError):
    """The port asked for is already taken by another socket."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port of ``host`` that was free a moment ago.

    The port is released before returning, so another process could take it in between; a server
    started on it fails loudly (``ServerProcess`` then tries another port).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether uvicorn could bind ``host:port`` right now.

    The check binds with SO_REUSEADDR, as uvicorn does, so that sockets of a server stopped a
    moment ago (TIME_WAIT) do not count as taken while a listening socket does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: ask the kernel to SIGTERM the child if its parent dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_process(process: subprocess.Popen[Any], grace: float = DEFAULT_STOP_GRACE_SECONDS) -> None:
    """Stop a child process: SIGTERM, SIGKILL if it is still alive after ``grace`` s; reap it.

    Idempotent: a process that already exited is only reaped.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()  # SIGKILL cannot be refused: this reaps the child, no zombie is left


def wait_for_health(
    url: str,
    process: subprocess.Popen[Any] | None = None,
    timeout: float = DEFAULT_START_TIMEOUT_SECONDS,
    log_tail: Callable[[], str] | None = None,
    *,
    path: str = "/health",
    name: str = "the FHE server",
) -> None:
    """Poll ``url`` + ``path`` until it answers 200.

    Args:
        url: the server's base URL.
        process: the server's process when this program started it (its exit is an error).
        timeout: seconds before giving up.
        log_tail: returns the process's output tail, for the error.
        path: what to poll (``/health``; ``/`` for a page).
        name: what the server is called in the error message.

    Raises:
        ServerStartError: the process exited, or ``path`` did not answer 200 within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    last_problem = "no answer yet"
    while True:
        if process is not None and process.poll() is not None:
            raise ServerStartError(
                f"{name} exited with code {process.returncode} before it was ready",
                log=log_tail() if log_tail else "",
                returncode=process.returncode,
            )
        try:
            response = httpx.get(f"{url}{path}", timeout=HEALTH_REQUEST_TIMEOUT_SECONDS)
            if response.status_code == 200:
                return
            last_problem = f"{path} answered HTTP {response.status_code}"
        except httpx.HTTPError as error:
            last_problem = f"{error.__class__.__name__}: {error}"
        if time.monotonic() >= deadline:
            raise ServerStartError(
                f"{name} at {url} did not become healthy within {timeout:g} s ({last_problem})",
                log=log_tail() if log_tail else "",
            )
        time.sleep(HEALTH_POLL_INTERVAL_SECONDS)


class ServerProcess:
    """``uvicorn APP`` as a child process on 127.0.0.1, started and stopped by this process.

    Use it as a context manager (``with ServerProcess(...) as server``), or call ``start()`` and
    ``stop()``. The child's stdout and stderr go to ``log_path``, to an anonymous temporary file
    when ``log_path`` is None, or to this process's own output when ``inherit_output`` is set.

    Attributes:
        app: the ASGI application path given to uvicorn.
        host: the address it listens on.
        port: its port (chosen at ``start()`` when none was given).
        process: the running child, or None before ``start()`` and after ``stop()``.
    """

    def __init__(
        self,
        app: str = DEFAULT_APP,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO_DIR,
        log_path: Path | None = None,
        inherit_output: bool = False,
        log_level: str = "info",
        start_timeout: float = DEFAULT_START_TIMEOUT_SECONDS,
        stop_grace: float = DEFAULT_STOP_GRACE_SECONDS,
        die_with_parent: bool = False,
        extra_args: Sequence[str] = (),
    ):
        """Describe the server; nothing starts before ``start()``.

        Args:
            app: the ASGI app for uvicorn (``module:attribute``).
            port: the port to listen on; None picks a free one.
            host: the address to listen on.
            env: variables added to this process's environment for the child (``FHE_*``).
            cwd: the child's working directory (the repository, where ``server.py`` is).
            log_path: a file for the child's output; None for an anonymous temporary file.
            inherit_output: let the child write to this process's stdout/stderr instead.
            log_level: uvicorn's ``--log-level``.
            start_timeout: seconds to wait for /health.
            stop_grace: seconds between SIGTERM and SIGKILL when stopping.
            die_with_parent: Linux: the kernel stops the child if this process dies.
            extra_args: more uvicorn options (e.g. ``("--workers", "2")``).
        """
        self.app = app
        self.host = host
        self.port = port
        self.env = dict(env or {})
        self.cwd = cwd
        self.log_path = log_path
        self.inherit_output = inherit_output
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.die_with_parent = die_with_parent
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._last_log = ""

    @property
    def url(self) -> str:
        """The server's base URL (``http://127.0.0.1:PORT``)."""
        if self.port is None:
            raise RuntimeError("the server has no port before start()")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self.process is None:
            raise RuntimeError("the server is not running")
        return self.process.pid

    def command(self) -> list[str]:
        """The command line of the child."""
        return [
            sys.executable, "-m", "uvicorn", self.app,
            "--host", self.host, "--port", str(self.port), "--log-level", self.log_level,
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> ServerProcess:
        """Start the child and return once /health answers 200.

        Raises:
            PortInUseError: the port given is taken by another socket.
            ServerStartError: the child exited or did not answer in time (with its output tail).
        """
        if self.process is not None:
            raise RuntimeError("the server is already running")
        chosen_here = self.port is None
        for attempt in range(BIND_ATTEMPTS if chosen_here else 1):
            if chosen_here:
                self.port = free_port(self.host)
            elif not port_is_free(self.port, self.host):
                raise PortInUseError(f"port {self.port} of {self.host} is already in use")
            try:
                self._launch()
                wait_for_health(self.url, self.process, self.start_timeout, self.log_tail)
                return self
            except BaseException as error:
                self.stop()
                if not isinstance(error, ServerStartError):
                    raise
                lost_the_port = _ADDRESS_IN_USE in error.log.lower()
                if not (chosen_here and lost_the_port and attempt < BIND_ATTEMPTS - 1):
                    raise
                self.port = None  # another process took the port meanwhile: try another one
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self) -> None:
        output: IO[bytes] | None = None
        if not self.inherit_output:
            # Append mode: the child's writes go to the end even while log_tail() moves the
            # offset that this process and the child share.
            if self.log_path is None:
                self._log = tempfile.TemporaryFile(mode="a+b")
            else:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self.log_path.write_bytes(b"")
                self._log = self.log_path.open("a+b")
            output = self._log
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        preexec = _die_with_parent if self.die_with_parent and sys.platform == "linux" else None
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.cwd,
            env=child_env,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            preexec_fn=preexec,
        )

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the child's output (kept after ``stop()``; "" when not captured)."""
        if self._log is None:
            return self._last_log[-chars:]
        self._log.flush()
        size = self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, size - 4 * chars))
        return self._log.read().decode("utf-8", errors="replace")[-chars:]

    def stop(self) -> None:
        """Stop the child (SIGTERM, SIGKILL after ``stop_grace`` s) and reap it; idempotent."""
        if self.process is not None:
            stop_process(self.process, self.stop_grace)
            self.process = None
        if self._log is not None:
            self._last_log = self.log_tail(LOG_TAIL_CHARS * 4)
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
