"""Timing helpers and the facts of the machine the benchmark runs on."""

from __future__ import annotations

import datetime
import os
import platform
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
from tqdm import tqdm


class Stopwatch:
    """Wall time of a ``with`` block.

    Attributes:
        seconds: the block's duration, once it has ended.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._start


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``func`` once; return (seconds, its result)."""
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def longest_gil_stall(func: Callable[[], Any], tick: float = 0.005) -> tuple[float, float]:
    """Run ``func`` while another thread ticks; return (func's seconds, longest tick gap).

    A gap close to the call's duration means the call holds Python's GIL throughout, so
    other threads of the same process cannot run meanwhile.
    """
    gaps: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(tick)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        seconds, _ = timed(func)
    finally:
        stop.set()
        thread.join()
    return seconds, max(gaps, default=0.0)


def sample_times(func: Callable[[], Any], runs: int, desc: str, warmup: int = 1) -> list[float]:
    """Time ``func`` ``runs`` times after ``warmup`` discarded runs; return the seconds."""
    times = []
    for index in tqdm(range(warmup + runs), desc=desc, leave=False):
        seconds, _ = timed(func)
        if index >= warmup:
            times.append(seconds)
    return times


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Date, CPU, cores, memory, load and library versions of this run."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 1,
        "memory_bytes": psutil.virtual_memory().total,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "concrete_python": version("concrete-python"),
        "concrete_ml": version("concrete-ml"),
    }


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children, in bytes."""
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return int(total)
