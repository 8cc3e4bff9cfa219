"""Fixtures of the page's browser tests: Chromium, and ``python app.py`` running for a module.

``running_app`` asks for ``chromium`` first, so that a missing browser skips the test before the
app starts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from development.page_script import RunningApp
from development.page_script import running_app as start_app
from tests.support.browser import find_chromium


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium's path (the test is skipped without Chromium or Playwright)."""
    return find_chromium()


@pytest.fixture(scope="module")
def running_app(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """``python app.py`` (and its FHE server) for the test module, in a temporary folder."""
    with start_app(tmp_path_factory.mktemp("app")) as running:
        yield running
