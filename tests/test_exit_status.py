"""`pytest` (and so `make test` and `.ci/run`) exits non-zero when a test fails, even after FHE.

concrete-python's exit handler ends the process with status 0 once a circuit has run in it; the
suite's conftest makes pytest's own status win. This runs a small inner pytest session that runs
a circuit and then fails, with and without the project's conftest. A second inner session runs a
circuit and then crashes: concrete's crash handlers print nothing, so the conftest gives the fatal
signals back to faulthandler and the crash names the test it happened in.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fhe_server.launcher import REPO_DIR

pytestmark = pytest.mark.slow

INNER_TESTS = """
from concrete import fhe


def test_runs_a_circuit():
    @fhe.compiler({"x": "encrypted"})
    def add_one(x):
        return x + 1

    circuit = add_one.compile(range(8))
    assert circuit.encrypt_run_decrypt(3) == 4


def test_fails():
    assert False, "deliberate failure"
"""


CRASHING_TESTS = """
import ctypes

from concrete import fhe


def test_runs_a_circuit():
    @fhe.compiler({"x": "encrypted"})
    def add_one(x):
        return x + 1

    assert add_one.compile(range(8)).encrypt_run_decrypt(3) == 4


def test_reads_address_zero():
    ctypes.string_at(0)
"""


def run_inner_session(
    tmp_path: Path, *plugin_args: str, tests: str = INNER_TESTS
) -> subprocess.CompletedProcess[str]:
    """Run ``tests`` in a pytest of its own, in ``tmp_path``.

    The project's conftest is the plugin ``tests.conftest`` (``-p``), with only the repository on
    the path: with tests/ on it, the test folders would hide the packages they mirror.
    """
    (tmp_path / "test_inner.py").write_text(tests)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin_args, "."],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_DIR)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_failed_session_exits_non_zero_after_an_fhe_run(tmp_path: Path) -> None:
    with_conftest = run_inner_session(tmp_path, "-p", "tests.conftest", "--rootdir", str(tmp_path))
    assert "1 failed, 1 passed" in with_conftest.stdout, with_conftest.stdout[-2000:]
    assert with_conftest.returncode == pytest.ExitCode.TESTS_FAILED, with_conftest.stdout[-2000:]
    # Without the project's conftest the library's exit handler decides; report what it does so a
    # change in concrete-python shows up in the log (no assertion: either way is the library's).
    bare = run_inner_session(tmp_path, "--rootdir", str(tmp_path))
    print(f"\nwithout the conftest, a failed session exits with status {bare.returncode}")


def test_a_crash_after_an_fhe_run_names_the_test(tmp_path: Path) -> None:
    crashed = run_inner_session(
        tmp_path, "-p", "tests.conftest", "--rootdir", str(tmp_path), tests=CRASHING_TESTS
    )
    report = crashed.stdout[-2000:] + crashed.stderr[-4000:]
    assert crashed.returncode == -signal.SIGSEGV, report
    assert "Fatal Python error: Segmentation fault" in crashed.stderr, report
    assert "test_reads_address_zero" in crashed.stderr, report
