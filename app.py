"""The five-step Gradio page of the encrypted credit-card approval service, in Chinese and English.

``python app.py`` starts the FHE server (``uvicorn server:app``) as a child process unless
FHE_SERVER_URL names another server, waits for its /health, then serves the page. Its settings
(``settings.ClientSettings``: server, keys folder, the page's limits) come from FHE_* variables
and Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, read once at start and passed in.

The page's process is the client: every browser session gets its own ``CreditScoringClient``
(in a ``gr.State`` and in the ``SessionRegistry``) whose secret key lives in this process and in a
folder under the keys directory, until the session ends, expires or never opened a page.

Limits (page/limits.py, page/guard.py): key generation runs in worker processes; live sessions
holding keys are capped; key generations and steps are rate-limited per client address; Gradio's
queue is bounded; only the page's own event handlers are reachable (no upload, deep link,
monitoring or named API route). Texts live in page/locales/<lang>.json (page/strings.py).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import math
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

import backend
import settings
import threeparty_page
from page import diagram, language, strings
from page.limits import (
    ClientRates,
    KeyFolders,
    LimitExceeded,
    SessionRegistry,
    client_address,
    limits_are_local,
)
from page.strings import category_key, party_list

logger = logging.getLogger(__name__)

INCOME_STEP = 500
ASSET_FIELDS = ("own_car", "own_property", "mobile_phone")
YES, NO = "yes", "no"
# The browser tab's title (Gradio does not translate it): both languages.
PAGE_TITLE = "信用卡审批预测 · Credit-card approval with FHE"
# Seconds a session's gr.State lives after its last update (the registry's TTL decides the keys).
STATE_TTL_SLACK_SECONDS = 60


# ---------------------------------------------------------------------------------------------
# The page's process: settings, sessions, limits
# ---------------------------------------------------------------------------------------------
ClientFactory = Callable[[Path], backend.CreditScoringClient]


class PageRuntime:
    """What the handlers share: settings, the live sessions, the rate limits, the key folders.

    Args:
        client_settings: the page's settings.
        key_generator: where key sets are generated (the worker pool; default: this process).
        client_factory: builds a session's client for a key folder (tests pass a mock server).
    """

    def __init__(
        self,
        client_settings: settings.ClientSettings,
        key_generator: backend.KeyGenerator | None = None,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self.settings = client_settings
        self.registry = SessionRegistry(
            max_sessions=client_settings.page_max_sessions,
            ttl=client_settings.page_session_ttl_seconds,
            no_heartbeat_ttl=client_settings.page_no_heartbeat_ttl_seconds,
        )
        window = client_settings.page_rate_window_seconds
        # On loopback only (a person on their own computer) the per-client rates are off.
        self.limits_local = limits_are_local(
            client_settings.page_limits,
            client_settings.page_host,
            client_settings.page_trusted_proxies,
        )
        self.rates = ClientRates(
            keygens=None if self.limits_local else client_settings.page_keygen_per_client,
            steps=None if self.limits_local else client_settings.page_steps_per_client,
            window=window,
        )
        self.key_folders = KeyFolders(client_settings.client_keys_dir)
        self._client_factory = client_factory or (
            lambda key_dir: backend.new_client(
                client_settings, key_dir=key_dir, key_generator=key_generator
            )
        )
        # Set by the server's supervisor: a message key while the FHE server is down.
        self.server_problem: Callable[[], str | None] = lambda: None

    def open(self) -> None:
        """Take this process's key folder (removing dead pages' folders) and start the reaper."""
        self.key_folders.open()
        self.registry.start_reaper()

    def close(self) -> None:
        """Close every session and remove this process's key folder."""
        logger.info("closing %d session(s) and removing their keys", len(self.registry))
        self.registry.stop_reaper()
        self.registry.close_all()
        self.key_folders.close()

    def new_client(self) -> backend.CreditScoringClient:
        """A client for a new session, its key folder inside this process's folder."""
        if self.key_folders.root is None:
            self.key_folders.open()
        return self._client_factory(self.key_folders.new_folder())

    def client_of(self, request: gr.Request | None) -> str:
        """The client's address for the rate limits."""
        headers = _headers(request)
        peer = getattr(getattr(request, "client", None), "host", None)
        return client_address(headers, peer, self.settings.page_trusted_proxies)

    def admit(self, kind: str, request: gr.Request | None) -> None:
        """A check event: count one "keygen" or "steps" event of the client, for its step.

        Raises:
            LimitExceeded: the client's rate limit is reached (nothing counted).
        """
        self.rates.admit(kind, self.client_of(request), session_key(request))

    def use_admission(self, kind: str, request: gr.Request | None) -> None:
        """A step: use its check's admission, or count the event now (a call without check).

        Raises:
            LimitExceeded: no admission and the client's rate limit is reached.
        """
        self.rates.use_admission(kind, self.client_of(request), session_key(request))

    def limits_text(self, lang: str, request: gr.Request | None) -> str:
        """What the client may still do before a rate limit refuses it, in ``lang``."""
        if self.limits_local:
            return tr(lang, "limits_local", host=self.settings.page_host)
        left = self.rates.remaining(self.client_of(request))
        minutes = f"{self.settings.page_rate_window_seconds / 60:g}"
        return tr(lang, "limits_left", keygens=left["keygen"], steps=left["steps"], minutes=minutes)


