"""The five-step page in a real browser: headless Chromium (Playwright) against ``python app.py``.

``python app.py`` runs as a subprocess on a free port (it starts its own FHE server child on
another free port, with the server's store and the client keys in a temporary folder). The test
clicks through all five steps as a person would - keys, the three parties' inputs and buttons,
run, fetch and decrypt, explain - once with a Hong Kong Chinese (zh-HK: Traditional Chinese) and
once with an English browser locale, and checks the verdict and the explanation against the clear
model (development/reference.py). A lighter test opens the page in zh-TW: the text is Traditional
Chinese, a click out of order shows its message (with a Chinese toast title) and marks no output
box, and the language switch turns the page and the messages English in place.

Chromium is Debian's (``shutil.which("chromium")``); Playwright's own browser download is not
used. Without Chromium or Playwright the test is skipped (a failure under REQUIRE_BROWSER=1, see
conftest.py). A full-page screenshot of the finished page is kept in the test's temporary
folder; every failure message names it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import app
import settings
from development.page_script import RunningApp
from development.reference import clear_explain, clear_verdict
from page.strings import display_name, tr
from tests.support.applications import DATA_PROFILES
from tests.support.browser import (
    CJK,
    STEP_TIMEOUT_SECONDS,
    PageDriver,
    assert_no_output_marked,
    fill_applicant,
    opened_page,
    toast,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A refused profile (unemployed, 0-2 years) that a higher years-employed bin flips to approved,
# so that Step 5 has something to explain. tests/client/test_backend.py checks it against the clear
# model.
PROFILE = DATA_PROFILES["refused_flippable"]

HEADING_IDS = ("step1-title", "step2-title", "step3-title", "step4-title", "step5-title")
ENGLISH_HEADINGS = ("Step 1", "Step 2", "Step 3", "Step 4", "Step 5")


def _assert_language(driver: PageDriver, lang: str) -> None:
    title = driver.text("title")
    headings = [driver.text(elem_id) for elem_id in HEADING_IDS]
    notice = driver.text("privacy-notice")
    if lang != "en":
        for text in (title, *headings, notice, driver.text("footer")):
            assert CJK.search(text), f"no Chinese in {text!r} with a Chinese browser"
        where = {"zh": "运行本页面的进程", "zh-Hant": "執行本頁面的處理程序"}[lang]
        assert where in notice, f"the notice {notice!r} does not say where the key is"
    else:
        assert not CJK.search(title), f"Chinese in the title {title!r} with an en-US browser"
        assert "Credit-card approval" in title, f"English title missing: {title!r}"
        for expected, text in zip(ENGLISH_HEADINGS, headings, strict=True):
            assert text.startswith(expected) and not CJK.search(text), (
                f"heading {text!r} is not the English {expected!r}"
            )
        assert "process serving this page" in notice and not CJK.search(notice), notice
        footer = driver.text("footer")
        assert "privacy-preserving" in footer and not CJK.search(footer), (
            f"footer {footer!r} is not English"
        )


def _walk_through_the_five_steps(driver: PageDriver, lang: str) -> set[Path]:
    """Click through the five steps, checking each answer.

    Returns:
        The key folder(s) that Step 1 created in the app's keys directory.
    """
    applicant, bank, credit_bureau = PROFILE["applicant"], PROFILE["bank"], PROFILE["credit_bureau"]
    expected_verdict = clear_verdict(applicant, bank, credit_bureau)
    expected_years = clear_explain(applicant, bank, credit_bureau)
    # Preconditions of a meaningful explanation: refused as entered, some higher bin flips it.
    assert expected_verdict is False and expected_years is not None, (
        f"the profile is no longer refused-but-flippable ({expected_verdict}, {expected_years}); "
        "pick another one in tests/support/applications.py"
    )
    nonempty = re.compile(r"\S")
    sent = re.compile(r"^(?!" + re.escape(tr(lang, "not_sent")) + r")\S")

    _assert_language(driver, lang)
    for elem_id in ("logo", "diagram"):
        loaded = driver.page.locator(f"#{elem_id} img:visible").evaluate(
            "img => img.complete && img.naturalWidth > 0"
        )
        assert loaded, f"the #{elem_id} image did not render"

    # Step 1: keys (the secret key stays in the app's keys directory).
    key_folders_before = set(driver.running.key_folders())
    driver.click("keygen-button")
    driver.wait_for_value("evaluation-key", nonempty)
    new_key_folders = set(driver.running.key_folders()) - key_folders_before
    assert new_key_folders, f"no key folder appeared in {driver.running.keys_dir}"

    # Step 2.1: the applicant.
    fill_applicant(driver, lang, applicant)
    driver.click("encrypt-applicant-button")
    driver.wait_for_value("encrypted-applicant", sent)

    # Step 2.2: the bank.
    driver.set_slider("account-age", bank["account_age"])
    driver.click("encrypt-bank-button")
    driver.wait_for_value("encrypted-bank", sent)

    # Step 2.3: the credit bureau.
    choice = tr(lang, "choice_yes" if credit_bureau["employed"] else "choice_no")
    driver.page.locator("#employed label").filter(has_text=choice).click()
    employed_value = app.YES if credit_bureau["employed"] else app.NO
    assert driver.page.locator(f"#employed input[value='{employed_value}']").is_checked(), (
        f"the employed radio {choice!r} is not selected"
    )
    years_shown = display_name("years_employed", credit_bureau["years_employed"], lang)
    driver.pick("years-employed", years_shown)
    driver.click("encrypt-credit-bureau-button")
    driver.wait_for_value("encrypted-credit-bureau", sent)
    for elem_id in ("encrypted-applicant", "encrypted-bank"):
        assert re.search(sent, driver.value(elem_id)), (
            f"#{elem_id} was marked not sent: {driver.value(elem_id)!r}"
        )

    # Step 3: run in FHE.
    driver.click("run-fhe-button")
    seconds = driver.wait_for_value("fhe-execution-time", re.compile(r"^\d+\.\d{2}$"))
    assert 0 < float(seconds) < STEP_TIMEOUT_SECONDS, f"FHE time {seconds!r}"

    # Step 4: fetch the encrypted verdict and decrypt it.
    driver.click("get-output-button")
    verdict = driver.wait_for_value("verdict", nonempty)
    expected_text = tr(lang, "verdict_approved" if expected_verdict else "verdict_refused")
    assert verdict == expected_text, (
        f"the page shows {verdict!r}; the clear model says {expected_text!r}"
    )
    assert driver.value("encrypted-output").strip(), "no encrypted output shown"

    # Step 5: explain.
    driver.click("explain-button")
    explanation = driver.wait_for_value("explain-result", nonempty)
    years_name = display_name("years_employed", expected_years, lang)
    assert years_name in explanation, (
        f"the explanation {explanation!r} does not name {years_name!r}"
    )
    other_bins = [
        display_name("years_employed", years, lang)
        for years in settings.YEARS_EMPLOYED_BINS
        if years != expected_years
    ]
    assert not [name for name in other_bins if name in explanation], (
        f"the explanation {explanation!r} names another bin"
    )
    has_cjk = bool(CJK.search(explanation)) and bool(CJK.search(verdict))
    assert has_cjk is (lang != "en"), (
        f"verdict {verdict!r} / explanation {explanation!r} not in {lang}"
    )
    assert not driver.error_toasts(), f"error toasts: {driver.error_toasts()}"
    return new_key_folders


def test_zh_tw_page_out_of_order_click_and_language_switch(
    chromium: str, running_app: RunningApp, tmp_path: Path
) -> None:
    screenshot = tmp_path / "page-zh-TW.png"
    with opened_page(chromium, running_app, "zh-TW", screenshot, always_shoot=False) as driver:
        _assert_language(driver, "zh-Hant")
        # A click out of order: its message, a Chinese toast title, no output marked.
        driver.click("run-fhe-button")
        title = toast(driver, tr("zh-Hant", "err_order_keys_first"))
        assert title == tr("zh-Hant", "error_title"), f"toast title {title!r}"
        assert_no_output_marked(driver)
        # The switch: the page and the handlers' messages in English, in place (no reload).
        driver.page.locator("#lang-en").click()
        driver.page.locator("#title").filter(has_text="Credit-card approval").wait_for()
        _assert_language(driver, "en")
        driver.click("explain-button")
        assert toast(driver, tr("en", "err_order_keys_first")) == "Error"
        assert_no_output_marked(driver)


@pytest.mark.parametrize(("locale", "lang"), [("zh-HK", "zh-Hant"), ("en-US", "en")])
def test_five_steps_in_a_real_browser(
    locale: str, lang: str, chromium: str, running_app: RunningApp, tmp_path: Path
) -> None:
    screenshot = tmp_path / f"page-{lang}.png"
    with opened_page(chromium, running_app, locale, screenshot, always_shoot=True) as driver:
        key_folders = _walk_through_the_five_steps(driver, lang)
    assert screenshot.stat().st_size > 0, f"no screenshot at {screenshot}"
    # Closing the tab ends the session (demo.unload): its secret key folder is deleted.
    deadline = time.monotonic() + 15
    while any(folder.exists() for folder in key_folders) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [str(folder) for folder in key_folders if folder.exists()]
    assert not left, f"key folders left after the tab closed: {left}\nscreenshot: {screenshot}"
