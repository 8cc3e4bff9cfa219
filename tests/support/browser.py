"""Driving the page in a real browser: headless Chromium through Playwright, like a person.

- ``find_chromium()``: Debian's Chromium (Playwright's own browser download is not used), or a
  skip when Chromium or Playwright is missing (a failure under REQUIRE_BROWSER=1, see the root
  conftest).
- ``opened_page(...)``: a fresh Chromium profile in a locale showing the page, as a
  ``PageDriver`` whose failures name the screenshot and carry the app's log.
- ``fill_applicant``, ``toast``, ``assert_no_output_marked``: what several browser tests do.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import settings
from development.page_script import RunningApp
from page.strings import display_name

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_LOAD_TIMEOUT_MS = 60_000
# Key generation uploads ~16 MB of evaluation keys; FHE runs take a few seconds at most.
STEP_TIMEOUT_SECONDS = 90.0
CJK = re.compile(r"[\u4e00-\u9fff]")
ASSET_IDS = ("own_car", "own_property", "mobile_phone")


def find_chromium() -> str:
    """Return Chromium's path, or skip the test when Chromium or Playwright is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        pytest.skip(f"Playwright is not installed ({error})")
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("no 'chromium' executable on PATH (apt-get install chromium)")
    return executable


class PageDriver:
    """Drives the page like a person (failures get the screenshot's path and the log added)."""

    def __init__(self, page: Any, running: RunningApp, screenshot: Path) -> None:
        self.page = page
        self.running = running
        self.screenshot = screenshot

    def context(self) -> str:
        """Return what every failure message carries: the screenshot's path and the app's log."""
        return f"\nscreenshot: {self.screenshot}\napp log ({self.running.log}):\n" + (
            self.running.log_tail(2000)
        )

    def take_screenshot(self) -> None:
        """Save a full-page screenshot (best effort: a broken page must not hide the failure)."""
        try:
            self.page.screenshot(path=str(self.screenshot), full_page=True)
        except Exception as error:  # noqa: BLE001 - the test's own failure matters more
            print(f"could not take the screenshot {self.screenshot}: {error}")

    def textbox(self, elem_id: str) -> Any:
        """Return the <textarea>/<input> of a gr.Textbox."""
        return self.page.locator(f"#{elem_id} [data-testid='textbox']")

    def value(self, elem_id: str) -> str:
        """Return a gr.Textbox's current value."""
        return self.textbox(elem_id).input_value()

    def text(self, elem_id: str) -> str:
        """Return the visible text of a component."""
        return self.page.locator(f"#{elem_id}").inner_text()

    def error_toasts(self) -> list[str]:
        """Return the texts of the error toasts on the page."""
        return self.page.locator(".toast-body.error [data-testid='toast-text']").all_inner_texts()

    def click(self, elem_id: str) -> None:
        """Click a button."""
        self.page.locator(f"#{elem_id}").click()

    def wait_for_value(self, elem_id: str, pattern: re.Pattern[str]) -> str:
        """Wait until a textbox's value matches, failing at once on an error toast.

        Returns:
            The textbox's value.
        """
        deadline = time.monotonic() + STEP_TIMEOUT_SECONDS
        value = ""
        while time.monotonic() < deadline:
            value = self.value(elem_id)
            if pattern.search(value):
                return value
            errors = self.error_toasts()
            assert not errors, f"the page showed an error while waiting for #{elem_id}: {errors}"
            self.page.wait_for_timeout(200)
        raise AssertionError(
            f"#{elem_id} did not match {pattern.pattern!r} within {STEP_TIMEOUT_SECONDS:g} s "
            f"(value {value!r})"
        )

    def set_slider(self, elem_id: str, number: float) -> None:
        """Type a number into a slider's number box and check that the slider follows."""
        box = self.page.locator(f"#{elem_id} input[data-testid='number-input']")
        box.fill(f"{number:g}")
        box.press("Enter")
        slider = self.page.locator(f"#{elem_id} input[type='range']")
        actual = float(slider.input_value())
        assert actual == number, f"slider #{elem_id} shows {actual}, not {number}"

    def pick(self, elem_id: str, shown: str) -> None:
        """Open a dropdown and click the option displayed as ``shown``."""
        combobox = self.page.locator(f"#{elem_id} input[role='combobox']")
        combobox.click()
        self.page.get_by_role("option", name=shown, exact=True).click()
        actual = combobox.input_value()
        assert actual == shown, f"dropdown #{elem_id} shows {actual!r}, not {shown!r}"

    def set_checkbox(self, elem_id: str, value: str, checked: bool) -> None:
        """Tick or untick one choice of a gr.CheckboxGroup (by its value)."""
        box = self.page.locator(f"#{elem_id} input[type='checkbox'][name='{value}']")
        box.set_checked(checked)
        assert box.is_checked() is checked, f"#{elem_id} {value} not set"