def _headers(request: gr.Request | None) -> dict[str, str]:
    headers = getattr(request, "headers", None) if request is not None else None
    if headers is None:
        return {}
    with contextlib.suppress(Exception):
        return {str(k): str(v) for k, v in dict(headers).items()}
    return {}


def tr(lang: str, key: str, **values: Any) -> str:
    """Translate a key of the page or of its three-party section into a page language.

    The three-party section keeps its English and Simplified Chinese texts; their Traditional
    Chinese versions are in page/locales/zh-Hant.json with the page's.
    """
    section = threeparty_page.TRANSLATIONS.get(lang if lang in strings.LANGUAGES else "en", {})
    if key in section:
        return section[key].format(**values) if values else section[key]
    return strings.tr(lang, key, **values)


def session_key(request: gr.Request | None) -> str:
    """The Gradio session hash of a request ("" for a call without one)."""
    session_hash = getattr(request, "session_hash", None) if request is not None else None
    return str(session_hash or "")


def request_language(request: gr.Request | None) -> str:
    """Return "zh", "zh-Hant" or "en": the switch's cookie, else the browser's first language."""
    return strings.headers_language(_headers(request))


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------
def error_message(error: backend.ClientError, lang: str) -> str:
    """Translate a client-library error into the page's language (no English detail inside)."""
    key = f"err_{error.code}"
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None and f"{key}_retry" in strings.table("en"):
        return tr(lang, f"{key}_retry", seconds=f"{retry_after:g}")
    if key not in strings.table("en"):
        key = "err_server_error" if isinstance(error, backend.ServerError) else "err_client_error"
    return tr(lang, key, parties=party_list(lang, error.details.get("parties", ())))


def _page_error(lang: str, key: str, **values: Any) -> gr.Error:
    return gr.Error(tr(lang, key, **values), title=tr(lang, "error_title"), print_exception=False)


@contextlib.contextmanager
def page_errors(lang: str, runtime: PageRuntime | None = None) -> Iterator[None]:
    """Turn every error of a step into a gr.Error in the page's language (never a traceback)."""
    try:
        yield
    except gr.Error:
        raise
    except LimitExceeded as error:
        raise _page_error(lang, error.key, **error.values) from None
    except backend.ServerUnreachableError as error:
        logger.info("step refused: %s (%s)", error.code, error.message)
        problem = runtime.server_problem() if runtime is not None else None
        raise _page_error(lang, problem or f"err_{error.code}") from None
    except backend.ClientError as error:
        logger.info("step refused: %s (%s)", error.code, error.message)
        raise gr.Error(
            error_message(error, lang), title=tr(lang, "error_title"), print_exception=False
        ) from None
    except Exception:
        logger.exception("unexpected error in a page step")
        raise _page_error(lang, "err_unexpected") from None


# ---------------------------------------------------------------------------------------------
# Order checks: a click out of order is refused by a check with no outputs (so no output box is
# marked as an error); the step itself runs only after its check succeeded. Checks are queued
# events too (Gradio shows no message for a failed unqueued event).
# ---------------------------------------------------------------------------------------------
STEPS = ("send", "run", "output", "explain")


def order_problem(
    step: str, client: Any, stale: Sequence[str]
) -> tuple[str, dict[str, Any]] | None:
    """What a step needs that is missing, as (message key, values), or None if it can run.

    Args:
        step: "send" (any party of Step 2), "run", "output" or "explain".
        client: the session's client (or None before Step 1).
        stale: the parties edited since they were sent.
    """
    if not isinstance(client, backend.CreditScoringClient) or not client.has_keys:
        return "err_order_keys_first", {}
    if step == "send":
        return None
    if stale:
        return "err_inputs_changed", {"parties": [p for p in settings.PARTIES if p in stale]}
    missing = [p for p in settings.PARTIES if p not in client.sent_parties]
    if missing:
        return "err_order_inputs_first", {"parties": missing}
    if step in ("output", "explain") and client.fhe_execution_time is None:
        return "err_order_run_first", {}
    if step == "explain" and client.verdict is None:
        return "err_order_decrypt_first", {}
    return None


