"""The page's three-party section without a browser: availability, the party fields, its server.

Without ``.venv-threeparty``, or with an interpreter that cannot import openfhe, the section says
why the mode is not available (both languages) and its button is disabled; the single-key page
is unchanged. (The mode itself runs in tests/page/test_browser_threeparty.py.)
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import app
import settings
from contracts.parties import RECIPIENTS
from fhe_server.launcher import free_port
from page import strings, supervisor, threeparty_runs
from page.config import TP_PYTHON, ThreePartyConfig
from page.sections import threeparty as tp_section
from page.threeparty_runs import FlowState, party_fields, unavailable_reason
from threeparty import command


def test_a_missing_environment_is_named() -> None:
    missing = Path("/nonexistent/.venv-threeparty/bin/python")
    assert unavailable_reason(missing) == ("tp_missing_env", str(missing))


def test_an_interpreter_without_openfhe_is_named() -> None:
    # The page's own Python 3.11 has no openfhe: the reason is the import error.
    key, detail = unavailable_reason(Path(sys.executable))
    assert key == "tp_no_openfhe" and "openfhe" in detail


def test_the_page_says_why_and_disables_the_button() -> None:
    missing = ThreePartyConfig(python=Path("/nonexistent/python"))
    runtime = app.PageRuntime(settings.ClientSettings(), threeparty=missing)
    config = app.build_demo(runtime).get_config_file()
    by_id = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    assert by_id["tp-run-button"]["interactive"] is False
    text = json.dumps(config, ensure_ascii=False, default=str)
    assert "tp_unavailable" in text and "tp_missing_env" in text
    for lang in ("en", "zh"):
        assert app.tr(lang, "tp_unavailable") and app.tr(lang, "tp_missing_env")
    # The single-key steps are all there.
    assert {"keygen-button", "run-fhe-button", "explain-button"} <= set(by_id)


def test_party_fields_from_the_page_components() -> None:
    applicant = [["own_car"], 1.0, 3.0, 57000.0, 44.0, "Working", "Higher education",
                 "Married", "Managers", "Rented apartment"]  # fmt: skip
    fields = party_fields(applicant, [30.0], [app.NO, "2-5"])
    assert fields["applicant"]["own_car"] is True and fields["applicant"]["mobile_phone"] is False
    assert fields["applicant"]["num_children"] == 1 and fields["applicant"]["age"] == 44
    assert fields["applicant"]["housing_type"] == "Rented apartment"
    assert fields["bank"] == {"account_age": 30}
    assert fields["credit_bureau"] == {"employed": False, "years_employed": "2-5"}
    assert threeparty_runs.YES == app.YES


def test_a_server_that_cannot_start_is_reported_at_once() -> None:
    if unavailable_reason() is not None:
        pytest.skip(f"three-party mode unavailable: {unavailable_reason()}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The page's supervisor starts the server in the background (as app.main does): the
        # port is taken, so the start fails, and a run waiting for the server learns it at once,
        # without waiting out the whole start-up time-out; no child is left running.
        child = supervisor.threeparty_server(TP_PYTHON, port, start_timeout=120, restart_limit=3)
        everything = supervisor.Supervisor()
        everything.add("threeparty", child)
        started = time.monotonic()
        child.start_in_background()
        try:
            assert child.ready(timeout=120) is False
            assert time.monotonic() - started < 60
            assert child.state == "down" and child.server.process is None
        finally:
            everything.stop()
        assert child.state == "stopped"


def test_chinese_texts_use_full_width_punctuation() -> None:
    han = re.compile(r"[\u4e00-\u9fff]")
    texts = {key: text for key, text in strings.table("zh").items() if key.startswith("tp_")}
    assert len(texts) > 20  # the section's texts are in the locale files
    for key, text in texts.items():
        assert han.search(text), f"zh:{key} has no Chinese character: {text!r}"
        prose = re.sub(r"`[^`]*`|\{[a-z_]+\}", " ", text)
        bad = re.findall(r"[\u4e00-\u9fff][,:;?!()]|[,:;?!()][\u4e00-\u9fff]", prose)
        assert not bad, f"zh:{key} has half-width punctuation {bad}: {text!r}"


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("employed", [True, False])
@pytest.mark.parametrize("fewest", ["2-5", None])
def test_three_party_explanation_has_the_single_key_wording(
    lang: str, employed: bool, fewest: str | None
) -> None:
    state = FlowState()
    for role in RECIPIENTS:
        state.add(role, {"step": "verdict", "approved": False, "fewest_years_employed": fewest})
    _, verdict, explanation = tp_section.render(state, lang, app.tr, employed=employed)
    assert verdict == app.tr(lang, "verdict_refused")
    expected = strings.explanation_text(lang, approved=False, years=fewest, employed=employed)
    assert explanation == expected
    if lang == "zh" and fewest and not employed:
        assert explanation == "在职且工作年限达到2–5年时，您最有可能获批。"


def test_the_page_reads_the_three_party_settings_once_into_its_config() -> None:
    environ = {"THREEPARTY_SERVER_URL": "http://relay.example:9000/", "THREEPARTY_SERVER_PORT": "9"}
    config = ThreePartyConfig.from_environment(environ)
    assert config.server_url == "http://relay.example:9000" and config.port == 9
    assert config.local_url == "http://127.0.0.1:9"
    default = ThreePartyConfig.from_environment({})
    assert default.server_url == "" and default.port == 8001 and default.python == TP_PYTHON
    with pytest.raises(AttributeError):
        default.port = 1  # type: ignore[misc]  # frozen: read once, passed on


def test_the_party_command_line_is_built_in_one_place_without_touching_the_environment() -> None:
    # Importing the builder (the page does) sets nothing: OMP_NUM_THREADS is set where OpenFHE
    # runs, and given to the party processes only.
    probe = (
        "import os; os.environ.pop('OMP_NUM_THREADS', None); "
        "from threeparty import command; "
        "print(os.environ.get('OMP_NUM_THREADS'), command.party_env({})['OMP_NUM_THREADS'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=settings.REPO_DIR, capture_output=True, text=True
    )
    assert done.stdout.split() == ["None", "1"], done.stderr
    line = command.party_command(
        "/py",
        role="bank",
        server_url="http://s",
        invitation="INV",
        keys_dir=Path("/k"),
        wait=5.0,
        peers={"applicant": "F1", "credit_bureau": "F2"},
    )
    assert line == [
        "/py", "-m", "threeparty", "--role", "bank", "--server", "http://s", "--session", "INV",
        "--keys", "/k", "--wait", "5.0", "--peer", "applicant=F1", "--peer", "credit_bureau=F2",
    ]  # fmt: skip
    assert command.identity_command("/py", Path("/k")) == [
        "/py", "-m", "threeparty", "identity", "--keys", "/k",
    ]  # fmt: skip


def test_the_supervisor_restarts_the_three_party_server_and_stops_it() -> None:
    if unavailable_reason() is not None:
        pytest.skip(f"three-party mode unavailable: {unavailable_reason()}")
    everything = supervisor.Supervisor()
    child = everything.add(
        "threeparty",
        supervisor.threeparty_server(TP_PYTHON, free_port(), start_timeout=120, restart_limit=3),
    )
    child.start_in_background()  # as app.main does: the page serves meanwhile
    try:
        assert child.ready(timeout=120), child.state
        first = child.server.process
        assert first is not None
        first.kill()  # dies: the watcher reaps it and starts it again on the same port
        deadline = time.monotonic() + 120
        while child.restarts < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert child.restarts == 1 and child.ready(timeout=120), child.state
        assert first.poll() is not None and child.server.process is not first
        assert everything.states() == {"threeparty": "running"}
    finally:
        everything.stop()
    assert child.state == "stopped" and child.server.process is None
