"""What a new user tripped on (issue 20), walked in a real browser: zh-CN, zh-TW and en-US.

``python app.py`` runs as in test_browser.py, but as a public page would (``FHE_PAGE_LIMITS=
public``) with two key generations per address, so that the limits line and a refusal can be
seen without waiting out a window. One walk, in zh-CN: the unemployed, refused profile of the
issue (退休人员, income 76000, age 42, bank 47, employed = no, years 2-5) through Steps 1-5 with
real FHE; the explanation names both changes (being employed and the years), checked against the
clear model; the language switch to Traditional Chinese and then to English keeps the session,
every field and every output (turned into the new language) without a reload or a key
generation; a refused key generation leaves every output as it was. Then each locale's page
shows no text in another language or script. Screenshots are kept in each test's folder.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from development.page_script import RunningApp
from development.page_script import running_app as start_app
from development.reference import clear_explain
from fhe_server.launcher import free_port
from page import strings, threeparty_runs
from page.strings import display_name, explanation_text, tr
from tests.support import browser
from tests.support.applications import NEW_USER_PROFILE

pytestmark = [pytest.mark.browser, pytest.mark.slow]

KEYGEN_PER_CLIENT = 2
LIMITS_ENV = {"FHE_PAGE_LIMITS": "public", "FHE_PAGE_KEYGEN_PER_CLIENT": str(KEYGEN_PER_CLIENT)}
# Names, code and units the Chinese page shows as they are.
LATIN_NAMES = {"FHE", "README", "evaluation", "key", "BFV", "OpenFHE", "Python", "MB", "make"}
LATIN_NAMES |= {"run", "python", "threeparty", "role", "venv", "openfhe", "s"}


@pytest.fixture(scope="module")
def public_app(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    env = {**LIMITS_ENV, "THREEPARTY_SERVER_PORT": str(free_port())}
    with start_app(tmp_path_factory.mktemp("newuser"), env) as running:
        yield running


def _shoot(driver: browser.PageDriver, path: Path) -> Path:
    driver.page.screenshot(path=str(path), full_page=True)
    return path


def _wait_text(driver: browser.PageDriver, elem_id: str, expected: str) -> None:
    locator = driver.page.locator(f"#{elem_id}").filter(has_text=expected)
    locator.wait_for(timeout=browser.STEP_TIMEOUT_SECONDS * 1000)


def _keygen_watching_status(driver: browser.PageDriver) -> list[str]:
    """Step 1; returns the status lines Gradio showed on the key box while it ran."""
    driver.click("keygen-button")
    seen: list[str] = []
    deadline = time.monotonic() + browser.STEP_TIMEOUT_SECONDS
    while not driver.value("evaluation-key") and time.monotonic() < deadline:
        seen += [line for line in driver.text("evaluation-key").splitlines() if " |" in line]
        assert not driver.error_toasts(), driver.error_toasts()
        driver.page.wait_for_timeout(50)
    assert driver.value("evaluation-key"), "no evaluation key within the time-out"
    return seen


def _fill_the_unemployed_profile(driver: browser.PageDriver, lang: str) -> None:
    driver.set_slider("total-income", NEW_USER_PROFILE.applicant["total_income"])
    driver.set_slider("age", NEW_USER_PROFILE.applicant["age"])
    driver.pick("income-type", display_name("income_type", "Pensioner", lang))
    driver.set_slider("account-age", NEW_USER_PROFILE.bank["account_age"])
    driver.page.locator("#employed label").filter(has_text=tr(lang, "choice_no")).click()
    driver.pick("years-employed", display_name("years_employed", "2-5", lang))


def _run_steps_2_to_5(driver: browser.PageDriver) -> None:
    sent = re.compile(r"^…?[0-9a-f]{8}")
    for party in ("applicant", "bank", "credit-bureau"):
        driver.click(f"encrypt-{party}-button")
        driver.wait_for_value(f"encrypted-{party}", sent)
    driver.click("run-fhe-button")
    driver.wait_for_value("fhe-execution-time", re.compile(r"^\d+\.\d{2}$"))
    driver.click("get-output-button")
    driver.wait_for_value("verdict", re.compile(r"\S"))
    driver.click("explain-button")
    driver.wait_for_value("explain-result", re.compile(r"\S"))


def _state(driver: browser.PageDriver) -> dict[str, Any]:
    """What the person sees in the fields and outputs that the switch must keep."""
    page = driver.page
    return {
        "income": page.locator("#total-income input[data-testid='number-input']").input_value(),
        "account_age": page.locator("#account-age input[data-testid='number-input']").input_value(),
        "income_type": page.locator("#income-type input[role='combobox']").input_value(),
        "years": page.locator("#years-employed input[role='combobox']").input_value(),
        "employed_no": page.locator("#employed input[value='no']").is_checked(),
        "key": driver.value("evaluation-key"),
        "ciphertexts": [
            driver.value(f"encrypted-{p}") for p in ("applicant", "bank", "credit-bureau")
        ],
        "fhe_time": driver.value("fhe-execution-time"),
        "encrypted_output": driver.value("encrypted-output"),
        "verdict": driver.value("verdict"),
        "explanation": driver.value("explain-result"),
        "marker": page.evaluate("window.__sameDocument"),
    }


def _switch(driver: browser.PageDriver, lang: str) -> None:
    driver.page.locator(f"#lang-{lang.lower()}").click()
    driver.page.locator("#title").filter(
        has_text=tr(lang, "title")[len("<h1 align='center'>") : -5]
    ).wait_for()
    _wait_text(driver, "explain-result", "")  # the box is there
    deadline = time.monotonic() + browser.STEP_TIMEOUT_SECONDS
    expected = tr(lang, "verdict_refused")
    while driver.value("verdict") != expected and time.monotonic() < deadline:
        driver.page.wait_for_timeout(100)


def _expected_explanation(lang: str) -> str:
    return explanation_text(lang, approved=False, years="2-5", employed=False)


def _check_the_switch_kept_everything(
    driver: browser.PageDriver,
    lang: str,
    income_type: str,
    before: dict[str, Any],
    folders: set[Path],
    running: RunningApp,
) -> None:
    """Same document (no reload), same session, fields and outputs; texts in ``lang``."""
    after = _state(driver)
    assert after["marker"] == "kept", "the switch reloaded the page"
    for name in ("income", "account_age", "employed_no", "key", "ciphertexts"):
        assert after[name] == before[name], (name, before[name], after[name])
    assert after["fhe_time"] == before["fhe_time"]
    assert after["encrypted_output"] == before["encrypted_output"]
    assert after["income_type"] == income_type
    assert after["years"] == display_name("years_employed", "2-5", lang)
    assert after["verdict"] == tr(lang, "verdict_refused")
    assert after["explanation"] == _expected_explanation(lang)
    assert set(running.key_folders()) == folders, "the switch changed the keys"
    assert driver.page.locator("#diagram img:visible").get_attribute("lang") == lang
    # No key generation spent: still one left.
    left = driver.text("limits-left")
    assert ("1 key generations" in left) if lang == "en" else ("金鑰 1 次" in left), left


def _check_the_third_key_generation_is_refused(driver: browser.PageDriver) -> None:
    """The second key generation is allowed, the third refused: outputs stay as they were."""
    driver.click("keygen-button")
    _wait_text(driver, "limits-left", "0 key generations")
    driver.wait_for_value("evaluation-key", re.compile(r"\S"))
    kept = driver.value("evaluation-key")
    driver.click("keygen-button")
    message = tr("en", "err_rate_keygen", seconds=0).split("0")[0]
    assert browser.toast(driver, message.strip()) == "Error"
    browser.assert_no_output_marked(driver)
    assert driver.value("evaluation-key") == kept
    if threeparty_runs.unavailable_reason() is None:
        # A three-party run counts as a key generation: refused the same way, its boxes
        # left as they were.
        toasts = driver.page.locator(".toast-body.error")
        toasts.first.wait_for(state="detached", timeout=60_000)  # the first one went away
        driver.click("tp-run-button")
        assert browser.toast(driver, message.strip()) == "Error"
        for elem_id in ("tp-progress", "tp-verdict", "tp-explain"):
            box = driver.page.locator(f"#{elem_id}")
            assert not box.locator(".error").count(), f"#{elem_id} marked as an error"
            assert "Error" not in box.inner_text(), box.inner_text()


def test_unemployed_profile_language_switch_and_refusal(
    public_app: RunningApp,
    chromium: str,
    tmp_path: Path,
) -> None:
    approved = NEW_USER_PROFILE.verdict()
    years = clear_explain(*NEW_USER_PROFILE.parts().values())
    assert approved is False and years == "2-5", (approved, years)  # the profile
    shots = tmp_path
    with browser.opened_page(
        chromium, public_app, "zh-CN", shots / "0-final.png", always_shoot=True
    ) as driver:
        page = driver.page
        page.evaluate("window.__sameDocument = 'kept'")
        _wait_text(driver, "limits-left", f"生成密钥 {KEYGEN_PER_CLIENT} 次")
        step4 = page.locator("#step4-title ~ div").first.inner_text()
        assert "在步骤1至步骤5中" in page.locator("body").inner_text(), step4

        # Gradio's own status text ("processing | 1.2s") in Chinese too.
        statuses = _keygen_watching_status(driver)
        assert statuses and all(re.match(r"(处理中|队列：\d+/\d*) \|", t) for t in statuses), (
            statuses
        )
        _wait_text(driver, "limits-left", "生成密钥 1 次")
        _fill_the_unemployed_profile(driver, "zh")
        _run_steps_2_to_5(driver)
        assert driver.value("verdict") == "很可能被拒绝"
        assert driver.value("explain-result") == "在职且工作年限达到2–5年时，您最有可能获批。"
        assert driver.value("explain-result") == _expected_explanation("zh")
        _shoot(driver, shots / "1-zh-CN-explained.png")
        before = _state(driver)
        folders = set(public_app.key_folders())
        assert folders, "no key folder after Step 1"

        for lang, income_type in (("zh-Hant", "退休人員"), ("en", "Pensioner")):
            _switch(driver, lang)
            _shoot(driver, shots / f"2-switched-to-{lang}.png")
            _check_the_switch_kept_everything(
                driver, lang, income_type, before, folders, public_app
            )
        assert driver.value("explain-result") == (
            "You would most likely be approved if you were employed, with 2–5 years of employment."
        )

        _check_the_third_key_generation_is_refused(driver)
        _shoot(driver, shots / "3-en-refused.png")


def _script_sets() -> tuple[set[str], set[str]]:
    """Characters only the Simplified table uses, and only the Traditional one."""

    def chars(lang: str) -> set[str]:
        texts = [*strings.table(lang).values()]  # the three-party section's texts included
        return set(browser.CJK.findall("".join(texts)))

    return chars("zh") - chars("zh-Hant"), chars("zh-Hant") - chars("zh")


def _foreign(text: str, lang: str) -> list[str]:
    """The words or characters of ``text`` that are not in ``lang`` (or one of its names)."""
    if lang == "en":
        return sorted(set(browser.CJK.findall(text)))
    simplified, traditional = _script_sets()
    other_script = traditional if lang == "zh" else simplified
    words = set(re.findall(r"[A-Za-z]{2,}", text)) - LATIN_NAMES
    return sorted(words | {c for c in text if c in other_script})


@pytest.mark.parametrize(
    ("locale", "lang"), [("zh-CN", "zh"), ("zh-TW", "zh-Hant"), ("en-US", "en")]
)
def test_each_locale_shows_one_language(
    locale: str,
    lang: str,
    public_app: RunningApp,
    chromium: str,
    tmp_path: Path,
) -> None:
    screenshot = tmp_path / f"page-{locale}.png"
    with browser.opened_page(chromium, public_app, locale, screenshot, always_shoot=True) as driver:
        page = driver.page
        page.locator("#limits-left").filter(has_text=re.compile(r"\S")).wait_for()
        page.locator("#accordion-scoring").click()  # an open accordion shows its text too
        # Everything a person can read, but the switch (each language in its own name).
        visible = page.evaluate(
            """() => {
                const switcher = document.getElementById('language-switch');
                const hidden = switcher.style.display;
                switcher.style.display = 'none';
                const text = document.body.innerText;
                switcher.style.display = hidden;
                return text;
            }"""
        )
        assert not _foreign(visible, lang), (locale, _foreign(visible, lang))
        assert page.title() == {"zh": "使用全同态加密的信用卡审批预测",
                                "zh-Hant": "使用全同態加密的信用卡審批預測",
                                "en": "Credit-card approval prediction with FHE"}[lang]  # fmt: skip
        # Step 4 speaks of the single-key steps and points to the three-party mode.
        assert strings.tr(lang, "step4_body").split("\n\n")[1] in visible
        # The limits line, in the page's language.
        assert strings.tr(lang, "limits_left").split("{")[0].split(">")[-1] in visible
        # The diagram shown is the copy in the page's language.
        assert page.locator("#diagram img:visible").get_attribute("lang") == lang
        if lang != "en":
            assert "开户时间" in visible or "開戶時間" in visible  # the diagram's term
            assert "您" in visible and "你" not in visible  # one register
            assert not re.search(r"第\d步", visible)  # steps named 步骤N / 步驟N
