"""Watching a server process from the tests: which process it is, its peak memory, its disk.

- ``server_process(base_url)``: the ``psutil.Process`` of a server started by ``running_server``.
- ``PeakSampler``: the maximum of a value sampled in a background thread (e.g. its RSS).
- ``tree_size(path)``: bytes of every file below a directory (a store's footprint).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import psutil


def server_process(base_url: str) -> psutil.Process:
    """The child process of this test process that serves ``base_url`` (from running_server)."""
    port = base_url.rsplit(":", 1)[1]
    for child in psutil.Process().children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        if "uvicorn" in command and port in command:
            return child
    raise LookupError(f"no uvicorn child process serves {base_url}")


def tree_size(path: Path) -> int:
    """Bytes of every regular file below ``path`` (temporary files included)."""
    return sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())


class PeakSampler:
    """Samples a value in a background thread and keeps the maximum (e.g. a process's RSS)."""

    def __init__(self, read: Callable[[], float], period_seconds: float = 0.05):
        self.read = read
        self.period_seconds = period_seconds
        self.peak = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, float(self.read()))
                self.samples += 1
            except (psutil.Error, OSError):
                pass
            self._stop.wait(self.period_seconds)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
