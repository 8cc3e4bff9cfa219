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
from helpers_server import ScriptedServer

import app
import backend
import settings

APP_SOURCE = Path(app.__file__).read_text(encoding="utf-8")
ZH_REQUEST = {"accept-language": "zh-CN,zh;q=0.9,en;q=0.8"}
EN_REQUEST = {"accept-language": "en-US,en;q=0.9,zh;q=0.5"}


def make_request(headers: dict[str, str], session_hash: str = "test-session") -> gr.Request:
    return gr.Request(headers=headers, session_hash=session_hash)


APPLICANT_VALUES = (
    ["own_car", "mobile_phone"],  # assets
    0,  # num_children
    2,  # household_size
    57000.0,  # total_income
    44,  # age
    "Working",
    "Secondary",
    "Married",
    "Laborers",
    "House / apartment",
)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ScriptedServer]:
    """Make backend.new_client() build clients on the scripted server, keys under tmp_path."""
    server = ScriptedServer(accept_inputs=True)
    monkeypatch.setattr(settings, "CLIENT_KEYS_DIR", tmp_path / "keys")

    def new_client(server_url: str | None = None, keys_root: Path | None = None) -> Any:
        return backend.CreditScoringClient(
            "http://fhe.test",
            key_dir=tmp_path / "keys" / f"k{len(server.requests)}",
            transport=httpx.MockTransport(server),
        )

    monkeypatch.setattr(backend, "new_client", new_client)
    yield server


def error_of(call: Any) -> str:
    with pytest.raises(gr.Error) as caught:
        call()
    message = caught.value.message
    assert "Traceback" not in message
    return message


# ---------------------------------------------------------------------------------------------
# Translations
# ---------------------------------------------------------------------------------------------
def test_both_languages_have_every_key_and_no_empty_string() -> None:
    assert set(app.TRANSLATIONS) == {"en", "zh"}
    en, zh = app.TRANSLATIONS["en"], app.TRANSLATIONS["zh"]
    assert set(en) == set(zh)
    for lang, table in app.TRANSLATIONS.items():
        for key, text in table.items():
            assert isinstance(text, str) and text.strip(), f"{lang}:{key} is empty"


def test_placeholders_are_the_same_in_both_languages() -> None:
    def fields(text: str) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name}

    en, zh = app.TRANSLATIONS["en"], app.TRANSLATIONS["zh"]
    for key in en:
        assert fields(en[key]) == fields(zh[key]), key


def test_chinese_table_is_chinese() -> None:
    zh = app.TRANSLATIONS["zh"]
    han = re.compile(r"[\u4e00-\u9fff]")
    for key, text in zh.items():
        if key in ("list_separator",):
            continue
        assert han.search(text), f"zh:{key} has no Chinese character: {text!r}"


def test_every_key_used_in_app_is_translated() -> None:
    used = set(re.findall(r"i18n\(\"([a-z0-9_]+)\"\)", APP_SOURCE))
    used |= set(re.findall(r"tr\(\s*lang,\s*\"([a-z0-9_]+)\"", APP_SOURCE))
    used |= set(re.findall(r"_step_error\(\s*lang,\s*\"([a-z0-9_]+)\"", APP_SOURCE))
    used |= set(re.findall(r"label_key=\"([a-z0-9_]+)\"", APP_SOURCE))
    for text in re.findall(r"field_slider\(field=\"[a-z_]+\", text=\"([a-z0-9_]+)\"", APP_SOURCE):
        used |= {f"label_{text}", f"info_{text}"}
    for step, keys in re.findall(r"step_intro\((\d+)((?:, \"[a-z0-9_]+\")*)\)", APP_SOURCE):
        used |= {f"step{step}_title", *re.findall(r"\"([a-z0-9_]+)\"", keys)}
    assert len(used) > 60
    missing = used - set(app.TRANSLATIONS["en"])
    assert not missing


def test_every_error_code_category_and_party_is_translated() -> None:
    en = app.TRANSLATIONS["en"]
    for code in backend.ERROR_CODES:
        assert f"err_{code}" in en, code
    for field, values in settings.CATEGORY_VALUES.items():
        keys = {app.category_key(field, v) for v in values}
        assert len(keys) == len(values), f"category keys of {field} collide"
        assert keys <= set(en)
    for party in settings.PARTIES:
        assert f"party_{party}" in en
    for field in app.ASSET_FIELDS:
        assert f"asset_{field}" in en


