"""The FHE server the page started, watched: restarted when it dies, stopped with the page.

The page starts ``uvicorn server:app`` through the shared launcher (``fhe_server.launcher``),
which checks the port the way uvicorn binds it (a server stopped a moment ago leaves sockets in
TIME_WAIT, which do not count as taken). A watcher thread notices the child's exit, reaps it (no
zombie) and starts it again on the same port, at most ``restart_limit`` times in ten minutes;
meanwhile ``problem()`` names the message the page shows for a step that could not reach it.
Sessions survive a restart: the server keeps them in its store on disk.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import deque

from fhe_server.launcher import ServerProcess, ServerStartError

logger = logging.getLogger(__name__)

RESTART_WINDOW_SECONDS = 600.0
WATCH_INTERVAL_SECONDS = 0.5
# A killed server stops taking connections a moment before it has exited (its sockets close
# first): how long a step that could not reach it waits to see whether it is exiting.
EXIT_GRACE_SECONDS = 3.0


class ServerSupervisor:
    """Starts the FHE server, restarts it if it dies, stops it.

    Args:
        port: the server's port on 127.0.0.1.
        start_timeout: seconds to wait for its /health at each start.
        restart_limit: restarts allowed within ten minutes before giving up.
    """

    def __init__(self, port: int, start_timeout: float, restart_limit: int) -> None:
        self.server = ServerProcess(
            port=port, inherit_output=True, die_with_parent=True, start_timeout=start_timeout
        )
        self.restart_limit = restart_limit
        self.restarts = 0
        self._restart_times: deque[float] = deque()
        self._state = "stopped"  # "running", "restarting", "down"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.server.url

    def start(self) -> None:
        """Start the server and its watcher; return once /health answers.

        Raises:
            ServerStartError: (PortInUseError if the port is taken) it did not start.
        """
        self.server.start()
        self._state = "running"
        self._watcher = threading.Thread(target=self._watch, name="fhe-server-watch", daemon=True)
        self._watcher.start()

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
                logger.error("the FHE server exited with code %s", process.returncode)
                self._state = "restarting"  # before stop(), which leaves no process to look at
                self.server.stop()  # reaps it
                now = time.monotonic()
                while self._restart_times and self._restart_times[0] < now - RESTART_WINDOW_SECONDS:
                    self._restart_times.popleft()
                if len(self._restart_times) >= self.restart_limit:
                    logger.error("restarted %d times in 10 minutes: giving up", self.restart_limit)
                    self._state = "down"
                    return
                self._restart_times.append(now)
                self._state = "restarting"
                try:
                    self.server.start()
                except ServerStartError as error:
                    logger.error("the FHE server did not start again: %s", error)
                    self._state = "down"
                    return
                self.restarts += 1
                self._state = "running"
                logger.info("the FHE server runs again at %s", self.server.url)

    def stop(self) -> None:
        """Stop watching and stop the server (idempotent)."""
        self._stop.set()
        with self._lock:
            self.server.stop()
            self._state = "stopped"
