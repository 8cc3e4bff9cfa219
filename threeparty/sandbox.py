"""OpenFHE work on what clients send, in worker processes with memory and time limits.

OpenFHE's deserializers trust their input: a length field overwritten in a key blob can kill the
process (SIGSEGV, SIGFPE) or make it allocate gigabytes. So the server never parses, combines or
evaluates a client's blob in its own process: ``Sandbox`` keeps a few worker processes
(``python -m threeparty.sandbox``), each with an address-space limit (``RLIMIT_AS``), and gives
every call a time limit. A worker that dies or runs out of time is replaced; the call raises
``SandboxError``, which the server answers with 422, and the server and its other sessions go
on. Before a blob reaches a worker its size is checked against the sizes this parameter set
gives (``size_bounds``).

The parent and the workers talk over pipes in length-prefixed frames (``threeparty.protocol``):
named blobs plus a JSON ``args``; the answer is named blobs plus a JSON ``result``. No pickle.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from contracts.parties import PARTIES
from threeparty import protocol

_LENGTH = struct.Struct(">Q")
READY = b"ready"
MiB = 1024 * 1024

# The engine's kind of each blob a step carries (None: not parsed: the box key is checked by
# size, a sealed partial can be opened by its recipient only).
ROUND1_BLOB_KINDS = {
    "public_key": "public_key",
    "eval_mult": "eval_key",
    "rotation": "rotation_keys",
}


def blob_kind(step: str, name: str) -> str | None:
    """The engine kind of blob ``name`` of ``step``, or None when it is not an engine blob."""
    if step == "round1":
        return ROUND1_BLOB_KINDS.get(name)
    if step == "challenge" or name.startswith("ct_"):
        return "ciphertext"
    if name == protocol.ROUND2_BLOB:
        return "mult_key"
    if name == protocol.PARTIAL_BLOB:
        return "partial"
    return None


class SandboxError(Exception):
    """A call the worker refused, or that killed it or ran out of time.

    Attributes:
        code: "invalid_blob", "other_session" (material of another key set), "crashed",
            "timeout" or "too_large".
    """

    def __init__(self, message: str, code: str = "invalid_blob"):
        """Build the error."""
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Framing over pipes
# ---------------------------------------------------------------------------------------------
def write_message(stream: BinaryIO, blobs: Mapping[str, bytes]) -> None:
    """Write one length-prefixed frame of named blobs."""
    body = protocol.pack(blobs)
    stream.write(_LENGTH.pack(len(body)) + body)
    stream.flush()


def _read_exactly(fd: int, count: int, deadline: float | None) -> bytes:
    chunks, left = [], count
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 4 * MiB))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int, deadline: float | None = None) -> dict[str, bytes]:
    """Read one frame (``write_message``) from a file descriptor, before ``deadline``.

    Raises:
        TimeoutError: at the deadline.
        EOFError: when the other end closed.
    """
    (size,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size, deadline))
    return protocol.unpack(_read_exactly(fd, size, deadline))


# ---------------------------------------------------------------------------------------------
# The worker's side
# ---------------------------------------------------------------------------------------------
def _run(op: str, args: dict[str, Any], blobs: dict[str, bytes], layout: Any) -> dict[str, bytes]:
    """Do one call in the worker (imports the engine: only worker processes run this)."""
    from threeparty import engine

    if op == "check":
        for name, data in blobs.items():
            kind = blob_kind(args["step"], name)
            if kind is not None:
                tag = args.get("key_tag") if kind not in ("public_key", "eval_key") else None
                engine.check_blob(kind, data, tag)
        return {}
    if op == "combine_round1":
        joint = engine.combine_round1(
            [
                engine.Round1Blobs(
                    public_key=blobs.get(f"public_key_{role}", b""),
                    eval_mult=blobs[f"eval_mult_{role}"],
                    rotation=blobs[f"rotation_{role}"],
                )
                for role in PARTIES
            ]
        )
        return {
            "joint_public_key": joint.joint_public_key,
            "joint_eval_mult_round1": joint.joint_eval_mult_round1,
            "joint_rotation": joint.joint_rotation,
            "key_tag": joint.key_tag.encode(),
        }
    if op == "combine_round2":
        shares = [blobs[f"round2_{role}"] for role in PARTIES]
        return {"relinearization": engine.combine_round2(shares, args["key_tag"])}
    if op == "evaluate":
        keys = engine.EvaluationKeys(
            key_tag=args["key_tag"],
            relinearization=blobs["relinearization"],
            rotation=blobs["rotation"],
        )
        ciphertexts = {
            role: {int(i): blobs[f"ct_{role}_{i}"] for i in engine.vector_indices(layout, role)}
            for role in PARTIES
        }
        candidates = layout.candidates_for(args["mode"])
        output = engine.evaluate(keys, ciphertexts, int(args["blocks"]), layout, candidates)
        return {"output": output}
    raise ValueError(f"unknown sandbox call {op!r}")


def main() -> int:
    """A worker: answer calls from stdin on stdout until stdin closes.

    A terminal's Ctrl-C reaches the whole process group: the worker ignores it and ends when
    its server closes the pipe (or kills it), so stopping prints no traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from threeparty import engine
    from threeparty.layout import load_layout

    layout = load_layout(Path(sys.argv[1])) if len(sys.argv) > 1 else load_layout()
    engine.context()  # made once, before the first call
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    write_message(stdout, {READY.decode(): b"1"})
    while True:
        try:
            request = read_message(stdin.fileno())
        except EOFError:
            return 0
        op = request.pop("op").decode()
        args = json.loads(request.pop("args"))
        try:
            answer = _run(op, args, request, layout)
            write_message(stdout, {**answer, "ok": b"1"})
        except engine.EngineError as error:
            code = "other_session" if isinstance(error, engine.KeyTagError) else "invalid_blob"
            write_message(stdout, {"ok": b"0", "code": code.encode(), "error": str(error).encode()})
        except MemoryError:
            write_message(
                stdout, {"ok": b"0", "code": b"too_large", "error": b"out of memory parsing it"}
            )


