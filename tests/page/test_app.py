"""The Gradio page's handlers, translations and layout (app.py), without a browser.

Handlers that need keys use a client whose HTTP transport is a scripted mock server (no FHE
server process); key generation itself is real.
"""

from __future__ import annotations

import json
import re
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest

import app
import backend
import page.runtime
import settings
from page import strings
from page.limits import Admissions, LimitExceeded, RateLimiter
from tests.support.applications import EXAMPLE_PROFILE, page_values
from tests.support.servers import ScriptedServer

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
    return gr.Request(headers=headers, session_hash=session_hash)


# The example application's applicant as the page's components hold it.
APPLICANT_VALUES = page_values(EXAMPLE_PROFILE.applicant)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[app.PageRuntime]:
    """A page runtime whose keys live under tmp_path (key generation in this process)."""
    page_runtime = app.PageRuntime(settings.ClientSettings(client_keys_dir=tmp_path / "keys"))
    page_runtime.key_folders.open()
    yield page_runtime
    page_runtime.close()


@pytest.fixture
def scripted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[ScriptedServer, app.PageSteps]]:
    """The page's steps with clients on the scripted server, keys under tmp_path."""
    server = ScriptedServer(accept_inputs=True)

    def new_client(key_dir: Path) -> backend.CreditScoringClient:
        return backend.CreditScoringClient(
            "http://fhe.test", key_dir=key_dir, transport=httpx.MockTransport(server)
        )

    page_runtime = app.PageRuntime(
        settings.ClientSettings(client_keys_dir=tmp_path / "keys"), client_factory=new_client
    )
    page_runtime.key_folders.open()
    yield server, app.PageSteps(page_runtime)
    page_runtime.close()


def error_of(call: Any) -> str:
    with pytest.raises(gr.Error) as caught:
        call()
    message = caught.value.message
    assert "Traceback" not in message
    return message


def tr(lang: str, key: str, **values: Any) -> str:
    return strings.tr(lang, key, **values)


# ---------------------------------------------------------------------------------------------
# Translations
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Limits (page/limits.py)
# ---------------------------------------------------------------------------------------------
def test_rate_limiter_counts_per_client_in_a_sliding_window() -> None:
    now = [0.0]
    limiter = RateLimiter(limit=2, window=10.0, clock=lambda: now[0])
    limiter.acquire("a", "err_rate_steps")
    limiter.acquire("a", "err_rate_steps")
    limiter.acquire("b", "err_rate_steps")
    with pytest.raises(LimitExceeded) as caught:
        limiter.acquire("a", "err_rate_steps")
    assert caught.value.key == "err_rate_steps" and caught.value.values == {"seconds": 10}
    now[0] = 10.5
    limiter.acquire("a", "err_rate_steps")


@pytest.mark.parametrize(
    ("setting", "host", "proxies", "local"),
    [
        ("auto", "127.0.0.1", 0, True),
        ("auto", "127.0.1.1", 0, True),
        ("auto", "localhost", 0, True),
        ("auto", "::1", 0, True),
        ("auto", "127.0.0.1", 1, False),  # a proxy on the same host makes the page public
        ("auto", "0.0.0.0", 0, False),
        ("auto", "192.168.1.5", 0, False),
        ("public", "127.0.0.1", 0, False),
        ("local", "0.0.0.0", 0, True),
    ],
)
def test_limits_fit_where_the_page_listens(
    setting: str, host: str, proxies: int, local: bool, tmp_path: Path
) -> None:
    page_settings = settings.ClientSettings(
        client_keys_dir=tmp_path / "keys",
        page_limits=setting,
        page_host=host,
        page_trusted_proxies=proxies,
        page_keygen_per_client=3,
    )
    runtime = app.PageRuntime(page_settings)
    request = make_request(EN_REQUEST)
    for _ in range(10 if local else 3):
        runtime.admit("keygen", request)
    if local:
        assert runtime.limits_text("en", request) == tr("en", "limits_local", host=host)
        assert "本机" in runtime.limits_text("zh", request)
    else:
        with pytest.raises(LimitExceeded):
            runtime.admit("keygen", request)
        assert "0 key generations" in runtime.limits_text("en", request)


def test_admissions_are_used_once_and_forgotten_when_old() -> None:
    now = [0.0]
    admissions = Admissions(max_age=60.0, clock=lambda: now[0])
    admissions.add("tab", "steps")
    admissions.add("tab", "steps")
    assert admissions.take("tab", "steps") and admissions.take("tab", "steps")
    assert not admissions.take("tab", "steps") and not admissions.take("other", "steps")
    admissions.add("tab", "keygen")
    admissions.add("tab", "steps")  # after a take emptied the list: no error
    now[0] = 61.0
    assert not admissions.take("tab", "keygen")  # too old
    admissions.add("tab", "steps")
    assert admissions.take("tab", "steps") and not admissions.take("tab", "steps")