def test_truthful_texts() -> None:
    zh, en = app.TRANSLATIONS["zh"], app.TRANSLATIONS["en"]
    # The product's claims that do not hold for this code are gone.
    assert "共同生成" not in json.dumps(zh, ensure_ascii=False)
    assert "所有三方都解密其份额" not in zh["step4_body"]
    # What really happens is said in both languages.
    assert "CLIENT_KEYS_DIR" in zh["step1_body"] and "CLIENT_KEYS_DIR" in en["step1_body"]
    assert "从不发送" in zh["step1_body"] and "never sent" in en["step1_body"]
    assert "同一把" in zh["step2_body"] and "same client-side secret key" in en["step2_body"]
    assert "只有一把私钥" in zh["step4_body"] and "single secret key" in en["step4_body"]


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("zh-TW", "zh"),
        ("zh", "zh"),
        ("en-US,en;q=0.9", "en"),
        ("fr-FR,zh;q=0.9", "en"),
        ("", "en"),
    ],
)
def test_request_language(header: str, lang: str) -> None:
    assert app.request_language(make_request({"Accept-Language": header})) == lang
    assert app.request_language(make_request({"accept-language": header})) == lang


def test_request_language_without_request() -> None:
    assert app.request_language(None) == "en"


# ---------------------------------------------------------------------------------------------
# Out-of-order clicks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("headers", "lang"), [(ZH_REQUEST, "zh"), (EN_REQUEST, "en")])
def test_clicks_before_keys_ask_for_keys_in_the_page_language(
    headers: dict[str, str], lang: str
) -> None:
    request = make_request(headers)
    expected = app.tr(lang, "err_order_keys_first")
    calls = [
        lambda: app.send_applicant_step(None, [], *APPLICANT_VALUES, request=request),
        lambda: app.send_bank_step(None, [], 30, request=request),
        lambda: app.send_credit_bureau_step(None, [], "yes", "2-5", request=request),
        lambda: app.run_fhe_step(None, [], request=request),
        lambda: app.get_output_step(None, [], request=request),
        lambda: app.explain_step(None, [], request=request),
    ]
    for call in calls:
        assert error_of(call) == expected
    if lang == "zh":
        assert expected == "请先生成密钥(步骤1)。"


@pytest.mark.slow
def test_out_of_order_clicks_after_keys(scripted: ScriptedServer) -> None:
    zh, en = make_request(ZH_REQUEST), make_request(EN_REQUEST)
    outputs = app.keygen_step(None, request=zh)
    client, stale, evaluation_key = outputs[:3]
    assert isinstance(client, backend.CreditScoringClient) and client.has_keys
    assert stale == [] and evaluation_key.endswith(" B]")
    assert outputs[3:] == ("",) * 7

    # Run before all three inputs.
    message = error_of(lambda: app.run_fhe_step(client, [], request=zh))
    assert message == "请先加密并发送所有三方的输入(步骤2)。缺少:申请人、银行、信用中心。"
    message = error_of(lambda: app.run_fhe_step(client, [], request=en))
    assert message.endswith("Missing: applicant, bank, credit bureau.")

    # Decrypt before run, explain before decrypt.
    assert error_of(lambda: app.get_output_step(client, [], request=zh)) == app.tr(
        "zh", "err_order_run_first"
    )
    assert error_of(lambda: app.explain_step(client, [], request=en)) == app.tr(
        "en", "err_order_decrypt_first"
    )

    # Sending a party clears later outputs and its stale mark.
    outputs = app.send_bank_step(client, ["bank"], 30, request=zh)
    assert outputs[0] == [] and outputs[1].endswith(" B]") and outputs[2:] == ("",) * 4
    outputs = app.send_applicant_step(client, [], *APPLICANT_VALUES, request=zh)
    assert outputs[0] == [] and outputs[1].endswith(" B]")
    message = error_of(lambda: app.run_fhe_step(client, [], request=zh))
    assert message.endswith("缺少:信用中心。")
    app.send_credit_bureau_step(client, [], "no", "5-8", request=zh)
    assert client.sent_parties == set(settings.PARTIES)
    assert scripted.requests.count(("PUT", "/sessions/s1/inputs/bank")) == 1