def _raise_order_problem(lang: str, step: str, client: Any, stale: Sequence[str]) -> None:
    problem = order_problem(step, client, stale)
    if problem is not None:
        key, values = problem
        if "parties" in values:
            values = {"parties": party_list(lang, values["parties"])}
        raise _page_error(lang, key, **values)


def order_check(step: str) -> Callable[..., None]:
    """The check event of a step: raises its message, outputs nothing."""

    def check(client: Any, stale: list[str], request: gr.Request) -> None:
        _raise_order_problem(request_language(request), step, client, stale)

    check.__name__ = f"check_{step}"
    return check


# ---------------------------------------------------------------------------------------------
# Step functions (the page's handlers)
# ---------------------------------------------------------------------------------------------
# Outputs cleared when a run no longer matches the inputs: FHE time, encrypted output, verdict,
# explanation.
_CLEARED_RUN = ("", "", "", "")


def _whole(value: Any) -> Any:
    """A slider's number as an int; anything else unchanged (the client library rejects it)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(round(value))
    return value


def _send_outputs(stale: Sequence[str], party: str, ciphertext: str) -> tuple[Any, ...]:
    return ([p for p in stale if p != party], ciphertext, *_CLEARED_RUN)


class PageSteps:
    """The page's step handlers, bound to the page's runtime."""

    def __init__(self, runtime: PageRuntime) -> None:
        self.runtime = runtime

    def _live_client(
        self, lang: str, step: str, client: Any, stale: Sequence[str], request: gr.Request
    ) -> backend.CreditScoringClient:
        """The session's client if it still holds keys and the step is in order; counts a step.

        Raises:
            gr.Error: out of order, session expired, or the client's rate limit reached.
        """
        _raise_order_problem(lang, step, client, stale)
        if not self.runtime.registry.holds(session_key(request), client):
            raise _page_error(lang, "err_session_expired")
        with page_errors(lang):
            self.runtime.use_admission("steps", request)
        return client

    def keygen(self, client: Any, request: gr.Request) -> tuple[Any, ...]:
        """Step 1: new keys for this session, evaluation key uploaded; later outputs cleared.

        Returns:
            (client state, stale parties, shortened evaluation key, three ciphertext boxes, FHE
            time, encrypted output, verdict, explanation).
        """
        lang = request_language(request)
        runtime = self.runtime
        created = not isinstance(client, backend.CreditScoringClient)
        session = session_key(request)
        with page_errors(lang, runtime):
            runtime.registry.reserve(session)
            try:
                runtime.use_admission("keygen", request)
                if created:
                    client = runtime.new_client()
                try:
                    evaluation_key = backend.keygen_send(client)
                except BaseException:
                    client.close()
                    raise
                runtime.registry.register(session, client)
            finally:
                runtime.registry.release(session)
        return (client, [], evaluation_key, "", "", "", *_CLEARED_RUN)

    def send_applicant(
        self,
        client: Any,
        stale: list[str],
        assets: list[str] | None,
        num_children: float,
        household_size: float,
        total_income: float,
        age: float,
        income_type: str,
        education_type: str,
        family_status: str,
        occupation_type: str,
        housing_type: str,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """Step 2.1: preprocess, encrypt and send the applicant's inputs.

        Returns:
            (stale parties, shortened ciphertext, FHE time, encrypted output, verdict,
            explanation).
        """
        lang = request_language(request)
        client = self._live_client(lang, "send", client, stale, request)
        owned = set(assets or ())
        with page_errors(lang, self.runtime):
            ciphertext = backend.pre_process_encrypt_send_applicant(
                client,
                own_car="own_car" in owned,
                own_property="own_property" in owned,
                mobile_phone="mobile_phone" in owned,
                num_children=_whole(num_children),
                household_size=_whole(household_size),
                total_income=total_income,
                age=_whole(age),
                income_type=income_type,
                education_type=education_type,
                family_status=family_status,
                occupation_type=occupation_type,
                housing_type=housing_type,
            )
        return _send_outputs(stale, "applicant", ciphertext)

    def send_bank(
        self, client: Any, stale: list[str], account_age: float, request: gr.Request
    ) -> tuple[Any, ...]:
        """Step 2.2: preprocess, encrypt and send the bank's input (outputs as send_applicant)."""
        lang = request_language(request)
        client = self._live_client(lang, "send", client, stale, request)
        with page_errors(lang, self.runtime):
            ciphertext = backend.pre_process_encrypt_send_bank(
                client, account_age=_whole(account_age)
            )
        return _send_outputs(stale, "bank", ciphertext)

    def send_credit_bureau(
        self, client: Any, stale: list[str], employed: str, years_employed: str, request: gr.Request
    ) -> tuple[Any, ...]:
        """Step 2.3: the credit bureau's inputs (outputs as send_applicant)."""
        lang = request_language(request)
        client = self._live_client(lang, "send", client, stale, request)
        with page_errors(lang, self.runtime):
            ciphertext = backend.pre_process_encrypt_send_credit_bureau(
                client,
                employed={YES: True, NO: False}.get(employed, employed),
                years_employed=years_employed,
            )
        return _send_outputs(stale, "credit_bureau", ciphertext)

    def run_fhe(self, client: Any, stale: list[str], request: gr.Request) -> tuple[str, ...]:
        """Step 3: run the decision tree in FHE on the server.

        Returns:
            (FHE execution time, encrypted output, verdict, explanation) - the last three cleared.
        """
        lang = request_language(request)
        client = self._live_client(lang, "run", client, stale, request)
        with page_errors(lang, self.runtime):
            seconds = backend.run_fhe(client)
        return f"{seconds:.2f}", "", "", ""

    def get_output(self, client: Any, stale: list[str], request: gr.Request) -> tuple[str, ...]:
        """Step 4: fetch the encrypted verdict and decrypt it.

        Returns:
            (shortened encrypted output, verdict text, explanation) - the explanation cleared.
        """
        lang = request_language(request)
        client = self._live_client(lang, "output", client, stale, request)
        with page_errors(lang, self.runtime):
            encrypted_output, approved = backend.get_output_and_decrypt(client)
        verdict = tr(lang, "verdict_approved" if approved else "verdict_refused")
        return encrypted_output, verdict, ""

    def explain(self, client: Any, stale: list[str], employed: str, request: gr.Request) -> str:
        """Step 5: encrypt the candidate rows, score them in one FHE run, decrypt the answer.

        Args:
            client: the session's client.
            stale: the parties edited since they were sent (none, or the step is refused).
            employed: the credit bureau's employed radio; as sent, since no party is stale.
            request: the Gradio request.

        Returns:
            The explanation: one sentence in the page's language, naming every change.
        """
        lang = request_language(request)
        client = self._live_client(lang, "explain", client, stale, request)
        with page_errors(lang, self.runtime):
            explanation = backend.explain_encrypt_run_decrypt(client)
        return strings.explanation_text(
            lang,
            approved=explanation.outcome == "already_approved",
            years=explanation.years_employed if explanation.outcome == "years_needed" else None,
            employed=employed != NO,
        )

    def check_keygen(self, request: gr.Request) -> None:
        """Step 1's check (no outputs): a free session slot and the client's key-generation rate.

        Raises:
            gr.Error: the page is full or the client's rate limit is reached (nothing counted
                when full).
        """
        lang = request_language(request)
        with page_errors(lang):
            if not self.runtime.registry.has_room(session_key(request)):
                raise LimitExceeded("err_page_full", limit=self.runtime.registry.max_sessions)
            self.runtime.admit("keygen", request)

    def step_check(self, step: str) -> Callable[..., None]:
        """The check event of a step (no outputs): its order, then the client's step rate."""
        in_order = order_check(step)

        def check(client: Any, stale: list[str], request: gr.Request) -> None:
            in_order(client, stale, request)
            with page_errors(request_language(request)):
                self.runtime.admit("steps", request)

        check.__name__ = f"check_{step}"
        return check

    def limits_text(self, request: gr.Request) -> str:
        """The line under Step 1: what the client may still do (or that nothing is limited)."""
        return self.runtime.limits_text(request_language(request), request)

    def relabel(self, shown: dict[Any, Any], request: gr.Request) -> dict[Any, str]:
        """The language switch: the outputs shown, in the request's (new) language.

        Args:
            shown: each output component with its current text (see ``language.relabel``).
            request: the Gradio request (its cookie holds the new language).
        """
        return language.relabel(shown, request_language(request), tr, self.limits_text(request))

    def end_session(self, request: gr.Request) -> None:
        """demo.unload: the tab was closed; delete its server session and its keys now."""
        self.runtime.registry.end(session_key(request))

    def discard_client(self, client: Any) -> None:
        """gr.State delete callback: Gradio dropped the session's state; close its client."""
        if isinstance(client, backend.CreditScoringClient):
            self.runtime.registry.forget(client)


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