def test_limits_line_counts_down_and_a_check_admits_its_step_once(tmp_path: Path) -> None:
    page_settings = settings.ClientSettings(
        client_keys_dir=tmp_path / "keys",
        page_limits="public",
        page_keygen_per_client=2,
        page_steps_per_client=5,
        page_rate_window_seconds=600,
    )
    runtime = app.PageRuntime(page_settings)
    request = make_request(ZH_REQUEST, session_hash="tab-a")
    left = runtime.limits_text("zh", request)
    assert "接下来的 10 分钟内还可以生成密钥 2 次" in left and "执行步骤 5 次" in left
    runtime.admit("steps", request)  # the check
    runtime.use_admission("steps", request)  # its step: not counted again
    assert "执行步骤 4 次" in runtime.limits_text("zh", request)
    runtime.use_admission("steps", request)  # a step called without its check counts itself
    assert "Left for your address" in runtime.limits_text("en", request)
    assert "3 steps" in runtime.limits_text("en", request)


@pytest.mark.parametrize(
    ("forwarded", "trusted", "expected"),
    [
        (None, 0, "10.0.0.9"),
        ("1.2.3.4", 0, "10.0.0.9"),  # not behind a proxy: the header is anyone's to write
        ("1.2.3.4", 1, "1.2.3.4"),
        ("6.6.6.6, 1.2.3.4", 1, "1.2.3.4"),  # the client wrote the first entry itself
        ("6.6.6.6, 1.2.3.4, 10.1.1.1", 2, "1.2.3.4"),
        ("1.2.3.4", 2, "10.0.0.9"),  # fewer entries than proxies: not trusted
    ],
)
def test_client_address(forwarded: str | None, trusted: int, expected: str) -> None:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    assert app.client_address(headers, "10.0.0.9", trusted) == expected


class FakeClient:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_session_registry_caps_and_expires_sessions() -> None:
    now = [0.0]
    registry = app.SessionRegistry(
        max_sessions=2, ttl=100.0, no_heartbeat_ttl=10.0, clock=lambda: now[0]
    )
    first, second = FakeClient(), FakeClient()
    registry.reserve("s1")
    registry.register("s1", first)
    registry.reserve("s2")
    with pytest.raises(LimitExceeded) as caught:
        registry.reserve("s3")
    assert caught.value.key == "err_page_full" and caught.value.values == {"limit": 2}
    registry.register("s2", second)
    registry.reserve("s1")  # a session generating new keys keeps its own slot
    registry.release("s1")
    registry.heartbeat_opened("s2")
    now[0] = 11.0
    assert registry.expire() == 1  # s1 never opened a heartbeat
    assert first.closed == 1 and second.closed == 0 and len(registry) == 1
    assert registry.holds("s2", second) and not registry.holds("s1", first)
    now[0] = 110.0
    assert registry.expire() == 0  # s2 was used at 11 s
    now[0] = 111.1
    assert registry.expire() == 1 and second.closed == 1


