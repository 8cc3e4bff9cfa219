"""The fixtures every area of the suite shares, and the CI guards of the suite.

- ``kit``: one client key set (``tests.support.kit.Kit``) per test module.
- With ``REQUIRE_BROWSER=1`` (set by ``.ci/run``) a skipped test marked ``browser`` counts as a
  failure, and the session fails if no browser test passed, so a missing Chromium or Playwright
  cannot turn into a green run.
- With ``CI=true`` the session fails when no test passed at all (pytest alone exits 0 when
  everything was skipped, and 5 when nothing was collected).
- The process exits with pytest's status even after an FHE run: concrete-python registers an
  ``atexit`` handler that shuts its dataflow runtime down and, once a circuit has run in this
  process, ends the process with status 0, which turned failed runs into green ones
  (``tests/test_exit_status.py`` checks it).
- concrete's runtime is started before any test, so that it keeps Python's signal dispositions
  (its own SIGPIPE handler aborted the suite when a server closed a refused upload).
- A crash of the test process (a fatal signal such as SIGSEGV) prints every thread's Python
  traceback: concrete's libraries install their own crash handlers over Python's
  ``faulthandler`` (LLVM's on import, the runtime's on the first run of a circuit), and theirs
  print nothing here, so faulthandler takes the fatal signals back after every test.
- ``tests/threeparty`` is not collected here: it needs OpenFHE, which runs in
  ``.venv-threeparty`` (Python 3.10 or 3.12), so ``make test`` runs it in a second pytest there
  (see its own conftest).
"""

import atexit
import faulthandler
import os
import signal
import sys
from collections import Counter

import pytest

from fhe_server.concrete_runtime import start_concrete_runtime
from tests.support.kit import Kit

# The three-party suite runs in its own session in .venv-threeparty (`make test-threeparty`).
collect_ignore = ["threeparty"]

# Passes counted per session: "all" and "browser".
_PASSES = pytest.StashKey[Counter]()
# The session's final exit status, kept for pytest_unconfigure.
_EXIT_STATUS = pytest.StashKey[int]()
# A copy of the terminal's stderr for crash tracebacks (pytest's capture redirects fd 2), set
# in pytest_configure: the per-test hook below has no config to read it from.
_crash_report_fd: int | None = None
# The signals faulthandler reports.
_FATAL_SIGNALS = (signal.SIGSEGV, signal.SIGFPE, signal.SIGABRT, signal.SIGBUS, signal.SIGILL)


@pytest.fixture(scope="module")
def kit() -> Kit:
    """One client key set for the test module (key generation takes about two seconds)."""
    return Kit.generate()


def _browser_required() -> bool:
    return os.environ.get("REQUIRE_BROWSER") == "1"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_configure(config: pytest.Config) -> None:
    """Starts concrete's runtime and keeps a copy of the terminal's stderr for crash tracebacks.

    The tests run circuits in this process and then stream bodies that servers refuse: the
    runtime, started by the first circuit run, would abort the process on the SIGPIPE of such a
    refusal (``fhe_server.concrete_runtime``). Capture is off here, so fd 2 is the terminal.
    """
    global _crash_report_fd
    start_concrete_runtime()
    _crash_report_fd = os.dup(sys.stderr.fileno())


def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    """Takes the fatal signals back for faulthandler after each test.

    The fatal signals get their default action back (replacing whatever handler a library
    installed since the last test), then faulthandler installs its own over it: a crash prints
    the traceback of every thread and the process still dies of its signal (exit status
    128 + signal, and a core file where core dumps are on).
    """
    if _crash_report_fd is None:
        return
    faulthandler.disable()
    for fatal in _FATAL_SIGNALS:
        signal.signal(fatal, signal.SIG_DFL)
    faulthandler.enable(file=_crash_report_fd, all_threads=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> pytest.TestReport:
    """Counts passes and, under REQUIRE_BROWSER=1, turns skipped browser tests into failures."""
    report: pytest.TestReport = yield
    is_browser = item.get_closest_marker("browser") is not None
    if report.when == "call" and report.passed:
        passes = item.config.stash.setdefault(_PASSES, Counter())
        passes["all"] += 1
        passes["browser"] += is_browser
    if is_browser and report.skipped and not hasattr(report, "wasxfail") and _browser_required():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"REQUIRE_BROWSER=1 but the browser test was skipped: {reason}"
    return report


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the session in CI when nothing passed, or no browser test passed when required.

    Runs after the other plugins and keeps the final exit status for ``pytest_unconfigure``.
    """
    try:
        _check_passes(session)
    finally:
        session.config.stash[_EXIT_STATUS] = int(session.exitstatus)


def _check_passes(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    passes = session.config.stash.get(_PASSES, Counter())
    problems = []
    if _in_ci() and passes["all"] == 0:
        problems.append("CI=true but no test passed (none collected, all skipped or deselected)")
    if _browser_required() and passes["browser"] == 0:
        problems.append("REQUIRE_BROWSER=1 but no test marked 'browser' passed")
    if not problems:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        for problem in problems:
            reporter.write_sep("!", problem, red=True)
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _exit_now(status: int) -> None:
    """Flushes the output and ends the process with ``status``, skipping later exit handlers."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Makes a failed session's status the process's, whatever exit handlers run after pytest.

    Exit handlers run last-registered first, so this one runs before concrete-python's (which
    was registered when the tests imported it) and ends the process with pytest's status.
    """
    status = config.stash.get(_EXIT_STATUS, 0)
    if status != 0:
        atexit.register(_exit_now, status)
