"""Stop when the ``make`` that started this process is told to stop (make run, make cluster).

A terminal's Ctrl-C sends SIGINT to the whole foreground process group, so the program gets it
too. A SIGINT sent to the make process alone is another story: GNU make does not pass it on to
its children but waits for them to end (it passes SIGTERM on), so ``kill -INT <make's pid>``
stopped nothing. Make handles such a signal by resetting it to its default action before it
waits: on Linux, ``/proc/<make's pid>/status`` then no longer lists the signal as caught. A
daemon thread watches for that (and for make's death) and sends this process the same signal,
whose handler then stops everything as on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

MAKE_NAMES = ("make", "gmake")
WATCHED = (signal.SIGINT, signal.SIGTERM)


def caught_signals(pid: int) -> int:
    """The mask of signals process ``pid`` catches (``SigCgt`` of /proc/<pid>/status).

    Raises:
        OSError: the process is gone (or this is not Linux).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    raise OSError(f"no SigCgt for process {pid}")


def _bit(signum: int) -> int:
    return 1 << (signum - 1)


def watch_make_parent(period: float = 0.3) -> threading.Thread | None:
    """Start the watcher if the parent process is make; return its thread (None otherwise).

    When make stops catching SIGINT or SIGTERM (it got one and now waits for its children),
    this process is sent that signal; when make is gone, SIGTERM.
    """
    parent = os.getppid()
    try:
        name = Path(f"/proc/{parent}/comm").read_text().strip()
        caught = caught_signals(parent)
    except OSError:
        return None
    watched = [signum for signum in WATCHED if caught & _bit(signum)]
    if name not in MAKE_NAMES or not watched:
        return None

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(period):
            try:
                now = caught_signals(parent) if os.getppid() == parent else 0
            except OSError:
                now = 0
            received = [signum for signum in watched if not now & _bit(signum)]
            if received:
                signum = received[0] if now else signal.SIGTERM
                logger.info("make (pid %d) got %s: stopping", parent, signal.Signals(signum).name)
                os.kill(os.getpid(), signum)
                return

    thread = threading.Thread(target=watch, name="make-parent-watch", daemon=True)
    thread.start()
    return thread
