"""The language switch without a browser: outputs already shown, put into another language.

The switch itself (in place, no reload, no key generation) is walked in a real browser by
tests/page/test_browser_newuser.py; here the texts it rewrites are checked against the functions
that wrote them, in each pair of the page's three languages.
"""

from __future__ import annotations

import itertools
import re

import pytest

import app
import settings
from contracts.parties import RECIPIENTS
from page import diagram, language, strings
from page.sections import threeparty as tp_section
from page.threeparty_runs import ROLES, FlowState

PAIRS = list(itertools.permutations(strings.LANGUAGES, 2))


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_whole_outputs_are_retranslated(source: str, target: str) -> None:
    for key in ("verdict_approved", "verdict_refused", "not_sent", "explain_already"):
        assert language.retranslate(app.tr(source, key), target, app.tr) == app.tr(target, key)
    for years, employed in itertools.product((*settings.YEARS_EMPLOYED_BINS, None), (True, False)):
        shown = strings.explanation_text(source, approved=False, years=years, employed=employed)
        expected = strings.explanation_text(target, approved=False, years=years, employed=employed)
        assert language.retranslate(shown, target, app.tr) == expected
    # Ciphertexts, numbers and empty boxes are left as they are.
    for text in ("…3f2bb4497f3d759e", "2.31", ""):
        assert language.retranslate(text, target, app.tr) == text


def _finished_run() -> FlowState:
    state = FlowState()
    for role in ROLES:
        up = {"bytes_up": 3_400_000, "bytes_down": 1_200_000}
        state.add(role, {"step": "joined", "fingerprint": "ab12-cd34-ef56-0123-4567"})
        state.add(role, {"step": "round1", "seconds": 1.234, "uploaded": 14_400_000})
        state.add(role, {"step": "chain_verified"})
        state.add(role, {"step": "key_confirmed"})
        own = role != "bank"  # the bank encrypts its tag only
        state.add(
            role, {"step": "uploaded", "ciphertexts": 1, "own_fields": own, "uploaded": 900_000}
        )
        state.add(role, {"step": "evaluated", "evaluation_seconds": 2.75})
        state.add(role, {"step": "verified", "seconds": 0.4})
        recipients = [r for r in RECIPIENTS if r != role]
        state.add(
            role,
            {"step": "partial_decrypted", "sent_to": recipients, "partial_bytes": 700_000, **up},
        )
        if role in RECIPIENTS:
            verdict = {"approved": False, "fewest_years_employed": "2-5", **up}
            state.add(role, {"step": "verdict", **verdict})
    return state


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_the_three_party_table_is_retranslated(source: str, target: str) -> None:
    state = _finished_run()
    shown, verdict, explanation = tp_section.render(state, source, app.tr, employed=False)
    expected = tp_section.render(state, target, app.tr, employed=False)
    retranslated = language.retranslate_phrases(shown, target, app.tr, language.TP_TABLE_KEYS)
    assert retranslated == expected[0]
    assert language.retranslate(verdict, target, app.tr) == expected[1]
    assert language.retranslate(explanation, target, app.tr) == expected[2]


def test_chinese_tables_use_full_width_units() -> None:
    for lang in ("zh", "zh-Hant"):
        table, _, _ = tp_section.render(_finished_run(), lang, app.tr)
        assert "1.23 秒" in table and "（0.7 MB）" in table, table
        assert not re.search(r"\d s\b|\(\d", table), table
    english, _, _ = tp_section.render(_finished_run(), "en", app.tr)
    assert "1.23 s" in english and "(0.7 MB)" in english


@pytest.mark.parametrize("lang", strings.LANGUAGES)
def test_gradio_texts_are_rewritten_from_any_language(lang: str) -> None:
    rules = language.gradio_text_rules()[lang]

    def rewrite(text: str) -> str:
        for pattern, replacement in rules:
            if re.search(pattern, text):
                return re.sub(pattern, replacement.replace("$1", r"\1").replace("$2", r"\2"), text)
        return text

    for source in strings.LANGUAGES:
        processing = f"{strings.tr(source, 'gradio_processing')} |"
        assert rewrite(processing) == f"{strings.tr(lang, 'gradio_processing')} |"
        queue = f"{strings.tr(source, 'gradio_queue')}2/5 |"
        assert rewrite(queue) == f"{strings.tr(lang, 'gradio_queue')}2/5 |"
        lost = strings.tr(source, "gradio_connection_lost")
        assert rewrite(lost) == strings.tr(lang, "gradio_connection_lost")
    assert rewrite("3.0s") == "3.0s"


def test_head_script_knows_every_language() -> None:
    script = language.head_script()
    assert strings.LANGUAGE_COOKIE in script and language.RELABEL_BUTTON_ID in script
    for lang, locale in language.GRADIO_LOCALES.items():
        assert f'"{lang}": "{locale}"' in script
        assert language.PAGE_TITLES[lang] in script
        assert strings.tr(lang, "switch_reload_question") in script
    assert set(language.GRADIO_LOCALES) == set(strings.LANGUAGES)
    for lang in strings.LANGUAGES:
        assert f'data-lang="{lang}"' in language.SWITCH_HTML


def test_the_diagram_has_one_copy_per_language() -> None:
    bilingual = (settings.STATIC_DIR / diagram.SVG_NAME).read_text(encoding="utf-8")
    assert set(diagram.chinese_labels(bilingual)) <= set(diagram.traditional_labels())
    simplified = {c for text in diagram.traditional_labels() for c in text}
    traditional = {c for text in diagram.traditional_labels().values() for c in text}

    def texts(lang: str) -> str:
        return " ".join(t for _, _, t, _ in diagram.TEXT.findall(diagram.svg_in(lang)))

    english, hans, hant = texts("en"), texts("zh"), texts("zh-Hant")
    assert "Bank" in english and not diagram.CJK.search(english), english
    assert "开户时间" in hans and not re.search(r"[A-Za-z]{2,}", hans), hans
    assert "開戶時間" in hant and not re.search(r"[A-Za-z]{2,}", hant), hant
    assert not (set(hant) & (simplified - traditional)), hant
    page = diagram.html()
    for lang in strings.LANGUAGES:
        assert f'class="diagram-copy diagram-{lang}" lang="{lang}"' in page
        assert strings.tr(lang, "diagram_alt") in page