def mark_edited(party: str, client: Any, stale: list[str], request: gr.Request) -> tuple[Any, ...]:
    """An input of ``party`` changed: if it had been sent, mark it "not sent" and clear the run.

    Returns:
        (stale parties, ciphertext box, FHE time, encrypted output, verdict, explanation), each
        gr.skip() when nothing changes.
    """
    sent = isinstance(client, backend.CreditScoringClient) and party in client.sent_parties
    if not sent or party in stale:
        return (gr.skip(),) * 6
    lang = request_language(request)
    return ([*stale, party], tr(lang, "not_sent"), *_CLEARED_RUN)


def mark_applicant_edited(client: Any, stale: list[str], request: gr.Request) -> tuple[Any, ...]:
    """An applicant input changed (see mark_edited)."""
    return mark_edited("applicant", client, stale, request)


def mark_bank_edited(client: Any, stale: list[str], request: gr.Request) -> tuple[Any, ...]:
    """The bank input changed (see mark_edited)."""
    return mark_edited("bank", client, stale, request)


def mark_credit_bureau_edited(
    client: Any, stale: list[str], request: gr.Request
) -> tuple[Any, ...]:
    """A credit-bureau input changed (see mark_edited)."""
    return mark_edited("credit_bureau", client, stale, request)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------
