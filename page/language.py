"""The language switch: the page changes language in place, keeping its session and its work.

The switch's links ("简体中文 · 繁體中文 · English") are plain links to ``?lang=...`` that the
head script (``HEAD_SCRIPT``) intercepts: it stores the choice in the ``page_lang`` cookie (the
handlers read it), tells Gradio's own translation store to use the new locale (every text of the
page and Gradio's built-in texts follow at once, the fields keep their values), and clicks the
hidden ``#relabel-button``, whose handler (``retranslate``) turns the outputs already shown into
the new language. No reload: the session, its keys and the fields stay; no key is generated.
Only if Gradio's translation module cannot be found does the switch reload the page, after
asking (a reload starts a new session).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import settings
from contracts.parties import PARTIES
from page import strings

Translate = Callable[..., str]

# The locale Gradio is shown for each page language (Gradio has its own texts for these).
GRADIO_LOCALES = {"en": "en", "zh": "zh-CN", "zh-Hant": "zh-TW"}
# Each language's name in its own script, in the switch.
LANGUAGE_NAMES = {"zh": "简体中文", "zh-Hant": "繁體中文", "en": "English"}
# The browser tab's title in each language.
PAGE_TITLES = {
    "zh": "使用全同态加密的信用卡审批预测",
    "zh-Hant": "使用全同態加密的信用卡審批預測",
    "en": "Credit-card approval prediction with FHE",
}
RELABEL_BUTTON_ID = "relabel-button"
# The phrases of the three-party section's progress table.
TP_TABLE_KEYS = (
    "tp_step",
    "tp_row_joined",
    "tp_row_round1",
    "tp_row_chain",
    "tp_row_confirmed",
    "tp_row_uploaded",
    "tp_row_evaluated",
    "tp_row_verified",
    "tp_row_partial",
    "tp_row_verdict",
    "tp_row_traffic",
    "tp_no_ciphertext",
    "tp_not_recipient",
    "verdict_approved",
    "verdict_refused",
)

SWITCH_HTML = (
    '<p id="language-links" style="text-align:right">'
    + " · ".join(
        f'<a href="?lang={lang}" data-lang="{lang}" id="lang-{lang.lower()}">{name}</a>'
        for lang, name in LANGUAGE_NAMES.items()
    )
    + "</p>"
)

# Runs in the page's <head>, before Gradio's own scripts (page/guard.py puts it there).
_HEAD_SCRIPT = """<script>
(function () {
  var cookie = "COOKIE_NAME";
  var locales = LOCALES;
  var titles = TITLES;
  var reloadQuestion = RELOAD_QUESTION;
  var builtins = BUILTINS;
  function languageOf(tag) {
    var parts = (tag || "en").toLowerCase().split("-");
    if (parts[0] !== "zh") return "en";
    if (parts.indexOf("hant") >= 0) return "zh-Hant";
    if (parts.indexOf("hans") >= 0) return "zh";
    return ["tw", "hk", "mo"].indexOf(parts[1]) >= 0 ? "zh-Hant" : "zh";
  }
  function remember(lang) {
    document.cookie = cookie + "=" + lang + "; path=/; max-age=31536000; SameSite=Lax";
  }
  var asked = new URLSearchParams(window.location.search).get("lang");
  if (locales[asked]) remember(asked);
  var match = document.cookie.match(new RegExp("(?:^|; )" + cookie + "=([A-Za-z-]+)"));
  var lang = match && locales[match[1]] ? match[1] : languageOf(navigator.language);
  var locale = locales[lang];
  Object.defineProperty(Navigator.prototype, "language", {get: function () { return locale; }});
  Object.defineProperty(Navigator.prototype, "languages", {get: function () { return [locale]; }});
  function showTitle() { if (document.title !== titles[lang]) document.title = titles[lang]; }
  function gradioCore() {
    var urls = performance.getEntriesByType("resource").map(function (e) { return e.name; });
    document.querySelectorAll("link[rel=modulepreload]").forEach(function (l) {
      urls.push(l.href);
    });
    return urls.filter(function (u) { return /\\/assets\\/core-[^\\/]*\\.js(\\?|$)/.test(u); })[0];
  }
  function reload(next) {
    if (window.confirm(reloadQuestion[next])) window.location.search = "?lang=" + next;
  }
  function switchTo(next) {
    var core = gradioCore();
    if (!core) { reload(next); return; }
    import(core).then(function (module) {
      if (typeof module.changeLocale !== "function") { reload(next); return; }
      remember(next);
      lang = next;
      locale = locales[next];
      module.changeLocale(locale);
      document.documentElement.lang = locale;
      showTitle();
      translateTree(document.body);
      var relabel = document.getElementById("RELABEL_ID");
      if (relabel) relabel.click();
    }, function () { reload(next); });
  }
  // Gradio's own texts that its translations leave in English ("processing |", ...).
  function translateText(node) {
    var rules = builtins[lang] || [];
    for (var i = 0; i < rules.length; i++) {
      var pattern = new RegExp(rules[i][0]);
      if (pattern.test(node.data)) {
        var next = node.data.replace(pattern, rules[i][1]);
        if (next !== node.data) node.data = next;
        return;
      }
    }
  }
  function translateTree(root) {
    if (root.nodeType === 3) { translateText(root); return; }
    if (root.nodeType !== 1) return;
    var walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) translateText(walker.currentNode);
  }
  new MutationObserver(function (mutations) {
    mutations.forEach(function (m) {
      if (m.type === "characterData") translateText(m.target);
      else m.addedNodes.forEach(translateTree);
    });
    showTitle();  // Gradio writes its own (both languages) title once it runs
  }).observe(document.documentElement, {subtree: true, childList: true, characterData: true});
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("#language-links a[data-lang]");
    if (!link) return;
    event.preventDefault();
    var next = link.getAttribute("data-lang");
    if (locales[next] && next !== lang) switchTo(next);
  }, true);
})();
</script>"""


def head_script() -> str:
    """The head script: the chosen or the browser's language, and the in-place switch."""
    question = {lang: strings.tr(lang, "switch_reload_question") for lang in GRADIO_LOCALES}
    return (
        _HEAD_SCRIPT.replace("COOKIE_NAME", strings.LANGUAGE_COOKIE)
        .replace("LOCALES", json.dumps(GRADIO_LOCALES))
        .replace("TITLES", json.dumps(PAGE_TITLES, ensure_ascii=False))
        .replace("RELOAD_QUESTION", json.dumps(question, ensure_ascii=False))
        .replace("RELABEL_ID", RELABEL_BUTTON_ID)
        .replace("BUILTINS", json.dumps(gradio_text_rules(), ensure_ascii=False))
    )