# ---------------------------------------------------------------------------------------------
# The parent's side
# ---------------------------------------------------------------------------------------------
class _Worker:
    """One worker process and its pipes (used by one call at a time)."""

    def __init__(self, memory_bytes: int, layout_path: Path | None, start_seconds: float):
        command = [sys.executable, "-m", "threeparty.sandbox"]
        if layout_path is not None:
            command.append(str(layout_path))

        def limit() -> None:  # in the child, before exec
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            cwd=Path(__file__).resolve().parent.parent,
            preexec_fn=limit,
        )
        self.start_seconds = start_seconds
        self.ready = False

    def call(self, blobs: Mapping[str, bytes], seconds: float) -> dict[str, bytes]:
        assert self.process.stdin is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        if not self.ready:
            read_message(fd, time.monotonic() + self.start_seconds)
            self.ready = True
        write_message(self.process.stdin, blobs)
        return read_message(fd, time.monotonic() + seconds)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close() if stream is not None else None

    def describe_death(self) -> str:
        code = self.process.poll()
        if code is not None and code < 0:
            return f"killed the parser (signal {-code})"
        return f"killed the parser (exit {code})"


class Sandbox:
    """A few worker processes for OpenFHE calls on untrusted blobs (blocking calls).

    Args:
        workers: how many worker processes (calls beyond wait for a free one).
        memory_bytes: each worker's address-space limit.
        layout_path: the slot layout the workers evaluate (default: the deployed one).
        start_seconds: how long a new worker may take to start.
    """

    def __init__(
        self,
        workers: int = 2,
        memory_bytes: int = 3 * 1024 * MiB,
        layout_path: Path | None = None,
        start_seconds: float = 120.0,
    ):
        """Start the workers (they load OpenFHE in the background)."""
        self.memory_bytes = memory_bytes
        self.layout_path = layout_path
        self.start_seconds = start_seconds
        self._idle: list[_Worker] = [self._spawn() for _ in range(max(1, workers))]
        self._available = threading.Semaphore(len(self._idle))
        self._lock = threading.Lock()

    def _spawn(self) -> _Worker:
        return _Worker(self.memory_bytes, self.layout_path, self.start_seconds)

    def call(
        self,
        op: str,
        args: Mapping[str, Any],
        blobs: Mapping[str, bytes],
        seconds: float,
    ) -> dict[str, bytes]:
        """Run ``op`` in a worker within ``seconds``; return its answer's blobs.

        Raises:
            SandboxError: the worker refused the blobs (invalid_blob, other_session,
                too_large), died on them (crashed) or ran out of time (timeout).
        """
        request = {**blobs, "op": op.encode(), "args": json.dumps(dict(args)).encode()}
        with self._available:
            with self._lock:
                worker = self._idle.pop()
            try:
                answer = worker.call(request, seconds)
            except (TimeoutError, EOFError, OSError, protocol.FrameError) as error:
                timed_out = isinstance(error, TimeoutError) and worker.process.poll() is None
                worker.stop()
                death = worker.describe_death()
                worker = self._spawn()
                if timed_out:
                    raise SandboxError(
                        f"took more than {seconds:g} s to process", "timeout"
                    ) from None
                raise SandboxError(death, "crashed") from None
            finally:
                with self._lock:
                    self._idle.append(worker)
        if answer.pop("ok", b"0") != b"1":
            raise SandboxError(answer.get("error", b"").decode(), answer.get("code", b"").decode())
        return answer

    def close(self) -> None:
        """Stop every worker."""
        with self._lock:
            for worker in self._idle:
                worker.stop()
            self._idle = []


if __name__ == "__main__":
    sys.exit(main())
