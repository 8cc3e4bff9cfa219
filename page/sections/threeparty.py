"""The three-party mode's section: one button runs the three parties as separate processes.

Its layout (title, intro, why it is unavailable, the button, the progress table, the fused
verdict and the explanation, what each process holds), its handlers (the run's check and the run
itself, counted as a key generation), and ``render``, which writes what the processes reported
in the page's language. The run itself is ``page.threeparty_runs``; the server it talks to is
the supervisor's child (``app.main``) or THREEPARTY_SERVER_URL (``page.config``). Its texts are
the ``tp_*`` keys of page/locales/<lang>.json.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import httpx

from contracts.parties import RECIPIENTS
from fhe_server.launcher import ServerStartError, wait_for_health
from page.language import table_units
from page.runtime import PageRuntime, page_errors, plain, request_language, tr
from page.sections.base import PRIVATE, Parts, SectionHandlers
from page.strings import explanation_text
from page.threeparty_runs import (
    ROLES,
    FlowState,
    party_fields,
    run_parties,
    unavailable_reason,
)

logger = logging.getLogger(__name__)

Translate = Callable[..., str]
# The progress table's rows: (the step a party reports, the row's text key).
TABLE_ROWS = (
    ("joined", "tp_row_joined"),
    ("round1", "tp_row_round1"),
    ("chain_verified", "tp_row_chain"),
    ("key_confirmed", "tp_row_confirmed"),
    ("uploaded", "tp_row_uploaded"),
    ("evaluated", "tp_row_evaluated"),
    ("verified", "tp_row_verified"),
    ("partial_decrypted", "tp_row_partial"),
)
# A party's error code -> the message key.
ERROR_KEYS = {"timeout": "tp_err_party_timeout", "invalid_field": "err_invalid_field"}


# ---------------------------------------------------------------------------------------------
# What the processes reported, in the page's language
# ---------------------------------------------------------------------------------------------
def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def _cell(state: FlowState, role: str, step: str, lang: str, translate: Translate) -> str:
    """One cell of the progress table: what ``role`` reported for ``step``."""
    event = state.events[role].get(step)
    if event is None:
        return "…" if not state.errors else "—"
    if step == "joined":
        return f"`{event['fingerprint']}`"
    if step == "round1":
        return f"{event['seconds']:.2f} s, ↑ {_megabytes(event['uploaded'])}"
    if step in ("chain_verified", "key_confirmed"):
        return "✓"
    if step == "verified":
        return f"✓ {event['seconds']:.2f} s"
    if step == "uploaded":
        sent = f"↑ {_megabytes(event['uploaded'])}"
        if not event.get("own_fields", event["ciphertexts"]):
            return f"{sent}, {translate(lang, 'tp_no_ciphertext')}"
        return sent
    if step == "evaluated":
        return f"{event['evaluation_seconds']:.2f} s"
    if step == "partial_decrypted":
        names = translate(lang, "list_separator").join(
            translate(lang, f"party_{r}") for r in event["sent_to"]
        )
        return f"{names} ({_megabytes(event['partial_bytes'])})"
    return ""


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(state: FlowState, lang: str, translate: Translate) -> str:
    """The progress table: one column per party, one row per step, then verdicts and traffic."""
    header = [translate(lang, "tp_step")]
    header += [translate(lang, f"party_{r}").capitalize() for r in ROLES]
    rows = [_row(header), "|" + "---|" * len(header)]
    for step, key in TABLE_ROWS:
        rows.append(
            _row([translate(lang, key)] + [_cell(state, r, step, lang, translate) for r in ROLES])
        )
    verdicts = []
    for role in ROLES:
        event = state.events[role].get("verdict")
        if role not in RECIPIENTS:
            verdicts.append(translate(lang, "tp_not_recipient"))
        elif event is None:
            verdicts.append("…")
        else:
            verdicts.append(
                translate(lang, "verdict_approved" if event["approved"] else "verdict_refused")
            )
    rows.append(_row([translate(lang, "tp_row_verdict"), *verdicts]))
    traffic = []
    for role in ROLES:
        last = next(reversed(state.events[role].values()), None)
        traffic.append(
            f"↑ {_megabytes(last['bytes_up'])} / ↓ {_megabytes(last['bytes_down'])}"
            if last and "bytes_up" in last
            else "…"
        )
    rows.append(_row([translate(lang, "tp_row_traffic"), *traffic]))
    return "\n".join(rows)


def render(
    state: FlowState, lang: str, translate: Translate = tr, employed: bool = True
) -> tuple[str, str, str]:
    """The progress table, the verdict and the explanation in the page's language.

    Args:
        state: what the processes reported.
        lang: the page's language.
        translate: the page's ``tr``.
        employed: the credit bureau's employed field (the explanation names what changes).
    """
    verdict = explanation = ""
    fused = [state.events[r].get("verdict") for r in RECIPIENTS]
    if all(fused):
        first = fused[0]
        assert first is not None
        verdict = translate(lang, "verdict_approved" if first["approved"] else "verdict_refused")
        explanation = explanation_text(
            lang,
            approved=bool(first["approved"]),
            years=first.get("fewest_years_employed"),
            employed=employed,
        )
    return table_units(_table(state, lang, translate), lang), verdict, explanation


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------
def three_party_admission(runtime: PageRuntime) -> Callable[[gr.Request, bool], None]:
    """The three-party section's gate: a run makes three key sets, so it counts as key generation.

    The returned ``admit(request, checking)`` counts the run in the section's check event
    (``checking``: no outputs, so a refusal marks none), and in the run itself only when no
    check admitted it.

    Raises (from the returned function):
        gr.Error: the client's key-generation rate limit is reached (nothing runs).
    """

    def admit(request: gr.Request, checking: bool = False) -> None:
        with page_errors(request_language(request)):
            if checking:
                runtime.admit("keygen", request)
            else:
                runtime.use_admission("keygen", request)

    return admit


def _error(lang: str, text: str) -> gr.Error:
    return gr.Error(text, title=tr(lang, "error_title"), print_exception=False)


class ThreePartyHandlers(SectionHandlers):
    """The three-party run's check and the run."""

    def check_threeparty(self, request: gr.Request) -> None:
        """The run's check (no outputs): the client's key-generation rate."""
        three_party_admission(self.runtime)(request, True)

    def _server_ready(self, url: str) -> bool:
        """Whether the three-party server answers, waiting for a start under way."""
        config = self.runtime.config.threeparty
        if config.server_url:  # run elsewhere
            try:
                wait_for_health(url, timeout=config.start_timeout, name="the three-party server")
            except ServerStartError:
                return False
            return True
        ready = self.runtime.threeparty_ready  # the supervisor's child, if the page started one
        return ready is not None and ready(config.start_timeout)

    def run_threeparty(
        self, fields: dict[str, dict[str, Any]], request: gr.Request
    ) -> Iterator[tuple[str, str, str]]:
        """Run the three parties on ``fields`` ({role: its fields}); yield the outputs as they come.

        Yields:
            (progress table, fused verdict, explanation), in the request's language.

        Raises:
            gr.Error: the run is refused (rate limit, mode unavailable, server down), did not
                finish in time, or a party stopped.
        """
        three_party_admission(self.runtime)(request, False)
        lang = request_language(request)
        config = self.runtime.config.threeparty
        problem = unavailable_reason(config.python, config.probe_timeout)
        url = config.server_url or config.local_url
        if problem is None and not self._server_ready(url):
            problem = ("tp_server_down", url)
        if problem is not None:
            raise _error(lang, f"{tr(lang, 'tp_unavailable')} {tr(lang, problem[0])}")
        keys_root = self.runtime.settings.client_keys_dir / f"threeparty-{secrets.token_hex(8)}"
        state = FlowState()
        try:
            for state in run_parties(config, url, fields, keys_root):
                yield render(state, lang, tr, fields["credit_bureau"]["employed"])
        except (TimeoutError, httpx.HTTPError) as error:
            logger.warning("three-party run failed: %r", error)
            seconds = f"{config.flow_timeout:g}"
            raise _error(lang, tr(lang, "tp_err_timeout", seconds=seconds)) from None
        if state.errors:
            role, (code, detail) = next(iter(state.errors.items()))
            key = ERROR_KEYS.get(code, "tp_err_failed")
            raise _error(lang, tr(lang, key, party=tr(lang, f"party_{role}"), detail=detail))


