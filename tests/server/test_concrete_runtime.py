"""A process that has run circuits survives a broken pipe (``fhe_server.concrete_runtime``).

concrete's runtime, once a circuit has run, aborts the process on SIGPIPE: the FHE server
sending to a client that went away, or this suite streaming a body a server had refused (how the
suite crashed on a busy machine). ``start_concrete_runtime`` starts the runtime with Python's
signal dispositions kept. Checked in a bare process and on the real uvicorn server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fhe_server.launcher import REPO_DIR
from tests.support.applications import varied_profiles
from tests.support.http import full_flow_verdict
from tests.support.kit import Kit
from tests.support.processes import server_process
from tests.support.servers import running_server

pytestmark = pytest.mark.slow


# Runs a circuit, takes a SIGPIPE, then writes to a pipe whose reader is gone.
BROKEN_PIPE_SCRIPT = """
import os, signal, sys
from concrete import fhe
from fhe_server.concrete_runtime import start_concrete_runtime

if sys.argv[1] == "started":
    start_concrete_runtime()

@fhe.compiler({"x": "encrypted"})
def add_one(x):
    return x + 1

assert add_one.compile(range(8)).encrypt_run_decrypt(3) == 4
os.kill(os.getpid(), signal.SIGPIPE)
reader, writer = os.pipe()
os.close(reader)
try:
    os.write(writer, b"x")
except BrokenPipeError:
    print("alive after a broken pipe", flush=True)
"""


def run_broken_pipe_script(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BROKEN_PIPE_SCRIPT, mode],
        cwd=REPO_DIR,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_DIR)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_broken_pipe_after_a_circuit_run_is_an_error_not_an_abort() -> None:
    started = run_broken_pipe_script("started")
    assert started.returncode == 0, started.stderr[-3000:]
    assert "alive after a broken pipe" in started.stdout
    # Without it, the library's runtime decides; report what it does so that a concrete-python
    # release that stops taking SIGPIPE shows up in the log (here: killed, status -11 or -6).
    bare = run_broken_pipe_script("bare")
    print(f"\nwithout start_concrete_runtime, a broken pipe ends the process: {bare.returncode}")


def test_the_server_survives_a_broken_pipe_after_a_prediction(tmp_path: Path) -> None:
    kit = Kit.generate()
    profile = varied_profiles(1)[0]
    with running_server(store_dir=tmp_path / "store") as base_url:
        with httpx.Client(base_url=base_url, timeout=120) as http:
            # The server has now run a circuit: its runtime is started.
            assert full_flow_verdict(http, kit, profile) == int(profile.verdict())
            server = server_process(base_url)
            # What a client that vanishes while the server writes to it makes the kernel send.
            os.kill(server.pid, signal.SIGPIPE)
            assert http.get("/health").status_code == 200
            assert server.is_running()
            assert full_flow_verdict(http, kit, profile) == int(profile.verdict())


BLOCKTIME_SCRIPT = """
import os
from fhe_server.concrete_runtime import start_concrete_runtime
start_concrete_runtime()
print(os.environ.get("KMP_BLOCKTIME"), flush=True)
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "0"), ("50", "50")])
def test_circuit_threads_sleep_between_loops_unless_the_operator_says_otherwise(
    given: str | None, expected: str
) -> None:
    """OpenMP threads must not spin 200 ms after each decision (CPU per decision, README)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_DIR)}
    if given is not None:
        env["KMP_BLOCKTIME"] = given
    done = subprocess.run(
        [sys.executable, "-c", BLOCKTIME_SCRIPT],
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [expected]
