"""Key generation in a small pool of worker processes.

concrete-python's key generation holds the interpreter lock for about a second; run in the page's
process it would stall every other session's steps. The pool's workers are started with "spawn"
(never a fork of the threaded page process) and ask the kernel to stop them when the page dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import backend

logger = logging.getLogger(__name__)


def _worker_start() -> None:  # pragma: no cover - runs in the worker
    """Linux: SIGTERM this worker when the page process dies (even by SIGKILL); warm up.

    A terminal's Ctrl-C reaches the worker too: it ignores it (no KeyboardInterrupt traceback),
    the page stops it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    backend.client_specs()


class KeygenPool:
    """A pool of ``workers`` processes running ``backend.generate_key_file``.

    Calling the pool (it is a ``backend.KeyGenerator``) blocks the calling thread, not the
    interpreter, until a worker has saved the key set.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_start,
                )
            return self._executor

    def __call__(self, key_dir: Path) -> bytes:
        """Generate and save a key set in ``key_dir``; return the serialized evaluation keys.

        Raises:
            backend.ClientError: (code "keygen_failed") if the worker died; the pool is renewed.
        """
        executor = self._pool()
        try:
            return executor.submit(backend.generate_key_file, Path(key_dir)).result()
        except BrokenProcessPool as error:
            logger.error("a key generation worker died; starting new workers")
            with self._lock:
                if self._executor is executor:
                    self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)
            raise backend.ClientError(
                "the key generation worker died", code="keygen_failed"
            ) from error

    def start(self) -> None:
        """Start the workers now (their imports take seconds), not at the first key generation."""
        executor = self._pool()
        for future in [executor.submit(int, 0) for _ in range(self.workers)]:
            future.result()

    def close(self) -> None:
        """Stop the workers."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