def make_i18n() -> gr.I18n:
    """Return the page's gr.I18n (English, and Chinese under every zh locale name)."""
    tables = strings.gradio_translations()
    for locale, table in tables.items():
        table.update(threeparty_page.TRANSLATIONS.get(strings.locale_language(locale), {}))
    return gr.I18n(**tables)


def _svg_img(file_name: str, alt: str, width: str) -> str:
    """An <img> with the SVG of static/ inlined as a data: URI (no remote address)."""
    data = base64.b64encode((settings.STATIC_DIR / file_name).read_bytes()).decode("ascii")
    return (
        f'<p align="center"><img src="data:image/svg+xml;base64,{data}" alt="{alt}" '
        f'style="width:{width};max-width:100%;height:auto"></p>'
    )


def _plain(method: Callable[..., Any]) -> Callable[..., Any]:
    """A plain function calling a bound method.

    Gradio deep-copies its config (and with it a State's delete callback) on every /config
    request: a bound method would drag the runtime (worker pool pipes, sessions' keys) into the
    copy, and the copies' destructors close the pool's pipes. Functions are copied by reference.
    """

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    return call


def _both_languages(key: str) -> str:
    """A text in both languages (for what Gradio does not translate, such as an image's alt)."""
    return f"{tr('en', key)} / {tr('zh', key)}"


def _category_choices(i18n: gr.I18n, field: str) -> list[tuple[Any, str]]:
    return [(i18n(category_key(field, v)), v) for v in settings.CATEGORY_VALUES[field]]


