"""The page's texts without a browser: the locale tables (page/strings.py, page/locales/).

Every language has every key, the same placeholders and no empty text; the Chinese tables are
Chinese with full-width punctuation; every key the page's code uses is translated; the texts
say what the code does; a request's language comes from its cookie and Accept-Language.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest

import app
import backend
import settings
from page import strings
from tests.support.page_handlers import (
    APP_SOURCE,
    TRANSLATIONS,
    make_request,
)


def test_both_languages_have_every_key_and_no_empty_string() -> None:
    en, zh = TRANSLATIONS["en"], TRANSLATIONS["zh"]
    assert set(en) == set(zh)
    # Every section's texts, the three-party mode's too, are in every locale file.
    assert set(TRANSLATIONS["zh-Hant"]) == set(en)
    assert {key for key in en if key.startswith("tp_")} >= {"tp_title", "tp_holdings"}
    for lang, table in TRANSLATIONS.items():
        for key, text in table.items():
            assert isinstance(text, str) and text.strip(), f"{lang}:{key} is empty"


def test_placeholders_are_the_same_in_both_languages() -> None:
    def fields(text: str) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name}

    en, zh, hant = TRANSLATIONS["en"], TRANSLATIONS["zh"], TRANSLATIONS["zh-Hant"]
    for key in en:
        assert fields(en[key]) == fields(zh[key]) == fields(hant[key]), key


def _prose(text: str) -> str:
    """Text without HTML tags, Markdown links' targets, code spans and placeholders."""
    text = re.sub(r"<[^>]*>|\]\([^)]*\)|`[^`]*`|\{[a-z_]+\}", " ", text)
    return text


@pytest.mark.parametrize("lang", ["zh", "zh-Hant"])
def test_chinese_table_is_chinese_with_full_width_punctuation(lang: str) -> None:
    han = re.compile(r"[\u4e00-\u9fff]")
    for key, text in TRANSLATIONS[lang].items():
        if key in ("list_separator",):
            continue
        assert han.search(text), f"zh:{key} has no Chinese character: {text!r}"
        prose = _prose(text)
        # Half-width punctuation next to a Chinese character (full-width is the rule).
        bad = re.findall(r"[\u4e00-\u9fff][,:;?!()]|[,:;?!()][\u4e00-\u9fff]", prose)
        assert not bad, f"zh:{key} has half-width punctuation {bad}: {text!r}"
        # No English word the project wrote (FHE and the README's name are names).
        names = {"FHE", "README", "evaluation", "key", "BFV", "OpenFHE", "Python", "MB"}
        names |= {"venv", "threeparty", "openfhe"}  # the environment's folder and module
        words = set(re.findall(r"[A-Za-z]{2,}", prose)) - names
        assert not words, f"zh:{key} has English words {words}: {text!r}"


def test_every_key_used_in_app_is_translated() -> None:
    used = set(re.findall(r"i18n\(\"([a-z0-9_]+)\"\)", APP_SOURCE))
    used |= set(re.findall(r"tr\(\s*lang,\s*\"([a-z0-9_]+)\"", APP_SOURCE))
    used |= set(re.findall(r"page_error\(\s*lang,\s*\"([a-z0-9_]+)\"", APP_SOURCE))
    used |= set(re.findall(r"\"(err_[a-z0-9_]+)\"", APP_SOURCE))
    used |= set(re.findall(r"output_box\(\s*i18n,\s*\"([a-z0-9_]+)\"", APP_SOURCE))
    limits_source = Path(app.__file__).with_name("page").joinpath("limits.py").read_text()
    used |= set(re.findall(r"\"(err_[a-z0-9_]+)\"", limits_source))
    for text in re.findall(r"field_slider\(i18n, \"[a-z_]+\", \"([a-z0-9_]+)\"", APP_SOURCE):
        used |= {f"label_{text}", f"info_{text}"}
    for step, keys in re.findall(r"step_intro\(i18n, (\d+)((?:, \"[a-z0-9_]+\")*)\)", APP_SOURCE):
        used |= {f"step{step}_title", *re.findall(r"\"([a-z0-9_]+)\"", keys)}
    assert len(used) > 60
    missing = used - set(TRANSLATIONS["en"])
    assert not missing


def test_every_error_code_category_and_party_is_translated() -> None:
    en = TRANSLATIONS["en"]
    for code in (*backend.ERROR_CODES, "keygen_failed"):
        assert f"err_{code}" in en, code
    for field, values in settings.CATEGORY_VALUES.items():
        keys = {strings.category_key(field, v) for v in values}
        assert len(keys) == len(values), f"category keys of {field} collide"
        assert keys <= set(en)
    for party in settings.PARTIES:
        assert f"party_{party}" in en
    for field in app.ASSET_FIELDS:
        assert f"asset_{field}" in en


