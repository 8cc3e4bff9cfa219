"""A scripted client of the Gradio page over raw HTTP, as a script (or an attacker's) calls it.

``PageScript(url)`` reads the page's ``/config``, finds an event by the ``elem_id`` of the button
that triggers it, and runs it like the browser does: ``POST /gradio_api/queue/join`` with the
event's ``fn_index`` and a session hash, then reads ``/gradio_api/queue/data`` (server-sent
events) until the event completes. ``running_app`` starts ``python app.py`` (with its own FHE
server) on loopback ports. Used by the page's tests (tests/page/: the abuse test, and the browser
tests through the folder's conftest) and by development/bench_page.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from fhe_server.launcher import REPO_DIR, free_port, stop_process, wait_for_health

EVENT_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class EventResult:
    """How an event ended: success with output data, or the error message shown to the person."""

    success: bool
    data: list[Any] | None
    error: str | None
    title: str | None


class PageScript:
    """Runs the page's events over HTTP in one Gradio session (its own session hash)."""

    def __init__(
        self, url: str, session_hash: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.session_hash = session_hash or secrets.token_hex(6)
        self.http = httpx.Client(base_url=self.url, headers=headers or {}, timeout=60.0)
        self.config = self.http.get("/config").json()
        self._ids = {
            component["id"]: component.get("props", {}).get("elem_id")
            for component in self.config["components"]
        }

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    def events_of(self, elem_id: str) -> list[dict[str, Any]]:
        """The dependencies (events) a component triggers, in their order."""
        return [
            dep
            for dep in self.config["dependencies"]
            if any(self._ids.get(target[0]) == elem_id for target in dep.get("targets", []))
        ]

    def queued_event(self, elem_id: str) -> dict[str, Any]:
        """The queued event (the step itself) triggered by a button."""
        chained = [d for d in self.config["dependencies"] if d.get("trigger_after") is not None]
        for dep in self.events_of(elem_id):
            followers = [d for d in chained if d["trigger_after"] == dep["id"]]
            if followers:
                return followers[0]
            if dep.get("queue") is not False:
                return dep
        raise LookupError(f"no queued event for #{elem_id}")

    def join(self, fn_index: int, data: list[Any]) -> httpx.Response:
        """POST /gradio_api/queue/join for an event (the raw answer)."""
        return self.http.post(
            "/gradio_api/queue/join",
            json={
                "data": data,
                "fn_index": fn_index,
                "session_hash": self.session_hash,
                "event_data": None,
                "trigger_id": None,
            },
        )

    def run(self, fn_index: int, data: list[Any]) -> EventResult:
        """Run an event through the queue and wait for its end.

        Raises:
            AssertionError: if the queue refuses the event (the answer's status and text).
        """
        joined = self.join(fn_index, data)
        assert joined.status_code == 200, f"queue/join: {joined.status_code} {joined.text}"
        event_id = joined.json()["event_id"]
        with self.http.stream(
            "GET",
            "/gradio_api/queue/data",
            params={"session_hash": self.session_hash},
            timeout=EVENT_TIMEOUT_SECONDS,
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event_id:
                    continue
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    if message.get("success"):
                        return EventResult(True, output.get("data"), None, None)
                    return EventResult(False, None, output.get("error"), output.get("title"))
        raise AssertionError(f"the event {event_id} never completed")

    def click(self, elem_id: str, data: list[Any] | None = None) -> EventResult:
        """Run the step a button triggers (skipping its order check, as a script may)."""
        dep = self.queued_event(elem_id)
        return self.run(dep["id"], data if data is not None else [None] * len(dep["inputs"]))


# ---------------------------------------------------------------------------------------------
# ``python app.py`` in a child process
# ---------------------------------------------------------------------------------------------
APP_START_TIMEOUT_SECONDS = 180.0


@dataclass(frozen=True)
class RunningApp:
    """``python app.py`` serving the page (with its own FHE server child).

    Attributes:
        url: the page's base URL.
        log: the app's combined stdout/stderr.
        keys_dir: the app's FHE_CLIENT_KEYS_DIR.
        store_dir: the FHE server's FHE_STORE_DIR.
        process: the app's process.
        fhe_url: the base URL of the FHE server the app started.
    """

    url: str
    log: Path
    keys_dir: Path
    store_dir: Path
    process: subprocess.Popen[bytes]
    fhe_url: str

    def log_tail(self, chars: int = 4000) -> str:
        """Return the end of the app's log."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError as error:
            return f"(no log: {error})"

    @property
    def ports(self) -> tuple[int, int]:
        """The page's and the FHE server's ports."""
        return httpx.URL(self.url).port or 0, httpx.URL(self.fhe_url).port or 0

    def fhe_server(self) -> psutil.Process:
        """The FHE server process the app started (its uvicorn child)."""
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "uvicorn" in " ".join(child.cmdline()):
                    return child
        raise LookupError(f"no FHE server child; app log:\n{self.log_tail()}")

    def page_memory(self) -> int:
        """RSS in bytes of the page process and its key generation workers (not the FHE server)."""
        process = psutil.Process(self.process.pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "uvicorn" not in " ".join(child.cmdline()):
                    total += child.memory_info().rss
        return total

    def key_folders(self) -> list[Path]:
        """The sessions' key folders (each holds a ``keys`` file) under the keys directory."""
        return sorted(path.parent for path in self.keys_dir.glob("*/*/keys"))


@contextmanager
def running_app(
    work: Path, env: dict[str, str] | None = None, ports: tuple[int, int] | None = None
) -> Iterator[RunningApp]:
    """Run ``python app.py`` on loopback ports with its files in ``work``; stop it after.

    Args:
        work: folder for the log, the keys and the server's store.
        env: extra environment variables (FHE_PAGE_* limits, ...).
        ports: the page's and the FHE server's ports (default: free ones).
    """
    work.mkdir(parents=True, exist_ok=True)
    if ports is None:
        gradio_port, fhe_port = free_port(), free_port()
        while fhe_port == gradio_port:
            fhe_port = free_port()
    else:
        gradio_port, fhe_port = ports
    keys_dir = work / "client_keys"
    store_dir = work / "fhe_store"
    child_env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(gradio_port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(work / "gradio_tmp"),
        "FHE_SERVER_PORT": str(fhe_port),
        "FHE_STORE_DIR": str(store_dir),
        "FHE_CLIENT_KEYS_DIR": str(keys_dir),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    child_env.pop("FHE_SERVER_URL", None)  # app.py must start its own FHE server
    log = work / f"app-{gradio_port}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=REPO_DIR,
            env=child_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        running = RunningApp(
            url=f"http://127.0.0.1:{gradio_port}",
            log=log,
            keys_dir=keys_dir,
            store_dir=store_dir,
            process=process,
            fhe_url=f"http://127.0.0.1:{fhe_port}",
        )
        try:
            wait_for_health(
                running.url, process, APP_START_TIMEOUT_SECONDS, running.log_tail,
                path="/", name="python app.py",
            )  # fmt: skip
            yield running
        finally:
            stop_process(process, grace=30)  # app.py stops its FHE server on SIGTERM