def build_demo(runtime: PageRuntime | None = None) -> gr.Blocks:
    """Build the five-step page (serve it with ``serve_page``, which adds the guard and i18n).

    Args:
        runtime: the page's runtime (default: one with the settings of the environment).
    """
    runtime = runtime or PageRuntime(settings.ClientSettings())
    i18n = make_i18n()
    steps = PageSteps(runtime)
    limits = runtime.settings
    ranges = settings.field_ranges()

    def field_slider(field: str, text: str, step: float = 1) -> gr.Slider:
        """A slider over a field's range in the data, at its median (label_/info_<text>)."""
        return gr.Slider(
            minimum=ranges[field]["minimum"],
            maximum=ranges[field]["maximum"],
            value=ranges[field]["value"],
            step=step,
            label=i18n(f"label_{text}"),
            info=i18n(f"info_{text}"),
            elem_id=field.replace("_", "-"),
        )

    def send_controls(party: str) -> tuple[gr.Button, gr.Textbox]:
        """A party's "encrypt and send" button and the box showing its shortened ciphertext."""
        slug = party.replace("_", "-")
        with gr.Row(), gr.Column(scale=2):
            button = gr.Button(i18n("btn_encrypt_send"), elem_id=f"encrypt-{slug}-button")
            box = output_box(label_key="label_encrypted_input", elem_id=f"encrypted-{slug}")
        return button, box

    def step_intro(step: int, *keys: str) -> None:
        """A step's heading, rule and paragraphs (translation keys)."""
        gr.Markdown(i18n(f"step{step}_title"), elem_id=f"step{step}-title")
        gr.Markdown("<hr />")
        for key in keys:
            gr.Markdown(i18n(key))

    def output_box(label_key: str, elem_id: str, max_lines: int = 2) -> gr.Textbox:
        """A read-only textbox showing what a step produced."""
        return gr.Textbox(
            label=i18n(label_key), max_lines=max_lines, interactive=False, elem_id=elem_id
        )

    with gr.Blocks(title=PAGE_TITLE) as demo:
        client_state = gr.State(
            None,
            time_to_live=limits.page_session_ttl_seconds + STATE_TTL_SLACK_SECONDS,
            delete_callback=_plain(steps.discard_client),
        )
        stale_state = gr.State([])

        gr.HTML(language.SWITCH_HTML, elem_id="language-switch", js_on_load=None)
        gr.HTML(
            _svg_img("logo.svg", alt=_both_languages("logo_alt"), width="200px"),
            elem_id="logo",
            js_on_load=None,
        )
        gr.Markdown(i18n("title"), elem_id="title")
        with gr.Group():
            gr.Markdown(i18n("privacy_title"), elem_id="privacy-title")
            gr.Markdown(i18n("privacy_notice"), elem_id="privacy-notice")

        with gr.Accordion(i18n("acc_scoring_title"), open=False, elem_id="accordion-scoring"):
            gr.Markdown(i18n("acc_scoring_body"))
        with gr.Accordion(i18n("acc_privacy_title"), open=False, elem_id="accordion-privacy"):
            gr.Markdown(i18n("acc_privacy_body"))
        with gr.Accordion(i18n("acc_fhe_title"), open=False, elem_id="accordion-fhe"):
            gr.Markdown(i18n("acc_fhe_body"))

        gr.HTML(diagram.html(), elem_id="diagram", js_on_load=None)
        gr.Markdown(i18n("diagram_caption"))

        # Step 1
        step_intro(1, "step1_who", "step1_body")
        keygen_button = gr.Button(i18n("btn_keygen"), elem_id="keygen-button", variant="primary")
        evaluation_key = output_box(label_key="label_evaluation_key", elem_id="evaluation-key")
        limits_left = gr.Markdown(elem_id="limits-left")

        # Step 2
        step_intro(2, "step2_who", "step2_body")
        with gr.Row():
            with gr.Column():
                gr.Markdown(i18n("step21_title"))
                assets = gr.CheckboxGroup(
                    [(i18n(f"asset_{field}"), field) for field in ASSET_FIELDS],
                    label=i18n("label_assets"),
                    elem_id="assets",
                )
                num_children = field_slider(field="num_children", text="children")
                household_size = field_slider(field="household_size", text="household")
                total_income = field_slider(field="total_income", text="income", step=INCOME_STEP)
                age = field_slider(field="age", text="age")
            with gr.Column():
                dropdowns = {}
                for field, label, info in (
                    ("income_type", "label_income_type", "info_income_type"),
                    ("education_type", "label_education", "info_education"),
                    ("family_status", "label_family", "info_family"),
                    ("occupation_type", "label_occupation", "info_occupation"),
                    ("housing_type", "label_housing", "info_housing"),
                ):
                    dropdowns[field] = gr.Dropdown(
                        choices=_category_choices(i18n, field),
                        value=settings.CATEGORY_VALUES[field][0],
                        label=i18n(label),
                        info=i18n(info),
                        elem_id=field.replace("_", "-"),
                    )
        encrypt_applicant_button, encrypted_applicant = send_controls(party="applicant")
        gr.Markdown("<hr />")
        with gr.Column():
            gr.Markdown(i18n("step22_title"))
            account_age = field_slider(field="account_age", text="account_age")
        encrypt_bank_button, encrypted_bank = send_controls(party="bank")
        gr.Markdown("<hr />")
        with gr.Column():
            gr.Markdown(i18n("step23_title"))
            employed = gr.Radio(
                [(i18n("choice_yes"), YES), (i18n("choice_no"), NO)],
                value=YES,
                label=i18n("label_employed"),
                elem_id="employed",
            )
            years_employed = gr.Dropdown(
                choices=_category_choices(i18n, "years_employed"),
                value=settings.YEARS_EMPLOYED_BINS[0],
                label=i18n("label_years_employed"),
                info=i18n("info_years_employed"),
                elem_id="years-employed",
            )
        encrypt_credit_bureau_button, encrypted_credit_bureau = send_controls(party="credit_bureau")

        # Step 3
        step_intro(3, "step3_who", "step3_body")
        run_fhe_button = gr.Button(i18n("btn_run_fhe"), elem_id="run-fhe-button", variant="primary")
        fhe_execution_time = output_box(
            label_key="label_fhe_time", elem_id="fhe-execution-time", max_lines=1
        )

        # Step 4
        step_intro(4, "step4_who", "step4_body", "step4_body2")
        get_output_button = gr.Button(
            i18n("btn_get_output"), elem_id="get-output-button", variant="primary"
        )
        encrypted_output = output_box(
            label_key="label_encrypted_output", elem_id="encrypted-output"
        )
        verdict = gr.Textbox(
            label=i18n("label_verdict"), max_lines=1, interactive=False, elem_id="verdict"
        )

        # Step 5
        step_intro(5, "step5_body")
        explain_button = gr.Button(i18n("btn_explain"), elem_id="explain-button", variant="primary")
        explain_result = gr.Textbox(
            label=i18n("label_explain"), interactive=False, elem_id="explain-result"
        )
        applicant_fields = [assets, num_children, household_size, total_income, age]
        tp_admitted = threeparty_page.build_section(
            i18n,
            [*applicant_fields, *dropdowns.values()],
            [account_age],
            [employed, years_employed],
            request_language,
            tr,
            keys_dir=limits.client_keys_dir,
            admit=three_party_admission(runtime),
        )
        gr.Markdown(i18n("footer"), elem_id="footer")
        relabel_button = gr.Button(i18n("btn_relabel"), elem_id=language.RELABEL_BUTTON_ID)
        tp_outputs = [c for c in demo.blocks.values() if c.elem_id in language.TP_OUTPUT_IDS]

        # ---- wiring -------------------------------------------------------------------------
        run_outputs = [fhe_execution_time, encrypted_output, verdict, explain_result]
        applicant_inputs = [
            assets,
            num_children,
            household_size,
            total_income,
            age,
            *(dropdowns[f] for f in settings.APPLICANT_FIELDS[7:]),
        ]
        private: dict[str, Any] = {"api_visibility": "private"}
        refresh_limits: dict[str, Any] = {
            "fn": _plain(steps.limits_text),
            "outputs": [limits_left],
            "show_progress": "hidden",
            "queue": False,
            **private,
        }
        demo.load(**refresh_limits)
        if tp_admitted is not None:
            tp_admitted.success(**refresh_limits)
        # The check has no outputs: a refusal (page full, rate limit) shows its message and
        # marks no box, as a click out of order does.
        keygen_button.click(
            _plain(steps.check_keygen),
            inputs=None,
            outputs=None,
            show_progress="hidden",
            concurrency_limit=None,
            **private,
        ).success(
            _plain(steps.keygen),
            inputs=[client_state],
            outputs=[
                client_state,
                stale_state,
                evaluation_key,
                encrypted_applicant,
                encrypted_bank,
                encrypted_credit_bureau,
                *run_outputs,
            ],
            concurrency_limit=limits.page_keygen_workers,
            concurrency_id="keygen",
            **private,
        ).then(**refresh_limits)
        session_inputs = [client_state, stale_state]
        for button, step, handler, inputs, outputs in (
            (
                encrypt_applicant_button,
                "send",
                steps.send_applicant,
                applicant_inputs,
                [stale_state, encrypted_applicant, *run_outputs],
            ),
            (
                encrypt_bank_button,
                "send",
                steps.send_bank,
                [account_age],
                [stale_state, encrypted_bank, *run_outputs],
            ),
            (
                encrypt_credit_bureau_button,
                "send",
                steps.send_credit_bureau,
                [employed, years_employed],
                [stale_state, encrypted_credit_bureau, *run_outputs],
            ),
            (run_fhe_button, "run", steps.run_fhe, [], run_outputs),
            (
                get_output_button,
                "output",
                steps.get_output,
                [],
                [encrypted_output, verdict, explain_result],
            ),
            (explain_button, "explain", steps.explain, [employed], [explain_result]),
        ):
            # The check has no outputs: a click out of order shows its message and marks no box.
            button.click(
                _plain(steps.step_check(step)),
                inputs=session_inputs,
                outputs=None,
                show_progress="hidden",
                concurrency_limit=None,
                **private,
            ).success(
                _plain(handler),
                inputs=[*session_inputs, *inputs],
                outputs=outputs,
                concurrency_limit=limits.page_step_concurrency,
                concurrency_id="fhe-steps",
                **private,
            ).then(**refresh_limits)

        # Editing an input after sending it: that party is "not sent" until sent again.
        for components, handler, ciphertext_box in (
            (applicant_inputs, mark_applicant_edited, encrypted_applicant),
            ([account_age], mark_bank_edited, encrypted_bank),
            ([employed, years_employed], mark_credit_bureau_edited, encrypted_credit_bureau),
        ):
            for component in components:
                component.change(
                    handler,
                    inputs=[client_state, stale_state],
                    outputs=[stale_state, ciphertext_box, *run_outputs],
                    show_progress="hidden",
                    **private,
                    queue=False,
                )

        # The language switch (page/language.py): the outputs shown, in the new language.
        shown = [encrypted_applicant, encrypted_bank, encrypted_credit_bureau, verdict]
        shown += [explain_result, limits_left, *tp_outputs]
        relabel_button.click(
            _plain(steps.relabel),
            inputs=set(shown),  # a set: the handler gets a dict
            outputs=shown,
            show_progress="hidden",
            queue=False,
            **private,
        )
        demo.unload(_plain(steps.end_session))
    return demo