def test_truthful_texts() -> None:
    zh, en = TRANSLATIONS["zh"], TRANSLATIONS["en"]
    everything = json.dumps(TRANSLATIONS, ensure_ascii=False)
    # The product's claims that do not hold for this code are gone; no internal names shown.
    assert "共同生成" not in everything
    assert "所有三方都解密其份额" not in zh["step4_body"]
    assert "CLIENT_KEYS_DIR" not in everything and "FHE_" not in everything
    # Where the key and the clear inputs are, in the notice shown outside any accordion.
    assert "process serving this page, on its host" in en["privacy_notice"]
    assert "in clear" in en["privacy_notice"] and "your own computer" in en["privacy_notice"]
    assert "运行本页面的进程" in zh["privacy_notice"] and "明文" in zh["privacy_notice"]
    assert "自己的电脑" in zh["privacy_notice"]
    assert "从不发送" in zh["step1_body"] and "never sent" in en["step1_body"]
    assert "同一把" in zh["step2_body"] and "same client-side secret key" in en["step2_body"]
    assert "只有一把私钥" in zh["step4_body"] and "single secret key" in en["step4_body"]
    # Step 4 speaks of the single-key steps and points to the three-party mode below, where
    # each party does hold a share (no text denies what the three-party section says).
    assert "在步骤1至步骤5中" in zh["step4_body"] and "In Steps 1 to 5" in en["step4_body"]
    assert "三方模式" in zh["step4_body"] and "three-party mode" in en["step4_body"]
    assert "没有任何一方持有" not in everything and "no party holds" not in everything
    # The seed's link to scikit-learn's DecisionTreeClassifier, in both languages.
    link = "sklearn.tree.DecisionTreeClassifier.html"
    assert link in zh["step3_body"] and link in en["step3_body"]


@pytest.mark.parametrize(
    ("headers", "lang"),
    [
        ({"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}, "zh"),
        ({"Accept-Language": "zh-TW"}, "zh-Hant"),
        ({"Accept-Language": "zh-HK,en;q=0.5"}, "zh-Hant"),
        ({"Accept-Language": "zh-MO"}, "zh-Hant"),
        ({"Accept-Language": "zh-Hant-TW"}, "zh-Hant"),
        ({"Accept-Language": "zh-Hans-HK"}, "zh"),
        ({"Accept-Language": "zh-SG"}, "zh"),
        ({"Accept-Language": "en-US", "cookie": "page_lang=zh-Hant"}, "zh-Hant"),
        ({"accept-language": "zh"}, "zh"),
        ({"Accept-Language": "en-US,en;q=0.9"}, "en"),
        ({"Accept-Language": "fr-FR,zh;q=0.9"}, "en"),
        ({"Accept-Language": ""}, "en"),
        ({"Accept-Language": "zh-CN", "Cookie": "a=1; page_lang=en"}, "en"),
        ({"Accept-Language": "en-US", "cookie": "page_lang=zh"}, "zh"),
        ({"Accept-Language": "en-US", "Cookie": "page_lang=xx; bad cookie"}, "en"),
    ],
)
def test_request_language(headers: dict[str, str], lang: str) -> None:
    assert app.request_language(make_request(headers)) == lang


def test_request_language_without_request() -> None:
    assert app.request_language(None) == "en"


def test_every_chinese_locale_gets_the_chinese_table() -> None:
    tables = strings.gradio_translations()
    for locale in ("zh", "zh-CN", "zh-SG", "zh-Hans"):
        assert tables[locale]["title"] == TRANSLATIONS["zh"]["title"]
    for locale in ("zh-TW", "zh-HK", "zh-MO", "zh-Hant"):
        assert tables[locale]["title"] == TRANSLATIONS["zh-Hant"]["title"]
        assert "審批" in tables[locale]["title"]
    assert tables["en"]["title"] == TRANSLATIONS["en"]["title"]
    # The page's gr.I18n: each script's table with the three-party section in that script.
    i18n_tables = app.make_i18n().translations
    assert i18n_tables["zh-TW"]["tp_title"] == TRANSLATIONS["zh-Hant"]["tp_title"]
    assert i18n_tables["zh-CN"]["tp_title"] == TRANSLATIONS["zh"]["tp_title"]