# ---------------------------------------------------------------------------------------------
# Layout and events
# ---------------------------------------------------------------------------------------------
def layout(parts: Parts) -> None:
    """Add the section (after Step 5): it says why when the mode is unavailable here."""
    i18n = parts.i18n
    config = parts.runtime.config.threeparty
    gr.Markdown(i18n("tp_title"), elem_id="tp-title")
    gr.Markdown("<hr />")
    gr.Markdown(i18n("tp_intro"))
    reason = unavailable_reason(config.python, config.probe_timeout)
    if reason is not None:
        key, detail = reason
        gr.Markdown(i18n("tp_unavailable"), elem_id="tp-unavailable")
        gr.Markdown(i18n(key))
        gr.Markdown(f"`{detail}`")
    parts.add(
        tp_button=gr.Button(
            i18n("tp_btn_run"),
            elem_id="tp-run-button",
            variant="primary",
            interactive=reason is None,
        ),
        tp_progress=gr.Markdown(elem_id="tp-progress", label=i18n("tp_label_progress")),
        tp_verdict=gr.Textbox(
            label=i18n("tp_label_verdict"), max_lines=1, interactive=False, elem_id="tp-verdict"
        ),
        tp_explanation=gr.Textbox(
            label=i18n("tp_label_explain"), interactive=False, elem_id="tp-explain"
        ),
    )
    gr.Markdown(i18n("tp_holdings"), elem_id="tp-holdings")


def wire(parts: Parts, steps: ThreePartyHandlers) -> None:
    """The button: its check (no outputs, then the limits line), then the run.

    The run reads the party fields of Step 2 (``page.sections.inputs``) as they are now.
    """
    applicant, bank = list(parts["applicant_inputs"]), list(parts["bank_inputs"])
    bureau = list(parts["bureau_inputs"])

    def run(values: dict[Any, Any], request: gr.Request) -> Iterator[tuple[str, str, str]]:
        fields = party_fields(
            [values[c] for c in applicant], [values[c] for c in bank], [values[c] for c in bureau]
        )
        yield from steps.run_threeparty(fields, request)

    checked = parts["tp_button"].click(
        plain(steps.check_threeparty), None, None, show_progress="hidden", **PRIVATE
    )
    checked.success(
        run,
        inputs={*applicant, *bank, *bureau},  # a set: run gets a dict
        outputs=[parts["tp_progress"], parts["tp_verdict"], parts["tp_explanation"]],
        **PRIVATE,
    )
    checked.success(**parts.refresh_limits(steps.limits_text))