# ---------------------------------------------------------------------------------------------
# Serving: the guard, Gradio's queue and launch options
# ---------------------------------------------------------------------------------------------
def page_fn_ids(demo: gr.Blocks) -> set[int]:
    """The event handlers a page may call (all but the unload handler, which Gradio calls)."""
    return {
        fn_id
        for fn_id, fn in demo.fns.items()
        if not any(target[1] == "unload" for target in fn.targets)
    }


def serve_page(demo: gr.Blocks, runtime: PageRuntime, *, block: bool = True) -> Any:
    """Launch the page with its queue bounded and only its own parts reachable.

    Args:
        demo: the page (``build_demo``).
        runtime: the page's runtime (its settings and session registry).
        block: wait until the page stops (False: return once it serves, for tests and tools).

    Returns:
        What ``gr.Blocks.launch`` returns: (FastAPI app, local URL, share URL).
    """
    from starlette.middleware import Middleware

    from page.guard import PageGuard

    page_settings = runtime.settings
    demo.queue(
        max_size=page_settings.page_queue_size,
        default_concurrency_limit=page_settings.page_step_concurrency,
    )
    guard = Middleware(
        PageGuard,
        allowed_fn_ids=page_fn_ids(demo),
        on_heartbeat=runtime.registry.heartbeat_opened,
        head_html=language.head_script(),
    )
    return demo.launch(
        server_name=page_settings.page_host,
        server_port=page_settings.page_port,
        i18n=make_i18n(),
        css=strings.page_css() + diagram.CSS,
        footer_links=[],
        enable_monitoring=False,
        run_history=False,
        pwa=False,
        mcp_server=False,
        ssr_mode=False,
        show_error=False,
        max_file_size=1,
        app_kwargs={"middleware": [guard]},
        prevent_thread_lock=not block,
    )


