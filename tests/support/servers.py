"""Start the real FHE server (``uvicorn server:app``) in a child process for tests.

Usage::

    from tests.support.servers import running_server

    with running_server(store_dir=tmp_path / "store", env={"FHE_MAX_WAITING_FHE": "0"}) as url:
        httpx.get(f"{url}/health")

The server listens on a free port of 127.0.0.1, keeps its sessions in ``store_dir`` and takes
every other setting from ``env`` (``FHE_*`` variables, see ``settings.ServerSettings``). The
context manager returns once ``/health`` answers 200 and stops the process on exit. If the process
exits or does not answer in time, ``ServerStartError`` carries its log. The work is done by the
shared launcher, ``fhe_server.launcher`` (where ``ServerStartError`` is defined).

``ScriptedServer`` is the opposite: no server at all, a handler for ``httpx.MockTransport`` whose
answers the test sets. ``ForwardingTransport`` sends a client's requests to whichever address a
restarted server listens on now.

The three-party suite imports this module in ``.venv-threeparty`` too: it needs httpx and the
launcher only (no concrete, no psutil, no FastAPI).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from fhe_server.launcher import ServerProcess

STARTUP_TIMEOUT_SECONDS = 90.0


@contextmanager
def running_server(
    store_dir: Path | None,
    env: dict[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT_SECONDS,
    extra_args: Sequence[str] = (),
    app: str = "server:app",
) -> Iterator[str]:
    """Run ``uvicorn <app>`` on a free port; yield its base URL (``http://127.0.0.1:PORT``).

    Args:
        store_dir: the server's session directory (FHE_STORE_DIR), None for a server without.
        env: extra environment variables for the server (e.g. FHE_MAX_CONCURRENT_FHE).
        timeout: seconds to wait for /health.
        extra_args: more uvicorn options (e.g. ``("--workers", "2")``).
        app: the ASGI app (``threeparty.server:app`` for the three-party server).

    Raises:
        ServerStartError: if the server exits or does not answer /health within ``timeout``.
    """
    server_env = dict(env or {})
    if store_dir is not None:
        server_env.setdefault("FHE_STORE_DIR", str(store_dir))
    with tempfile.TemporaryDirectory(prefix="threeparty-store-") as own_store:
        # A three-party server keeps its sessions on disk: each test server gets its own folder
        # unless the test names one (a restart test reuses it).
        server_env.setdefault("THREEPARTY_STORE_DIR", str(store_dir or own_store))
        with ServerProcess(
            app, env=server_env, start_timeout=timeout, extra_args=extra_args
        ) as server:
            yield server.url


# One FHE computation at a time and no waiting room: a second one is answered 503 at once.
ONE_FHE_SLOT = {"FHE_MAX_CONCURRENT_FHE": "1", "FHE_MAX_WAITING_FHE": "0"}


@contextmanager
def one_fhe_slot_server(store_dir: Path) -> Iterator[str]:
    """A real server with a single FHE slot (``ONE_FHE_SLOT``); yield its base URL."""
    with running_server(store_dir=store_dir, env=ONE_FHE_SLOT) as base_url:
        yield base_url


class ScriptedServer:
    """A mock FHE server for ``httpx.MockTransport``; the test sets its answers.

    POST /sessions opens session ``s1`` (token ``t1``) and DELETE answers 204; so do the PUTs of
    inputs when ``accept_inputs`` is set. Every other request gets ``next``: a response, or an
    exception to raise (409 "unexpected in this test" while it is None). ``fail_once`` is raised
    by the next request, whatever it is, and then cleared.

    Attributes:
        requests: (method, path) of every request received.
    """

    def __init__(self, accept_inputs: bool = False) -> None:
        self.accept_inputs = accept_inputs
        self.next: httpx.Response | Exception | None = None
        self.fail_once: Exception | None = None
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if self.fail_once is not None:
            error, self.fail_once = self.fail_once, None
            raise error
        if request.method == "POST" and request.url.path == "/sessions":
            return httpx.Response(201, json={"session_id": "s1", "token": "t1", "expires_in": 60})
        if request.method == "DELETE" or (request.method == "PUT" and self.accept_inputs):
            return httpx.Response(204)
        if isinstance(self.next, Exception):
            raise self.next
        if self.next is None:
            return httpx.Response(409, json={"detail": "unexpected in this test"})
        return self.next


class ForwardingTransport(httpx.BaseTransport):
    """Sends every request to the address ``target()`` returns now (a restarted server's port).

    The client keeps one fixed ``server_url``; the scheme, host and port of each request are
    replaced by those of the current server.
    """

    def __init__(self, target: Callable[[], str]):
        self.target = target
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        current = httpx.URL(self.target())
        request.url = request.url.copy_with(
            scheme=current.scheme, host=current.host, port=current.port
        )
        request.headers["Host"] = current.netloc.decode("ascii")
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()