@pytest.mark.slow
def test_editing_a_sent_input_marks_it_not_sent(scripted: ScriptedServer) -> None:
    zh = make_request(ZH_REQUEST)
    client = app.keygen_step(None, request=zh)[0]

    # Not sent yet: editing changes nothing.
    assert app.mark_bank_edited(client, [], request=zh) == (gr.skip(),) * 6

    app.send_bank_step(client, [], 30, request=zh)
    outputs = app.mark_bank_edited(client, [], request=zh)
    stale, box, *cleared = outputs
    assert stale == ["bank"]
    assert box == app.tr("zh", "not_sent")
    assert cleared == ["", "", "", ""]
    # Already marked: nothing more to do.
    assert app.mark_bank_edited(client, stale, request=zh) == (gr.skip(),) * 6

    app.send_applicant_step(client, stale, *APPLICANT_VALUES, request=zh)
    app.send_credit_bureau_step(client, stale, "yes", "2-5", request=zh)
    for step in (app.run_fhe_step, app.get_output_step, app.explain_step):
        message = error_of(lambda step=step: step(client, stale, request=zh))
        assert message == app.tr("zh", "err_inputs_changed", parties="银行")
    en_message = error_of(
        lambda: app.run_fhe_step(client, ["bank"], request=make_request(EN_REQUEST))
    )
    assert "bank" in en_message and "Step 2" in en_message

    # Sending it again clears the mark.
    assert app.send_bank_step(client, stale, 31, request=zh)[0] == []


@pytest.mark.slow
def test_server_errors_are_translated(scripted: ScriptedServer) -> None:
    zh, en = make_request(ZH_REQUEST), make_request(EN_REQUEST)
    client = app.keygen_step(None, request=zh)[0]
    for party_step, values in (
        (app.send_applicant_step, APPLICANT_VALUES),
        (app.send_bank_step, (30,)),
        (app.send_credit_bureau_step, ("yes", "2-5")),
    ):
        party_step(client, [], *values, request=zh)

    scripted.next = httpx.Response(503, json={"detail": "queue full"}, headers={"Retry-After": "7"})
    assert (
        error_of(lambda: app.run_fhe_step(client, [], request=zh)) == "服务器正忙,请在 7 秒后重试。"
    )
    assert error_of(lambda: app.run_fhe_step(client, [], request=en)).startswith(
        "The server is busy"
    )

    scripted.next = httpx.Response(200, json={"fhe_execution_time": 0.25})
    assert app.run_fhe_step(client, [], request=zh) == ("0.25", "", "", "")

    scripted.next = httpx.Response(404, json={"detail": "unknown or expired session"})
    message = error_of(lambda: app.get_output_step(client, [], request=zh))
    assert message == app.tr("zh", "err_not_found")
    # The session is gone: the page now asks for new keys.
    assert error_of(lambda: app.run_fhe_step(client, [], request=zh)) == app.tr(
        "zh", "err_order_keys_first"
    )


@pytest.mark.slow
def test_invalid_values_are_refused_before_sending(scripted: ScriptedServer) -> None:
    zh, en = make_request(ZH_REQUEST), make_request(EN_REQUEST)
    client = app.keygen_step(None, request=zh)[0]
    before = len(scripted.requests)
    assert error_of(lambda: app.send_bank_step(client, [], None, request=zh)).startswith(
        "输入值无效。"
    )
    message = error_of(lambda: app.send_credit_bureau_step(client, [], "maybe", "2-5", request=zh))
    assert message.startswith("输入值无效。")
    values = list(APPLICANT_VALUES)
    values[4] = 500  # age, out of the data's range
    message = error_of(lambda: app.send_applicant_step(client, [], *values, request=en))
    assert message.startswith("Invalid input value.") and "age" in message
    assert len(scripted.requests) == before


