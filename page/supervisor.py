"""The servers the page started, watched: restarted when they die, stopped with the page.

One ``Supervisor`` holds every child server of the page: the FHE server (``uvicorn server:app``)
and the three-party server (``uvicorn threeparty.server:app`` in ``.venv-threeparty``). Each is a
``SupervisedServer``, started through the shared launcher (``fhe_server.launcher``), which checks
the port the way uvicorn binds it (a server stopped a moment ago leaves sockets in TIME_WAIT,
which do not count as taken). A watcher thread notices a child's exit, reaps it (no zombie) and
starts it again on the same port, at most ``restart_limit`` times in ten minutes; meanwhile
``problem()`` names the message the page shows for a step that could not reach it. The FHE
server's sessions survive a restart (its store is on disk).

The FHE server is started before the page serves (``start``: the page needs it); the three-party
server in the background (``start_in_background``: its self-test takes a while, and the page
works without it), and a run waits for it (``ready``). ``Supervisor.stop`` stops them all.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from fhe_server.launcher import ServerProcess, ServerStartError

logger = logging.getLogger(__name__)

RESTART_WINDOW_SECONDS = 600.0
WATCH_INTERVAL_SECONDS = 0.5
# A killed server stops taking connections a moment before it has exited (its sockets close
# first): how long a step that could not reach it waits to see whether it is exiting.
EXIT_GRACE_SECONDS = 3.0


class InterpreterServerProcess(ServerProcess):
    """A ``ServerProcess`` run by another interpreter (the three-party server's, its own venv)."""

    def __init__(self, python: Path, app: str, **options: object) -> None:
        super().__init__(app, **options)  # type: ignore[arg-type]
        self.python = python

    def command(self) -> list[str]:
        """The launcher's command line with ``python`` in place of this process's interpreter."""
        return [str(self.python), *super().command()[1:]]


class SupervisedServer:
    """One child server: started, restarted if it dies, stopped.

    Args:
        name: what the logs call it ("the FHE server").
        server: the child (not started).
        restart_limit: restarts allowed within ten minutes before giving up.
    """

    def __init__(self, name: str, server: ServerProcess, restart_limit: int) -> None:
        self.name = name
        self.server = server
        self.restart_limit = restart_limit
        self.restarts = 0
        self._restart_times: deque[float] = deque()
        self._state = "stopped"  # "starting", "running", "restarting", "down"
        self._stop = threading.Event()
        self._started = threading.Event()  # the first start ended (well or not)
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.server.url

    @property
    def state(self) -> str:
        """Its state: "stopped", "starting", "running", "restarting" or "down"."""
        return self._state

    def start(self) -> None:
        """Start the server and its watcher; return once /health answers.

        Raises:
            ServerStartError: (PortInUseError if the port is taken) it did not start.
        """
        self._first_start()
        self._watcher = threading.Thread(target=self._watch, name=f"watch {self.name}", daemon=True)
        self._watcher.start()

    def start_in_background(self) -> None:
        """Start the server and then watch it, in one thread (``ready`` waits for the start).

        One thread starts, watches and restarts the child: Linux stops a child made to die with
        its parent when the *thread* that started it ends. A failed start is logged.
        """

        def start_then_watch() -> None:
            try:
                self._first_start()
            except ServerStartError as error:
                if not self._stop.is_set():
                    logger.error("%s did not start: %s", self.name, error)
                return
            self._watch()

        self._state = "starting"
        self._watcher = threading.Thread(target=start_then_watch, name=self.name, daemon=True)
        self._watcher.start()

    def _first_start(self) -> None:
        self._state = "starting"
        try:
            if not self._stop.is_set():
                self.server.start()  # not under the lock: stop() may stop a start under way
        except BaseException:
            self._state = "down"
            raise
        finally:
            self._started.set()
        with self._lock:
            if self._stop.is_set():  # stopped while it started
                self.server.stop()
                self._state = "stopped"
                return
            self._state = "running"

    def ready(self, timeout: float) -> bool:
        """Whether the server runs, waiting up to ``timeout`` s for a start or restart under way."""
        deadline = time.monotonic() + timeout
        self._started.wait(timeout)
        while self._state == "restarting" and time.monotonic() < deadline:
            time.sleep(WATCH_INTERVAL_SECONDS)
        return self._state == "running"

    def problem(self) -> str | None:
        """The message key for a step that could not reach the server, or None if it runs."""
        process = self.server.process
        if self._state == "running" and process is not None:
            try:
                process.wait(timeout=EXIT_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                return None  # it runs: the client's own error says what went wrong
            return "err_server_restarting"  # it died a moment ago; the watcher is about to see it
        return {"restarting": "err_server_restarting", "down": "err_server_down"}.get(self._state)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_SECONDS):
            process = self.server.process
            if process is None or process.poll() is None:
                continue
            with self._lock:
                if self._stop.is_set():
                    return
                logger.error("%s exited with code %s", self.name, process.returncode)
                self._state = "restarting"  # before stop(), which leaves no process to look at
                self.server.stop()  # reaps it
                if not self._restart():
                    return

    def _restart(self) -> bool:
        """Start the server again unless it restarted too often; whether it runs again."""
        now = time.monotonic()
        while self._restart_times and self._restart_times[0] < now - RESTART_WINDOW_SECONDS:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.restart_limit:
            logger.error(
                "%s restarted %d times in 10 minutes: giving up", self.name, self.restart_limit
            )
            self._state = "down"
            return False
        self._restart_times.append(now)
        try:
            self.server.start()
        except ServerStartError as error:
            logger.error("%s did not start again: %s", self.name, error)
            self._state = "down"
            return False
        self.restarts += 1
        self._state = "running"
        logger.info("%s runs again at %s", self.name, self.server.url)
        return True

    def stop(self) -> None:
        """Stop watching and stop the server (idempotent)."""
        self._stop.set()
        with self._lock:
            self.server.stop()
            self._state = "stopped"
        self._started.set()


class Supervisor:
    """Every server the page started, by name; ``stop`` stops them all (last started first)."""

    def __init__(self) -> None:
        self.children: dict[str, SupervisedServer] = {}

    def add(self, key: str, child: SupervisedServer) -> SupervisedServer:
        """Supervise ``child`` under ``key`` ("fhe", "threeparty"); return it."""
        self.children[key] = child
        return child

    def get(self, key: str) -> SupervisedServer | None:
        """The child under ``key``, or None when the page did not start that server."""
        return self.children.get(key)

    def states(self) -> Mapping[str, str]:
        """Each child's state, for the logs and the tests."""
        return {key: child.state for key, child in self.children.items()}

    def stop(self) -> None:
        """Stop every child (idempotent)."""
        for child in reversed(list(self.children.values())):
            child.stop()


def fhe_server(port: int, start_timeout: float, restart_limit: int) -> SupervisedServer:
    """The FHE server (``uvicorn server:app`` of this interpreter) on 127.0.0.1:``port``."""
    server = ServerProcess(
        port=port, inherit_output=True, die_with_parent=True, start_timeout=start_timeout
    )
    return SupervisedServer("the FHE server", server, restart_limit)


def threeparty_server(
    python: Path, port: int, start_timeout: float, restart_limit: int
) -> SupervisedServer:
    """The three-party server (``uvicorn threeparty.server:app`` of ``python``), OpenMP single."""
    server = InterpreterServerProcess(
        python,
        "threeparty.server:app",
        port=port,
        env={"OMP_NUM_THREADS": "1"},
        inherit_output=True,
        die_with_parent=True,
        start_timeout=start_timeout,
    )
    return SupervisedServer("the three-party server", server, restart_limit)