def test_key_folders_of_a_dead_process_are_removed(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    living = app.KeyFolders(keys_dir)
    living_root = living.open()
    (living_root / "session").mkdir()
    # A folder of an older layout and one whose owner died (its lock is free).
    (keys_dir / "0123abcd").mkdir()
    (keys_dir / "0123abcd" / "keys").write_bytes(b"secret")
    dead = keys_dir / "page-1-dead"
    dead.mkdir()
    (dead / ".owner.lock").touch()
    second = app.KeyFolders(keys_dir)
    second.open()
    assert not (keys_dir / "0123abcd").exists() and not dead.exists()
    assert (living_root / "session").is_dir()  # its owner holds the lock
    living.close()
    second.close()
    assert list(keys_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Out-of-order clicks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("headers", "lang"), [(ZH_REQUEST, "zh"), (EN_REQUEST, "en")])
def test_clicks_before_keys_ask_for_keys_in_the_page_language(
    headers: dict[str, str], lang: str, runtime: app.PageRuntime
) -> None:
    request = make_request(headers)
    steps = app.PageSteps(runtime)
    expected = tr(lang, "err_order_keys_first")
    for step in app.STEPS:
        assert error_of(lambda step=step: app.order_check(step)(None, [], request)) == expected
    calls = [
        lambda: steps.send_applicant(None, [], *APPLICANT_VALUES, request=request),
        lambda: steps.send_bank(None, [], 30, request=request),
        lambda: steps.send_credit_bureau(None, [], "yes", "2-5", request=request),
        lambda: steps.run_fhe(None, [], request=request),
        lambda: steps.get_output(None, [], request=request),
        lambda: steps.explain(None, [], "yes", request=request),
    ]
    for call in calls:
        assert error_of(call) == expected
    if lang == "zh":
        assert expected == "请先生成密钥（步骤1）。"


@pytest.mark.slow
def test_out_of_order_clicks_after_keys(scripted: tuple[ScriptedServer, app.PageSteps]) -> None:
    server, steps = scripted
    zh, en = make_request(ZH_REQUEST), make_request(EN_REQUEST)
    outputs = steps.keygen(None, request=zh)
    client, stale, evaluation_key = outputs[:3]
    assert isinstance(client, backend.CreditScoringClient) and client.has_keys
    assert stale == [] and evaluation_key.endswith(" B]")
    assert outputs[3:] == ("",) * 7

    # Run before all three inputs: the check says so (and so does the step, if called alone).
    message = error_of(lambda: app.order_check("run")(client, [], zh))
    assert message == "请先加密并发送所有三方的输入（步骤2）。缺少：申请人、银行、信用中心。"
    assert error_of(lambda: steps.run_fhe(client, [], request=zh)) == message
    message = error_of(lambda: app.order_check("run")(client, [], en))
    assert message.endswith("Missing: applicant, bank, credit bureau.")

    # Sending a party clears later outputs and its stale mark.
    outputs = steps.send_bank(client, ["bank"], 30, request=zh)
    assert outputs[0] == [] and outputs[1].endswith(" B]") and outputs[2:] == ("",) * 4
    outputs = steps.send_applicant(client, [], *APPLICANT_VALUES, request=zh)
    assert outputs[0] == [] and outputs[1].endswith(" B]")
    message = error_of(lambda: app.order_check("run")(client, [], zh))
    assert message.endswith("缺少：信用中心。")
    steps.send_credit_bureau(client, [], "no", "5-8", request=zh)
    assert client.sent_parties == set(settings.PARTIES)
    assert server.requests.count(("PUT", "/sessions/s1/inputs/bank")) == 1

    # Decrypt before run, explain before decrypt.
    assert error_of(lambda: app.order_check("output")(client, [], zh)) == tr(
        "zh", "err_order_run_first"
    )
    # Past the server's session quota (429, which session creation meets; every step translates it
    # alike) the person is told when to come back, in the page's language.
    server.next = httpx.Response(429, json={"detail": "quota"}, headers={"Retry-After": "12"})
    assert error_of(lambda: steps.run_fhe(client, [], request=zh)) == tr(
        "zh", "err_too_many_sessions_retry", seconds="12"
    )
    server.next = httpx.Response(429, json={"detail": "quota"})
    assert error_of(lambda: steps.run_fhe(client, [], request=en)) == tr(
        "en", "err_too_many_sessions"
    )

    server.next = httpx.Response(200, json={"fhe_execution_time": 0.25})
    assert steps.run_fhe(client, [], request=zh) == ("0.25", "", "", "")
    assert error_of(lambda: app.order_check("explain")(client, [], en)) == tr(
        "en", "err_order_decrypt_first"
    )
    assert app.order_check("output")(client, [], zh) is None


@pytest.mark.slow
def test_editing_a_sent_input_marks_it_not_sent(
    scripted: tuple[ScriptedServer, app.PageSteps],
) -> None:
    _, steps = scripted
    zh = make_request(ZH_REQUEST)
    client = steps.keygen(None, request=zh)[0]

    # Not sent yet: editing changes nothing.
    assert app.mark_bank_edited(client, [], request=zh) == (gr.skip(),) * 6

    steps.send_bank(client, [], 30, request=zh)
    outputs = app.mark_bank_edited(client, [], request=zh)
    stale, box, *cleared = outputs
    assert stale == ["bank"]
    assert box == tr("zh", "not_sent")
    assert cleared == ["", "", "", ""]
    # Already marked: nothing more to do.
    assert app.mark_bank_edited(client, stale, request=zh) == (gr.skip(),) * 6

    steps.send_applicant(client, stale, *APPLICANT_VALUES, request=zh)
    steps.send_credit_bureau(client, stale, "yes", "2-5", request=zh)
    for step in ("run", "output", "explain"):
        message = error_of(lambda step=step: app.order_check(step)(client, stale, zh))
        assert message == tr("zh", "err_inputs_changed", parties="银行")
    en_message = error_of(lambda: steps.run_fhe(client, ["bank"], request=make_request(EN_REQUEST)))
    assert "bank" in en_message and "Step 2" in en_message

    # Sending it again clears the mark.
    assert steps.send_bank(client, stale, 31, request=zh)[0] == []


@pytest.mark.slow
def test_server_errors_are_translated(scripted: tuple[ScriptedServer, app.PageSteps]) -> None:
    server, steps = scripted
    zh, en = make_request(ZH_REQUEST), make_request(EN_REQUEST)
    client = steps.keygen(None, request=zh)[0]
    for party_step, values in (
        (steps.send_applicant, APPLICANT_VALUES),
        (steps.send_bank, (30,)),
        (steps.send_credit_bureau, ("yes", "2-5")),
    ):
        party_step(client, [], *values, request=zh)

    server.next = httpx.Response(503, json={"detail": "queue full"}, headers={"Retry-After": "7"})
    assert (
        error_of(lambda: steps.run_fhe(client, [], request=zh)) == "服务器正忙，请在 7 秒后重试。"
    )
    assert error_of(lambda: steps.run_fhe(client, [], request=en)).startswith("The server is busy")

    server.next = httpx.Response(200, json={"fhe_execution_time": 0.25})
    assert steps.run_fhe(client, [], request=zh) == ("0.25", "", "", "")

    server.next = httpx.Response(404, json={"detail": "unknown or expired session"})
    message = error_of(lambda: steps.get_output(client, [], request=zh))
    assert message == tr("zh", "err_not_found")
    # The session is gone: the page now asks for new keys.
    assert error_of(lambda: steps.run_fhe(client, [], request=zh)) == tr(
        "zh", "err_order_keys_first"
    )


@pytest.mark.slow
def test_invalid_values_are_refused_before_sending(
    scripted: tuple[ScriptedServer, app.PageSteps],
) -> None:
    server, steps = scripted
    zh, en = make_request(ZH_REQUEST), make_request(EN_REQUEST)
    client = steps.keygen(None, request=zh)[0]
    before = len(server.requests)
    expected_zh = tr("zh", "err_invalid_field")
    assert error_of(lambda: steps.send_bank(client, [], None, request=zh)) == expected_zh
    message = error_of(lambda: steps.send_credit_bureau(client, [], "maybe", "2-5", request=zh))
    assert message == expected_zh
    values = list(APPLICANT_VALUES)
    values[4] = 500  # age, out of the data's range
    message = error_of(lambda: steps.send_applicant(client, [], *values, request=en))
    assert message == tr("en", "err_invalid_field")
    assert len(server.requests) == before


@pytest.mark.slow
def test_unexpected_errors_show_a_generic_message(
    scripted: tuple[ScriptedServer, app.PageSteps], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, steps = scripted
    zh = make_request(ZH_REQUEST)
    client = steps.keygen(None, request=zh)[0]

    def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyError("internal detail")

    monkeypatch.setattr(backend, "pre_process_encrypt_send_bank", boom)
    message = error_of(lambda: steps.send_bank(client, [], 30, request=zh))
    assert message == tr("zh", "err_unexpected")
    assert "internal detail" not in message


@pytest.mark.slow
def test_keygen_failure_removes_the_new_client(tmp_path: Path) -> None:
    created: list[backend.CreditScoringClient] = []

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    def new_client(key_dir: Path) -> backend.CreditScoringClient:
        client = backend.CreditScoringClient(
            "http://fhe.test", key_dir=key_dir, transport=httpx.MockTransport(unreachable)
        )
        created.append(client)
        return client

    runtime = app.PageRuntime(
        settings.ClientSettings(client_keys_dir=tmp_path / "keys"), client_factory=new_client
    )
    steps = app.PageSteps(runtime)
    message = error_of(lambda: steps.keygen(None, request=make_request(ZH_REQUEST)))
    assert message == tr("zh", "err_unreachable")
    assert not created[0].key_dir.exists()
    assert len(runtime.registry) == 0
    runtime.close()


@pytest.mark.slow
def test_keygen_limits_refuse_without_keeping_anything(tmp_path: Path) -> None:
    server = ScriptedServer(accept_inputs=True)

    def new_client(key_dir: Path) -> backend.CreditScoringClient:
        return backend.CreditScoringClient(
            "http://fhe.test", key_dir=key_dir, transport=httpx.MockTransport(server)
        )

    runtime = app.PageRuntime(
        settings.ClientSettings(
            client_keys_dir=tmp_path / "keys",
            page_max_sessions=1,
            page_keygen_per_client=2,
            page_limits="public",
        ),
        client_factory=new_client,
    )
    steps = app.PageSteps(runtime)
    first = make_request(EN_REQUEST, session_hash="tab-1")
    client = steps.keygen(None, request=first)[0]
    # The session cap: another session is refused, nothing created.
    message = error_of(lambda: steps.keygen(None, request=make_request(ZH_REQUEST, "tab-2")))
    assert message == "本页面已保存 1 个会话的密钥，已达上限，请几分钟后再试。"
    # The same session may renew its keys once more, then the rate limit refuses it.
    steps.keygen(client, request=first)
    message = error_of(lambda: steps.keygen(client, request=first))
    assert message.startswith("Too many key generations from your address")
    folders = [p for p in runtime.key_folders.root.iterdir() if p.is_dir()]
    assert folders == [client.key_dir]
    assert server.requests.count(("POST", "/sessions")) == 2
    runtime.close()
    assert not client.key_dir.exists()


def test_three_party_runs_count_against_the_key_generation_limit(tmp_path: Path) -> None:
    runtime = app.PageRuntime(
        settings.ClientSettings(
            client_keys_dir=tmp_path / "keys", page_keygen_per_client=2, page_limits="public"
        )
    )
    admit = app.three_party_admission(runtime)
    request = make_request(ZH_REQUEST, session_hash="tab-3")
    admit(request)
    admit(request, True)  # the check counts the run...
    admit(request, False)  # ...and the run itself does not count again
    assert error_of(lambda: admit(request, True)).startswith("您的地址生成密钥的次数过多")
    assert error_of(lambda: admit(request, False)).startswith("您的地址生成密钥的次数过多")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("explanation", "employed", "zh_text", "en_text"),
    [
        (
            backend.Explanation("already_approved", "2-5", None),
            "yes",
            "您的申请已经很可能获批，无需解释。",
            "You would most likely be approved already, so there is nothing to explain.",
        ),
        (
            backend.Explanation("years_needed", "8-11", 1.234),
            "yes",
            "工作年限达到8–11年时，您最有可能获批。",
            "You would most likely be approved with 8–11 years of employment.",
        ),
        # Not employed: the candidate rows are employed = yes, so both changes are named.
        (
            backend.Explanation("years_needed", "2-5", 1.234),
            "no",
            "在职且工作年限达到2–5年时，您最有可能获批。",
            "You would most likely be approved if you were employed, with 2–5 years of employment.",
        ),
        (
            backend.Explanation("no_change", None, 2.0),
            "yes",
            "没有任何一个工作年限区间能让您获批：无论工作年限多长，您的申请都很可能被拒绝。",
            "No candidate gives approval: no number of years of employment would most likely get "
            "you approved.",
        ),
        (
            backend.Explanation("no_change", None, 2.0),
            "no",
            "即使在职，也没有任何一个工作年限区间能让您获批：无论工作年限多长，您的申请都很可能被拒绝。",
            "No candidate gives approval: even if you were employed, no number of years of "
            "employment would most likely get you approved.",
        ),
    ],
)
def test_explain_answers_in_both_languages(
    explanation: backend.Explanation,
    employed: str,
    zh_text: str,
    en_text: str,
    scripted: tuple[ScriptedServer, app.PageSteps],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, steps = scripted
    client = steps.keygen(None, request=make_request(ZH_REQUEST))[0]
    monkeypatch.setattr(page.runtime, "order_problem", lambda *_args: None)
    monkeypatch.setattr(backend, "explain_encrypt_run_decrypt", lambda _client: explanation)
    assert steps.explain(client, [], employed, request=make_request(ZH_REQUEST)) == zh_text
    assert steps.explain(client, [], employed, request=make_request(EN_REQUEST)) == en_text


@pytest.mark.slow
def test_session_end_removes_the_keys(scripted: tuple[ScriptedServer, app.PageSteps]) -> None:
    server, steps = scripted
    request = make_request(EN_REQUEST, session_hash="tab-1")
    client = steps.keygen(None, request=request)[0]
    assert client.key_dir.is_dir()
    steps.end_session(request)
    assert not client.key_dir.exists()
    assert ("DELETE", "/sessions/s1") in server.requests
    # A later step of that session says its keys are gone.
    message = error_of(lambda: steps.send_bank(client, [], 30, request=request))
    assert message == tr("en", "err_order_keys_first")
    # The state's delete callback (later) and a second close are harmless.
    steps.discard_client(client)
    steps.discard_client(None)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------
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
