"""The page's text in its two languages, read from ``page/locales/<lang>.json``.

Every key exists in every file (a test checks it). Browsers whose language is Chinese get
Simplified Chinese ("zh": zh-CN, zh-SG, zh-Hans...) or Traditional Chinese ("zh-Hant": zh-TW,
zh-HK, zh-MO, zh-Hant...), every other language English; the language switch on the page
(page/language.py) overrides that choice with the ``page_lang`` cookie, which the handlers read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any

LANGUAGES = ("en", "zh", "zh-Hant")
LOCALES_DIR = Path(__file__).resolve().parent / "locales"
LANGUAGE_COOKIE = "page_lang"
# Locale names the browser side may report for Chinese (Gradio picks a locale by exact name,
# then by its first part): each script's text is registered under each of its names.
SIMPLIFIED_LOCALES = ("zh", "zh-CN", "zh-SG", "zh-Hans")
TRADITIONAL_LOCALES = ("zh-TW", "zh-HK", "zh-MO", "zh-Hant")


@lru_cache(maxsize=len(LANGUAGES))
def table(lang: str) -> Mapping[str, str]:
    """Return one language's strings (read once from its JSON file)."""
    return json.loads((LOCALES_DIR / f"{lang}.json").read_text(encoding="utf-8"))


def language_of(tag: str) -> str:
    """Map a language tag ("zh-CN", "zh-HK", "en-US", "fr") to "zh", "zh-Hant" or "en"."""
    parts = tag.strip().lower().split("-")
    if parts[0] != "zh":
        return "en"
    if "hant" in parts:
        return "zh-Hant"
    if "hans" in parts:
        return "zh"
    return "zh-Hant" if len(parts) > 1 and parts[1] in ("tw", "hk", "mo") else "zh"


def _slug(value: str) -> str:
    """Make a translation-key-safe slug of a canonical category value ("18+" -> "18")."""
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")


def category_key(field: str, value: str) -> str:
    """Translation key of a category value's display name."""
    return f"cat_{field}_{_slug(value)}"


def tr(lang: str, key: str, **values: Any) -> str:
    """Translate a key into a page language (falls back to English), filling placeholders."""
    text = table(lang if lang in LANGUAGES else "en").get(key) or table("en")[key]
    return text.format(**values) if values else text


def display_name(field: str, value: str, lang: str) -> str:
    """Return the display name of a canonical category value in a language."""
    return tr(lang, category_key(field, value))


def party_list(lang: str, parties: Sequence[str]) -> str:
    """Join the translated names of parties with the language's list separator."""
    return tr(lang, "list_separator").join(tr(lang, f"party_{p}") for p in parties)


def headers_language(headers: Mapping[str, str]) -> str:
    """The page's language for a request's headers: the switch's cookie, else Accept-Language.

    The static text follows the browser's first language (navigator.language, the first entry of
    Accept-Language) or the switch; the handlers' messages follow the same choice.
    """
    lowered = {str(name).lower(): str(value) for name, value in headers.items()}
    cookie_header = lowered.get("cookie", "")
    if cookie_header:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(cookie_header)
        except CookieError:
            cookies = SimpleCookie()
        chosen = cookies.get(LANGUAGE_COOKIE)
        if chosen is not None and chosen.value in LANGUAGES:
            return chosen.value
    first = lowered.get("accept-language", "").split(",")[0].split(";")[0]
    return language_of(first)


def gradio_translations() -> dict[str, dict[str, str]]:
    """The tables keyed by every locale name Gradio may pick (for ``gr.I18n``)."""
    tables = {"en": dict(table("en"))}
    tables.update({locale: dict(table("zh")) for locale in SIMPLIFIED_LOCALES})
    tables.update({locale: dict(table("zh-Hant")) for locale in TRADITIONAL_LOCALES})
    return tables


def locale_language(locale: str) -> str:
    """The page language of a Gradio locale name of ``gradio_translations``."""
    return language_of(locale)


# Gradio's toast shows its type ("Error") as the title, whatever title the handler gives and in
# English only: on a Chinese page the stylesheet writes the Chinese word in its place.
TOAST_TITLE_CSS = (
    'html[lang="%(locale)s"] .toast-title.error { font-size: 0; }\n'
    'html[lang="%(locale)s"] .toast-title.error::before '
    '{ content: "%(title)s"; font-size: var(--text-lg); }\n'
)
# The button the language switch clicks to put the outputs into the new language.
HIDDEN_CSS = "#relabel-button { display: none !important; }\n"


def page_css() -> str:
    """The page's stylesheet (the Chinese toast titles, the switch's hidden button)."""
    titles = [
        TOAST_TITLE_CSS % {"locale": locale, "title": tr(lang, "error_title")}
        for lang, locales in (("zh", SIMPLIFIED_LOCALES), ("zh-Hant", TRADITIONAL_LOCALES))
        for locale in locales
    ]
    return "".join(titles) + HIDDEN_CSS


def explanation_text(lang: str, *, approved: bool, years: str | None, employed: bool) -> str:
    """The explanation sentence of both modes, naming every change the candidate rows make.

    The candidate rows are employed = yes with each years-employed bin: for an applicant sent
    as not employed, the answer names both changes (being employed and the years).

    Args:
        lang: the page's language.
        approved: whether the applicant's own inputs are already most likely approved.
        years: the fewest approving bin (canonical value), or None when no candidate approves.
        employed: whether the credit bureau sent employed = yes.
    """
    if approved:
        return tr(lang, "explain_already")
    if years is None:
        return tr(lang, "explain_none" if employed else "explain_none_unemployed")
    shown = display_name("years_employed", years, lang)
    return tr(lang, "explain_years" if employed else "explain_employed_years", years=shown)