def fill_applicant(driver: PageDriver, lang: str, applicant: dict[str, Any]) -> None:
    """Enter an applicant's fields in Step 2.1 (the categories by their names in ``lang``)."""
    """Enter an applicant's fields in Step 2.1 (the categories by their names in ``lang``)."""
    for field in ASSET_IDS:
        driver.set_checkbox("assets", field, applicant[field])
    driver.set_slider("num-children", applicant["num_children"])
    driver.set_slider("household-size", applicant["household_size"])
    driver.set_slider("total-income", applicant["total_income"])
    driver.set_slider("age", applicant["age"])
    for field in settings.APPLICANT_FIELDS[7:]:  # the five categories, shown by display name
        driver.pick(field.replace("_", "-"), display_name(field, applicant[field], lang))


OUTPUT_IDS = (
    "evaluation-key",
    "encrypted-applicant",
    "encrypted-bank",
    "encrypted-credit-bureau",
    "fhe-execution-time",
    "encrypted-output",
    "verdict",
    "explain-result",
)


def assert_no_output_marked(driver: PageDriver) -> None:
    """No output box shows Gradio's error state (a red "Error" badge)."""
    for elem_id in OUTPUT_IDS:
        marked = driver.page.locator(f"#{elem_id} .error").count()
        text = driver.text(elem_id)
        assert not marked and "Error" not in text and "错误" not in text, (
            f"#{elem_id} is marked as an error: {text!r}"
        )


def toast(driver: PageDriver, expected: str) -> str:
    """Wait for the error toast saying ``expected``; return its title as displayed."""
    found = driver.page.locator(".toast-body.error").filter(has_text=expected)
    found.first.wait_for(state="visible", timeout=STEP_TIMEOUT_SECONDS * 1000)
    return driver.page.evaluate(
        """el => {
            const title = el.querySelector('.toast-title');
            const before = getComputedStyle(title, '::before').content;
            return before && before !== 'none' ? before.replace(/"/g, '') : title.innerText;
        }""",
        found.first.element_handle(),
    )


@contextmanager
def opened_page(
    chromium: str, running: RunningApp, locale: str, screenshot: Path, *, always_shoot: bool
) -> Iterator[PageDriver]:
    """A fresh Chromium profile in ``locale`` showing the page; failures get the screenshot."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright refuses --user-data-dir in args: a persistent context gets a fresh one.
        context = playwright.chromium.launch_persistent_context(
            str(screenshot.with_suffix(".profile")),
            executable_path=chromium,
            args=CHROMIUM_ARGS,
            locale=locale,
            viewport={"width": 1280, "height": 900},
        )
        try:
            context.set_default_timeout(30_000)
            page = context.pages[0] if context.pages else context.new_page()
            driver = PageDriver(page, running, screenshot)
            try:
                page.goto(running.url, wait_until="load", timeout=PAGE_LOAD_TIMEOUT_MS)
                page.locator("#keygen-button").wait_for(state="visible")
                yield driver
            except (AssertionError, PlaywrightError) as error:
                driver.take_screenshot()
                raise AssertionError(f"{error}{driver.context()}") from error
            finally:
                if always_shoot:
                    driver.take_screenshot()
        finally:
            context.close()
