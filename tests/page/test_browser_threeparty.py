"""The page's three-party mode in a real browser (headless Chromium, Playwright), zh and en.

``python app.py`` runs as in test_browser.py (the fixtures of this folder's conftest) and starts
its own three-party server (``.venv-threeparty``). The test enters a refused-but-flippable
application in the party fields, clicks the three-party button - three separate party processes
run the threshold flow - and checks that the verdict the applicant and the bank fused, and the
explanation from the same evaluation, equal the clear model's (development/reference.py), in the
browser's language, and that the three key folders are gone afterwards.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import app
import settings
from development.page_script import RunningApp
from development.reference import clear_verdict
from fhe_server.launcher import free_port
from page import threeparty_runs
from page.strings import display_name, explanation_text
from tests.support.applications import DATA_PROFILES
from tests.support.browser import CJK, PageDriver, fill_applicant, opened_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A refused application that a higher years-employed bin flips to approved.
PROFILE = DATA_PROFILES["refused_flippable"]

# The first run waits for the three-party server's start-up self-test, then three processes
# make keys, encrypt, evaluate and decrypt: seconds each, generous on a loaded machine.
FLOW_TIMEOUT_SECONDS = 180.0
FINGERPRINT = re.compile(r"\b[0-9a-f]{4}(?:-[0-9a-f]{4}){4}\b")


@pytest.fixture(scope="module", autouse=True)
def threeparty_server_port() -> Iterator[None]:
    """Skip without the three-party environment; give app.py's three-party server a free port.

    Autouse: it runs before ``running_app``, which copies the environment.
    """
    reason = threeparty_runs.unavailable_reason()
    if reason is not None:
        pytest.skip(f"three-party mode unavailable: {reason}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("THREEPARTY_SERVER_PORT", str(free_port()))
        patch.delenv("THREEPARTY_SERVER_URL", raising=False)
        yield


def _expected(lang: str) -> tuple[str, str]:
    applicant, bank, bureau = PROFILE["applicant"], PROFILE["bank"], PROFILE["credit_bureau"]
    approved = clear_verdict(applicant, bank, bureau)
    verdict = app.tr(lang, "verdict_approved" if approved else "verdict_refused")
    approving = [
        years
        for years in settings.YEARS_EMPLOYED_BINS
        if clear_verdict(applicant, bank, {"employed": True, "years_employed": years})
    ]
    explanation = explanation_text(
        lang,
        approved=bool(approved),
        years=approving[0] if approving else None,
        employed=bool(bureau["employed"]),
    )
    return verdict, explanation


def _run_three_parties(driver: PageDriver, lang: str) -> None:
    page = driver.page
    fill_applicant(driver, lang, PROFILE["applicant"])
    driver.set_slider("account-age", PROFILE["bank"]["account_age"])
    choice = app.tr(lang, "choice_yes" if PROFILE["credit_bureau"]["employed"] else "choice_no")
    page.locator("#employed label").filter(has_text=choice).click()
    years = PROFILE["credit_bureau"]["years_employed"]
    driver.pick("years-employed", display_name("years_employed", years, lang))
    driver.click("tp-run-button")
    deadline = time.monotonic() + FLOW_TIMEOUT_SECONDS
    while not driver.value("tp-verdict") and time.monotonic() < deadline:
        errors = driver.error_toasts()
        assert not errors, f"the page showed an error during the three-party run: {errors}"
        page.wait_for_timeout(250)
    verdict, explanation = _expected(lang)
    assert driver.value("tp-verdict") == verdict, driver.text("tp-progress")
    assert driver.value("tp-explain") == explanation
    progress = driver.text("tp-progress")
    for role in ("applicant", "bank", "credit_bureau"):
        assert app.tr(lang, f"party_{role}").capitalize() in progress
    assert progress.count("MB") >= 6, progress
    # Each party's identity fingerprint, and each verification done by all three.
    assert len(set(FINGERPRINT.findall(progress))) == 3, progress
    assert progress.count("✓") >= 9, progress
    assert bool(CJK.search(verdict + progress)) is (lang == "zh")


@pytest.mark.parametrize(("locale", "lang"), [("zh-CN", "zh"), ("en-US", "en")])
def test_three_party_mode_in_a_real_browser(
    locale: str,
    lang: str,
    chromium: str,
    running_app: RunningApp,
    tmp_path: Path,
) -> None:
    screenshot = tmp_path / f"threeparty-{lang}.png"
    with opened_page(chromium, running_app, locale, screenshot, always_shoot=False) as driver:
        driver.page.locator("#tp-run-button").wait_for(state="visible")
        _run_three_parties(driver, lang)
    # The run's generator removes its key folders when Gradio asks it for the next update, which
    # may come a moment after the browser showed the last one.
    deadline = time.monotonic() + 30
    while list(running_app.keys_dir.glob("threeparty-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in running_app.keys_dir.glob("threeparty-*") if p.exists()]
    assert not left, f"three-party key folders left after the run: {left}"
