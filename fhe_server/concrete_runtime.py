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

It also sets how the circuits' OpenMP threads wait between parallel loops. The compiled circuit
runs its independent bootstrappings in parallel loops (OpenMP, LLVM's libomp); by default each
thread then keeps spinning for 200 ms (``KMP_BLOCKTIME``) in case another loop follows. A server
answers one request and then waits, so every decision left a thread burning a core for 200 ms:
measured here with one predict every 0.5 s, 0.38-0.44 CPU-seconds per warm decision with the
default against 0.23-0.26 with ``KMP_BLOCKTIME=0`` (threads sleep at once), with the same or a
shorter wall time. libomp reads the variable when it first starts, at the first circuit run, so
setting it here (``setdefault``: an operator's own value wins) is early enough.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading

# OpenMP threads of a circuit sleep as soon as a parallel loop ends (see the module docstring).
OPENMP_BLOCKTIME_MS = "0"

# Room for one ``struct sigaction``, kept opaque: larger than it is on any Linux ABI.
_SIGACTION_BYTES = 512

_lock = threading.Lock()
_started = False


def start_concrete_runtime() -> None:
    """Start concrete's runtime now (once per process) and keep the signal dispositions.

    Also lets the circuits' OpenMP threads sleep as soon as a loop ends (``KMP_BLOCKTIME``,
    unless the environment already sets it; see the module docstring). Call it before the
    process first runs a circuit: a runtime that a circuit run started already holds the
    signals. Safe from any thread, and a no-op after the first call.
    """
    global _started
    with _lock:
        if _started:
            return
        os.environ.setdefault("KMP_BLOCKTIME", OPENMP_BLOCKTIME_MS)
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
