"""Shared test helpers and the CI guards of the suite.

- ``free_port()`` gives a TCP port on 127.0.0.1 that a test server can bind.
- With ``REQUIRE_BROWSER=1`` (set by ``.ci/run``) a skipped test marked ``browser`` counts as a
  failure, and the session fails if no browser test passed, so a missing Chromium or Playwright
  cannot turn into a green run.
- With ``CI=true`` the session fails when no test passed at all (pytest alone exits 0 when
  everything was skipped, and 5 when nothing was collected).
- ``tests/threeparty`` is not collected here: it needs OpenFHE, which imports on Python 3.10 only,
  so ``make test`` runs it in a second pytest in ``.venv-threeparty`` (see its own conftest).
"""

import os
import socket
from collections import Counter

import pytest

# The three-party suite runs in its own Python 3.10 session (`make test-threeparty`).
collect_ignore = ["threeparty"]

# Passes counted per session: "all" and "browser".
_PASSES = pytest.StashKey[Counter]()


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago.

    The port is released before returning, so another process could take it in between; tests
    that start a server on it should fail loudly if the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _browser_required() -> bool:
    return os.environ.get("REQUIRE_BROWSER") == "1"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the session in CI when nothing passed, or no browser test passed when required."""
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
