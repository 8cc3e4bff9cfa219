"""The parties-and-server diagram in each of the page's languages, from one bilingual SVG.

``static/parties_server.svg`` labels everything in English and Simplified Chinese ("Bank · 银行",
or an English line and a Chinese line). Each language's copy keeps only its own side: the English
one the English text, the Simplified one the Chinese text, the Traditional one the Chinese text
as ``page/locales/diagram.zh-Hant.json`` writes it. The page holds the three copies and shows
the one of the page's current language (by the ``lang`` of ``<html>``, which the language switch
changes in place).
"""

from __future__ import annotations

import base64
import json
import re
from functools import lru_cache
from html import escape

import settings
from page import strings

SVG_NAME = "parties_server.svg"
TRADITIONAL_LABELS = strings.LOCALES_DIR / "diagram.zh-Hant.json"
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
TEXT = re.compile(r"(<(text|title)\b[^>]*>)([^<]*)(</\2>)")
SEPARATORS = (" · ", " / ")
# Which <html lang> (Gradio's locale, see page/language.py) shows which copy; English otherwise.
# (!important: Gradio adds a copy of each rule scoped to its container, whose higher specificity
# would otherwise keep every copy hidden.)
CSS = """
#diagram .diagram-copy { display: none; width: 820px; max-width: 100%; height: auto; }
html:not([lang="zh-CN"]):not([lang="zh-TW"]) #diagram .diagram-en { display: inline !important; }
html[lang="zh-CN"] #diagram .diagram-zh { display: inline !important; }
html[lang="zh-TW"] #diagram .diagram-zh-Hant { display: inline !important; }
"""


@lru_cache(maxsize=1)
def traditional_labels() -> dict[str, str]:
    """The diagram's Simplified Chinese labels and their Traditional Chinese versions."""
    return json.loads(TRADITIONAL_LABELS.read_text(encoding="utf-8"))


def chinese_labels(svg: str) -> list[str]:
    """Every Chinese text of the bilingual SVG (what ``traditional_labels`` must cover)."""
    labels = []
    for _, _, text, _ in TEXT.findall(svg):
        for part in _sides(text):
            if CJK.search(part):
                labels.append(part)
    return labels


def _sides(text: str) -> list[str]:
    """A label's parts: "English · 中文" gives both; a one-language line gives itself."""
    for separator in SEPARATORS:
        left, found, right = text.partition(separator)
        if found and not CJK.search(left) and CJK.search(right):
            return [left, right]
    return [text]


def _in_language(text: str, lang: str) -> str | None:
    """The text of one label in ``lang``, or None when the label has no text in ``lang``."""
    parts = _sides(text)
    english = [p for p in parts if not CJK.search(p)]
    chinese = [p for p in parts if CJK.search(p)]
    if lang == "en":
        return english[0] if english else None
    if not chinese:
        return None
    return traditional_labels()[chinese[0]] if lang == "zh-Hant" else chinese[0]


def svg_in(lang: str) -> str:
    """The diagram with the texts of ``lang`` only."""
    svg = (settings.STATIC_DIR / SVG_NAME).read_text(encoding="utf-8")

    def keep(match: re.Match[str]) -> str:
        opening, _, text, closing = match.groups()
        shown = _in_language(text, lang)
        return "" if shown is None else f"{opening}{escape(shown, quote=False)}{closing}"

    return TEXT.sub(keep, svg)


def html() -> str:
    """Three <img>, one per language (data: URIs, no remote address), each with its own alt."""
    images = []
    for lang in strings.LANGUAGES:
        data = base64.b64encode(svg_in(lang).encode("utf-8")).decode("ascii")
        alt = escape(strings.tr(lang, "diagram_alt"))
        images.append(
            f'<img class="diagram-copy diagram-{lang}" lang="{lang}" alt="{alt}" '
            f'src="data:image/svg+xml;base64,{data}">'
        )
    return '<p align="center">' + "".join(images) + "</p>"
