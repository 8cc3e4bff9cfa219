"""``make run`` and ``make cluster`` stop cleanly: real make, real page, real cluster.

Each test starts the target with ``make`` in its own process group (as a terminal's foreground
job), waits until it serves, then stops it as a person would: Ctrl-C in the terminal (SIGINT to
the whole group) or a signal to the make process alone (``kill -INT`` / ``kill -TERM``). Then
make must have exited with no error line (``make: ***``), nothing may have printed a traceback,
every process it started must be gone, and nothing may be left in the temporary folder (the
cluster's ``fhe-cluster-*``) or in the page's keys folder.

The targets must not install anything: without up-to-date environments (``make -q``) the tests
are skipped. Ports are free ones, so that nothing else running on the machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from fhe_server.launcher import REPO_DIR, free_port, wait_for_health

pytestmark = pytest.mark.slow

START_TIMEOUT_SECONDS = 240.0
STOP_TIMEOUT_SECONDS = 90.0


@pytest.fixture(scope="module", autouse=True)
def environments_ready() -> None:
    """Skip unless make would start the targets without installing (their stamps are fresh)."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    stamps = [".venv/.installed-run", ".venv-threeparty/.installed"]
    question = subprocess.run(["make", "-q", *stamps], cwd=REPO_DIR, capture_output=True)
    if question.returncode != 0:
        pytest.skip("make run would install first (make -q: the environment is not up to date)")


def _default_signals() -> None:  # runs in the child before exec
    # A shell's background job ignores SIGINT; a terminal's foreground job does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            ["make", "--no-print-directory", *args],
            cwd=REPO_DIR,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group, as a terminal's foreground job
            preexec_fn=_default_signals,
        )


def _descendants(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return psutil.Process(process.pid).children(recursive=True)


def _stop_and_check(
    make: subprocess.Popen[bytes], how: str, signum: int, log: Path, tmp: Path
) -> None:
    started = _descendants(make)
    assert started, f"make started nothing:\n{log.read_text()}"
    if how == "terminal":
        os.killpg(make.pid, signum)  # Ctrl-C: the whole foreground group
    else:
        os.kill(make.pid, signum)  # the make process alone
    try:
        make.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(make.pid, signal.SIGKILL)
        make.wait()
        output = log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"make did not stop within the time-out:\n{output}") from None
    _, alive = psutil.wait_procs(started, timeout=STOP_TIMEOUT_SECONDS)
    output = log.read_text(errors="replace")
    assert not alive, f"left running: {[p.pid for p in alive]}\n{output[-4000:]}"
    for sign in ("Traceback", "KeyboardInterrupt", "make: ***", "Error 1", "Interrupt"):
        assert sign not in output, f"{sign!r} printed when stopping:\n{output[-6000:]}"
    assert not list(tmp.glob("fhe-cluster-*")), list(tmp.iterdir())
    left = [p for p in (tmp / "keys").rglob("*") if p.is_file()]
    assert not left, f"files left in the keys folder: {left}"


@pytest.mark.parametrize(
    ("how", "signum"),
    [("terminal", signal.SIGINT), ("make", signal.SIGINT), ("make", signal.SIGTERM)],
)
def test_make_run_stops_cleanly(how: str, signum: int, tmp_path: Path) -> None:
    page_port = free_port()
    env = {
        "GRADIO_SERVER_PORT": str(page_port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
        "FHE_SERVER_PORT": str(free_port()),
        "FHE_STORE_DIR": str(tmp_path / "store"),
        "FHE_CLIENT_KEYS_DIR": str(tmp_path / "keys"),
        "THREEPARTY_SERVER_PORT": str(free_port()),
        "TMPDIR": str(tmp_path),
    }
    log = tmp_path / "make-run.log"
    make = _start(["run"], env, log)
    try:
        wait_for_health(
            f"http://127.0.0.1:{page_port}", make, START_TIMEOUT_SECONDS,
            lambda: log.read_text(errors="replace")[-3000:], path="/", name="make run",
        )  # fmt: skip
        _stop_and_check(make, how, signum, log, tmp_path)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()


@pytest.mark.parametrize(
    ("how", "signum"),
    [("terminal", signal.SIGINT), ("make", signal.SIGINT), ("make", signal.SIGTERM)],
)
def test_make_cluster_stops_cleanly(how: str, signum: int, tmp_path: Path) -> None:
    if not (shutil.which("redis-server") and shutil.which("nginx")):
        pytest.skip("make cluster needs redis-server and nginx")
    port = free_port()
    args = f"--redis-port {free_port()} --replica-port {free_port()}"
    log = tmp_path / "make-cluster.log"
    make = _start(
        ["cluster", "REPLICAS=1", f"CLUSTER_PORT={port}", f"CLUSTER_ARGS={args}"],
        {"TMPDIR": str(tmp_path), "FHE_STORE_DIR": str(tmp_path / "store")},
        log,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while "[cluster] ready" not in log.read_text(errors="replace"):
            assert make.poll() is None, f"make cluster exited:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        assert list(tmp_path.glob("fhe-cluster-*")), "the cluster's folder is not in TMPDIR"
        _stop_and_check(make, how, signum, log, tmp_path)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