# ---------------------------------------------------------------------------------------------
# Running: the FHE server as a supervised child process, then the page
# ---------------------------------------------------------------------------------------------
def _stop_requested(signum: int, _frame: Any) -> None:
    """SIGINT or SIGTERM: leave through main's cleanup, with status 0 (a requested, clean stop).

    Later signals (a second Ctrl-C, make's SIGTERM after its SIGINT) are ignored meanwhile, so
    that they cannot cut the cleanup short.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logger.info("%s: stopping", signal.Signals(signum).name)
    raise SystemExit(0)


def main() -> None:
    """Start the FHE server (unless FHE_SERVER_URL is set), wait for it, serve the page."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Ctrl-C (SIGINT) and SIGTERM leave through the finally block below: the sessions are closed
    # (keys deleted) and the FHE server stopped, and the process exits with status 0 (`make run`
    # then prints no error). (Gradio's own Ctrl-C handling only closes its server, and can wait
    # there for open connections.)
    signal.signal(signal.SIGTERM, _stop_requested)
    signal.signal(signal.SIGINT, _stop_requested)
    from fhe_server.make_parent import watch_make_parent

    watch_make_parent()  # `make run`: a SIGINT to make alone stops the page too
    from fhe_server.launcher import (
        ServerStartError,
        _die_with_parent,
        stop_process,
        wait_for_health,
    )
    from page.keygen import KeygenPool
    from page.supervisor import ServerSupervisor

    client_settings = settings.ClientSettings()
    pool = KeygenPool(client_settings.page_keygen_workers)
    runtime = PageRuntime(client_settings, key_generator=pool)
    supervisor: ServerSupervisor | None = None
    try:
        try:
            if client_settings.server_url:
                url = client_settings.resolved_server_url()
                wait_for_health(url, timeout=client_settings.server_start_timeout)
            else:
                supervisor = ServerSupervisor(
                    port=client_settings.server_port,
                    start_timeout=client_settings.server_start_timeout,
                    restart_limit=client_settings.server_restart_limit,
                )
                logger.info("starting the FHE server on port %d", client_settings.server_port)
                supervisor.start()
                url = supervisor.url
                runtime.server_problem = supervisor.problem
        except ServerStartError as error:  # a startup problem: say it, without a traceback
            logger.error(
                "%s\nSet FHE_SERVER_PORT to a free port, or FHE_SERVER_URL to use a server "
                "that is already running.",
                error,
            )
            raise SystemExit(1) from None
        logger.info("FHE server ready at %s", url)
        threeparty_page.start_server(preexec=_die_with_parent, stop=stop_process)
        runtime.open()
        pool.start()
        serve_page(build_demo(runtime), runtime)
    finally:
        runtime.close()
        pool.close()
        if supervisor is not None:
            supervisor.stop()


if __name__ == "__main__":
    main()
