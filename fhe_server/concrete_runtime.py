"""Starting concrete's runtime without letting it take the process's signals.

concrete-python starts its runtime (HPX, the dataflow scheduler) the first time a process runs a
circuit, and HPX then installs its own handler for SIGPIPE, SIGSEGV, SIGBUS, SIGILL, SIGFPE and
SIGSYS: a handler that aborts the process. Python ignores SIGPIPE, so that writing to a connection
the other end has closed is an error the code handles (``BrokenPipeError``), not a signal. Under
HPX's handler, a client that goes away while a process that has run a circuit writes to it (the
FHE server sending an answer, a test streaming a body the server refused) aborts the whole
process.

``start_concrete_runtime`` starts the runtime once, up front, and then puts back every signal's
disposition exactly as it was just before (Python's, faulthandler's, the application's). Later
circuit runs find the runtime started and leave the signals alone.
"""

from __future__ import annotations

import ctypes
import signal
import threading

# Room for one ``struct sigaction``, kept opaque: larger than it is on any Linux ABI.
_SIGACTION_BYTES = 512

_lock = threading.Lock()
_started = False


def start_concrete_runtime() -> None:
    """Start concrete's runtime now (once per process) and keep the signal dispositions.

    Call it before the process first runs a circuit: a runtime that a circuit run started
    already holds the signals. Safe from any thread, and a no-op after the first call.
    """
    global _started
    with _lock:
        if _started:
            return
        from concrete import compiler  # heavy native import, only where circuits run

        libc = ctypes.CDLL(None, use_errno=True)
        saved: dict[int, ctypes.Array[ctypes.c_char]] = {}
        for signum in range(1, signal.NSIG):
            action = ctypes.create_string_buffer(_SIGACTION_BYTES)
            if libc.sigaction(signum, None, action) == 0:
                saved[signum] = action
        compiler.init_dfr()
        for signum, action in saved.items():
            if signum not in (signal.SIGKILL, signal.SIGSTOP):
                libc.sigaction(signum, action, None)
        _started = True
