"""The page as app.py composes it, without a browser: its layout and what importing it does.

Every step's element, no handler in the API, sliders on the data's ranges, no remote resource,
no work done on import, and no environment read outside page/config.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import gradio as gr
import pytest

import app
import backend
import settings
from page import strings
from tests.support.page_handlers import (
    APP_SOURCE,
    TRANSLATIONS,
)


@pytest.fixture(scope="module")
def demo() -> gr.Blocks:
    runtime = app.PageRuntime(settings.ClientSettings())
    return app.build_demo(runtime)


@pytest.fixture(scope="module")
def demo_config(demo: gr.Blocks) -> dict[str, Any]:
    return demo.get_config_file()


def test_build_demo_has_every_step_element(demo_config: dict[str, Any]) -> None:
    elem_ids = {c["props"].get("elem_id") for c in demo_config["components"]}
    for elem_id in (
        "language-switch",
        "logo",
        "title",
        "privacy-notice",
        "accordion-scoring",
        "accordion-privacy",
        "accordion-fhe",
        "diagram",
        "keygen-button",
        "evaluation-key",
        "assets",
        "num-children",
        "household-size",
        "total-income",
        "age",
        "income-type",
        "education-type",
        "family-status",
        "occupation-type",
        "housing-type",
        "encrypt-applicant-button",
        "encrypted-applicant",
        "account-age",
        "encrypt-bank-button",
        "encrypted-bank",
        "employed",
        "years-employed",
        "encrypt-credit-bureau-button",
        "encrypted-credit-bureau",
        "run-fhe-button",
        "fhe-execution-time",
        "get-output-button",
        "encrypted-output",
        "verdict",
        "explain-button",
        "explain-result",
    ):
        assert elem_id in elem_ids, elem_id


def test_no_handler_is_in_the_api_and_checks_have_no_outputs(
    demo: gr.Blocks, demo_config: dict[str, Any]
) -> None:
    assert all(fn.api_visibility == "private" for fn in demo.fns.values())
    checks = [fn for fn in demo.fns.values() if fn.name.startswith("check_")]
    # Step 1's, the six step buttons' and the three-party run's.
    assert len(checks) == 8 and all(not fn.outputs for fn in checks)
    allowed = app.page_fn_ids(demo)
    unload = [i for i, fn in demo.fns.items() if any(t[1] == "unload" for t in fn.targets)]
    assert unload and not set(unload) & allowed


def test_sliders_use_the_data_ranges(demo_config: dict[str, Any]) -> None:
    by_id = {c["props"].get("elem_id"): c["props"] for c in demo_config["components"]}
    ranges = settings.field_ranges()
    for elem_id, field in (
        ("num-children", "num_children"),
        ("household-size", "household_size"),
        ("total-income", "total_income"),
        ("age", "age"),
        ("account-age", "account_age"),
    ):
        props = by_id[elem_id]
        assert props["minimum"] == ranges[field]["minimum"]
        assert props["maximum"] == ranges[field]["maximum"]
        assert props["value"] == ranges[field]["value"]
    # Dropdown choices carry the canonical value, the display name is a translation key.
    choices = by_id["income-type"]["choices"]
    assert [value for _, value in choices] == settings.INCOME_TYPES


def test_no_remote_resource_in_the_page(demo_config: dict[str, Any]) -> None:
    text = json.dumps(demo_config, default=str) + json.dumps(TRANSLATIONS)
    # The one address is a link a person may follow (the seed's scikit-learn reference).
    links = re.findall(r"https?://[^\s)\"']+", text)
    assert set(links) == {
        "https://scikit-learn.org/stable/modules/generated/sklearn.tree.DecisionTreeClassifier.html"
    }
    sources = re.findall(r"src=\\?[\"']([^\"'\\]+)", text)
    assert len(sources) == 1 + len(strings.LANGUAGES)  # the logo, the diagram in each language
    assert all(src.startswith("data:image/svg+xml;base64,") for src in sources)
    for svg in (settings.STATIC_DIR / "logo.svg", settings.STATIC_DIR / "parties_server.svg"):
        content = svg.read_text(encoding="utf-8")
        # The only "http" is the SVG namespace name, which is never fetched.
        assert content.count("http") == content.count('xmlns="http://www.w3.org/2000/svg"') == 1
        assert 'href="http' not in content and "url(http" not in content


def test_importing_app_does_no_work() -> None:
    # No child process (FHE server, key generation worker), no client, no page built or served.
    code = "import psutil, app; assert psutil.Process().children() == []; print('ok')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=settings.REPO_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_app_does_not_read_or_write_the_environment() -> None:
    # The page reads its environment in one place only: page/config.py (PageConfig).
    for source in (APP_SOURCE, Path(backend.__file__).read_text(encoding="utf-8")):
        assert "os.environ" not in source and "getenv" not in source
