"""Guards of the three-party suite, which runs in its own pytest session in .venv-threeparty.

``make test`` runs ``pytest tests/threeparty --confcutdir=tests/threeparty`` with Python 3.10
after the main suite, so the main suite's conftest (browser checks) is not loaded here.

- Without OpenFHE (no Python 3.10 environment) every test here is skipped with the reason; under
  ``REQUIRE_THREEPARTY=1`` (set by ``.ci/run``) a skip counts as a failure instead, and the
  session fails unless some test passed, so a missing environment cannot turn into a green run.
- ``OMP_NUM_THREADS=1`` is set before OpenFHE loads: with OpenMP threads on a shared 2-core
  machine its times swing tenfold.
"""

import os
from collections import Counter

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

_PASSES = pytest.StashKey[Counter]()


def _required() -> bool:
    return os.environ.get("REQUIRE_THREEPARTY") == "1"


def _openfhe_problem() -> str | None:
    try:
        import openfhe  # noqa: F401
    except ImportError as exc:
        return f"openfhe cannot be imported in this Python: {exc}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips the suite, with the reason, when OpenFHE is missing (a failure when required)."""
    problem = _openfhe_problem()
    if problem is None:
        return
    marker = pytest.mark.skip(reason=problem)
    for item in items:
        item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> pytest.TestReport:
    """Counts passes and, under REQUIRE_THREEPARTY=1, turns every skip into a failure."""
    report: pytest.TestReport = yield
    if report.when == "call" and report.passed:
        item.config.stash.setdefault(_PASSES, Counter())["passed"] += 1
    if report.skipped and not hasattr(report, "wasxfail") and _required():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"REQUIRE_THREEPARTY=1 but a three-party test was skipped: {reason}"
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the session under REQUIRE_THREEPARTY=1 when no three-party test passed."""
    if session.config.option.collectonly or not _required():
        return
    if session.config.stash.get(_PASSES, Counter())["passed"]:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("!", "REQUIRE_THREEPARTY=1 but no three-party test passed", red=True)
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