def gradio_text_rules() -> dict[str, list[tuple[str, str]]]:
    """Per language, (JavaScript regex, replacement) pairs for Gradio's untranslated texts.

    Each regex matches the text in any of the page's languages, so that a switch puts the
    texts already shown into the new language too.
    """

    def any_of(key: str) -> str:
        return "|".join(re.escape(strings.tr(lang, key)) for lang in strings.LANGUAGES)

    rules: dict[str, list[tuple[str, str]]] = {}
    for lang in strings.LANGUAGES:
        rules[lang] = [
            (
                f"^(\\s*)(?:{any_of('gradio_processing')}) \\|",
                f"$1{strings.tr(lang, 'gradio_processing')} |",
            ),
            (
                f"^(\\s*)(?:{any_of('gradio_queue')})(\\d)",
                f"$1{strings.tr(lang, 'gradio_queue')}$2",
            ),
            (
                f"^(?:{any_of('gradio_connection_lost')})$",
                strings.tr(lang, "gradio_connection_lost"),
            ),
        ]
    return rules


# ---------------------------------------------------------------------------------------------
# Outputs already shown, in the new language
# ---------------------------------------------------------------------------------------------
def _sentences(translate: Translate) -> list[Callable[[str], str]]:
    """Every whole output text whose meaning is known, as a function of the language."""
    builders: list[Callable[[str], str]] = [
        partial(translate, key=key)
        for key in ("verdict_approved", "verdict_refused", "not_sent", "explain_already")
    ]
    for years in (*settings.YEARS_EMPLOYED_BINS, None):
        for employed in (True, False):
            builders.append(partial(_explanation, approved=False, years=years, employed=employed))
    return builders