@pytest.mark.slow
def test_unexpected_errors_show_a_generic_message(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    zh = make_request(ZH_REQUEST)
    client = app.keygen_step(None, request=zh)[0]

    def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyError("internal detail")

    monkeypatch.setattr(backend, "pre_process_encrypt_send_bank", boom)
    message = error_of(lambda: app.send_bank_step(client, [], 30, request=zh))
    assert message == app.tr("zh", "err_unexpected")
    assert "internal detail" not in message


@pytest.mark.slow
def test_keygen_failure_removes_the_new_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    created: list[backend.CreditScoringClient] = []

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    def new_client(server_url: str | None = None, keys_root: Path | None = None) -> Any:
        client = backend.CreditScoringClient(
            "http://fhe.test", key_dir=tmp_path / "k", transport=httpx.MockTransport(unreachable)
        )
        created.append(client)
        return client

    monkeypatch.setattr(backend, "new_client", new_client)
    message = error_of(lambda: app.keygen_step(None, request=make_request(ZH_REQUEST)))
    assert message == app.tr("zh", "err_unreachable")
    assert not created[0].key_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("explanation", "zh_text", "en_text"),
    [
        (
            backend.Explanation("already_approved", "2-5", None),
            "申请已经很可能获批:无需解释,也没有运行FHE计算。",
            "The application is already likely approved: nothing to explain, and no FHE "
            "computation was run.",
        ),
        (
            backend.Explanation("years_needed", "8-11", 1.234),
            "在职(是)且工作年限为“8-11年”时最有可能获批,这是从您所选区间起最少的年限。"
            "(FHE执行时间:1.23 秒)",
            "With employed = yes, the fewest years employed, from the bin you chose, that would "
            "most likely lead to approval: 8-11 years. (FHE execution time: 1.23 s)",
        ),
        (
            backend.Explanation("no_change", None, 2.0),
            "仅靠工作年限(在职=是)无法改变结果:从您所选区间起,每个工作年限区间都很可能被拒绝。"
            "(FHE执行时间:2.00 秒)",
            "No number of years employed alone (with employed = yes) would change the outcome: "
            "every bin from the one you chose is likely refused. (FHE execution time: 2.00 s)",
        ),
    ],
)
def test_explain_answers_in_both_languages(
    explanation: backend.Explanation,
    zh_text: str,
    en_text: str,
    scripted: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = app.keygen_step(None, request=make_request(ZH_REQUEST))[0]
    monkeypatch.setattr(backend, "explain_encrypt_run_decrypt", lambda _client: explanation)
    assert app.explain_step(client, [], request=make_request(ZH_REQUEST)) == zh_text
    assert app.explain_step(client, [], request=make_request(EN_REQUEST)) == en_text


@pytest.mark.slow
def test_session_end_removes_the_keys(scripted: ScriptedServer) -> None:
    request = make_request(EN_REQUEST, session_hash="tab-1")
    client = app.keygen_step(None, request=request)[0]
    assert client.key_dir.is_dir()
    app.end_session(request)
    assert not client.key_dir.exists()
    assert ("DELETE", "/sessions/s1") in scripted.requests
    # The state's delete callback (later) and a second close are harmless.
    app.discard_client(client)
    app.discard_client(None)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_config() -> dict[str, Any]:
    return app.build_demo().get_config_file()


def test_build_demo_has_every_step_element(demo_config: dict[str, Any]) -> None:
    elem_ids = {c["props"].get("elem_id") for c in demo_config["components"]}
    for elem_id in (
        "logo",
        "title",
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
    api_names = {d.get("api_name") for d in demo_config["dependencies"]}
    assert {
        "keygen_send",
        "pre_process_encrypt_send_applicant",
        "pre_process_encrypt_send_bank",
        "pre_process_encrypt_send_credit_bureau",
        "run_fhe",
        "get_output_and_decrypt",
        "explain_encrypt_run_decrypt",
    } <= api_names


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


def test_no_remote_url_in_the_page(demo_config: dict[str, Any]) -> None:
    text = json.dumps(demo_config, default=str) + json.dumps(app.TRANSLATIONS)
    assert "https://" not in text and "http://" not in text
    sources = re.findall(r"src=\\?[\"']([^\"'\\]+)", text)
    assert len(sources) == 2
    assert all(src.startswith("data:image/svg+xml;base64,") for src in sources)
    for svg in (settings.STATIC_DIR / "logo.svg", settings.STATIC_DIR / "parties_server.svg"):
        content = svg.read_text(encoding="utf-8")
        # The only "http" is the SVG namespace name, which is never fetched.
        assert content.count("http") == content.count('xmlns="http://www.w3.org/2000/svg"') == 1
        assert 'href="http' not in content and "url(http" not in content


def test_importing_app_does_no_work() -> None:
    # No child process (FHE server), no client, no page built or served.
    code = (
        "import psutil, app; "
        "assert psutil.Process().children() == []; "
        "assert not app._LIVE_CLIENTS; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=settings.REPO_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Starting the FHE server
# ---------------------------------------------------------------------------------------------
def test_wait_for_health_fails_clearly_when_nothing_answers() -> None:
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeError, match="did not become healthy within 0.5 s"):
        app.wait_for_health(url, timeout=0.5)


def test_wait_for_health_fails_clearly_when_the_server_exits() -> None:
    from conftest import free_port

    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    with pytest.raises(RuntimeError, match="exited with code 3"):
        app.wait_for_health(f"http://127.0.0.1:{free_port()}", process, timeout=5)


def test_start_fhe_server_refuses_a_busy_port() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(RuntimeError, match="already in use"):
            app.start_fhe_server(port)
