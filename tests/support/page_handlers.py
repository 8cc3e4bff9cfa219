"""Calling the page's handlers without a browser: requests in a language, their errors, texts.

- ``ZH_REQUEST``, ``EN_REQUEST`` and ``make_request``: a Gradio request from a browser in a
  language (and a tab, its session hash).
- ``error_of(call)``: the message of the ``gr.Error`` a handler raised (never a traceback).
- ``TRANSLATIONS``: every language's table; ``APP_SOURCE``: the page's code (app.py, the
  runtime, the three-party runs and the sections), searched for the keys it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pytest

import app
from page import strings

PAGE_DIR = Path(app.__file__).with_name("page")
# The page's code: app.py composes the sections; the runtime and the sections hold the handlers.
PAGE_SOURCES = [
    Path(app.__file__),
    PAGE_DIR / "runtime.py",
    PAGE_DIR / "threeparty_runs.py",
    *sorted((PAGE_DIR / "sections").glob("*.py")),
]
APP_SOURCE = "\n".join(path.read_text(encoding="utf-8") for path in PAGE_SOURCES)
TRANSLATIONS = {lang: dict(strings.table(lang)) for lang in strings.LANGUAGES}
ZH_REQUEST = {"accept-language": "zh-CN,zh;q=0.9,en;q=0.8"}
EN_REQUEST = {"accept-language": "en-US,en;q=0.9,zh;q=0.5"}


def make_request(headers: dict[str, str], session_hash: str = "test-session") -> gr.Request:
    """A Gradio request with these headers, from the tab ``session_hash``."""
    return gr.Request(headers=headers, session_hash=session_hash)


def error_of(call: Callable[[], Any]) -> str:
    """The message of the ``gr.Error`` that ``call`` raises (asserted free of any traceback)."""
    with pytest.raises(gr.Error) as caught:
        call()
    message = caught.value.message
    assert "Traceback" not in message
    return message
