"""The page's step handlers without a browser (page/runtime.py, page/sections/).

Clicks out of order, edited inputs, server errors in the page's language, invalid values,
unexpected errors, key generation's failures and limits, explain's answers and the end of a
session. Handlers that need keys use a client whose HTTP transport is a scripted mock server
(no FHE server process); key generation itself is real.
"""

from __future__ import annotations

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
from page.strings import tr
from tests.support.applications import EXAMPLE_PROFILE, page_values
from tests.support.page_handlers import (
    EN_REQUEST,
    ZH_REQUEST,
    error_of,
    make_request,
)
from tests.support.servers import ScriptedServer

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