def _explanation(lang: str, *, approved: bool, years: str | None, employed: bool) -> str:
    return strings.explanation_text(lang, approved=approved, years=years, employed=employed)


def relabel(
    shown: Mapping[Any, Any], lang: str, translate: Translate, limits_line: str
) -> dict[Any, str]:
    """The switch's handler: each output component's text in ``lang``.

    Args:
        shown: each output component (by its elem_id: verdict, explanations, "not sent" marks,
            the three-party table, the limits line) with its current text.
        lang: the new language.
        translate: the page's ``tr``.
        limits_line: the limits line in ``lang`` (computed afresh, not translated).

    Returns:
        Each component's new text (ciphertexts and numbers unchanged).
    """
    relabelled = {}
    for component, text in shown.items():
        text = text if isinstance(text, str) else ""
        if component.elem_id == "limits-left":
            relabelled[component] = limits_line
        elif component.elem_id == "tp-progress":
            relabelled[component] = retranslate_phrases(text, lang, translate, TP_TABLE_KEYS)
        else:
            relabelled[component] = retranslate(text, lang, translate)
    return relabelled


def retranslate(text: str, lang: str, translate: Translate) -> str:
    """A whole output text (verdict, explanation, "not sent") in ``lang``; others unchanged."""
    if not text:
        return text
    for build in _sentences(translate):
        if any(build(source) == text for source in strings.LANGUAGES):
            return build(lang)
    return text


def retranslate_phrases(text: str, lang: str, translate: Translate, keys: Iterable[str]) -> str:
    """A table made of the given keys' phrases, each phrase put into ``lang``.

    Phrases are replaced in one pass, longest first, so that a replacement is never replaced
    again; party names are included, capitalized in the header (the first line) as the table
    writes them, and in pairs joined by each language's list separator.
    """
    header, newline, rows = text.partition("\n")
    header = _phrase_pattern(lang, translate, keys, capitalized=True)(header)
    rows = _phrase_pattern(lang, translate, keys, capitalized=False)(rows)
    return table_units(header + newline + rows, lang)


def _phrase_pattern(
    lang: str, translate: Translate, keys: Iterable[str], *, capitalized: bool
) -> Callable[[str], str]:
    """A function replacing every phrase of ``keys`` and every party name in any language."""
    parties = [f"party_{p}" for p in PARTIES]

    def name(source: str, key: str) -> str:
        text = translate(source, key)
        return text.capitalize() if capitalized else text

    mapping: dict[str, str] = {}
    for source in strings.LANGUAGES:
        for key in keys:
            mapping[translate(source, key)] = translate(lang, key)
        for key in parties:
            mapping[name(source, key)] = name(lang, key)
        for first, second in itertools.permutations(parties, 2):
            pair = translate(source, "list_separator").join(
                (name(source, first), name(source, second))
            )
            mapping[pair] = translate(lang, "list_separator").join(
                (name(lang, first), name(lang, second))
            )
    phrases = sorted((p for p in mapping if p), key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(p) for p in phrases))
    return partial(pattern.sub, lambda match: mapping[match.group(0)])


def table_units(text: str, lang: str) -> str:
    """A table's seconds and sizes in brackets as ``lang`` writes them ("2.31 秒", "（0.7 MB）")."""
    chinese = lang != "en"
    text = re.sub(r"(\d) (?:s|秒)(?![A-Za-z])", r"\1 秒" if chinese else r"\1 s", text)
    size = r"[(（](\d+(?:\.\d+)? MB)[)）]"
    return re.sub(size, r"（\1）" if chinese else r"(\1)", text)
