"""Step 1: the session's keys (generated, evaluation key uploaded) and the limits line.

The session's client lives in a ``gr.State`` (``session_state``) and in the runtime's session
registry; the tab's closing (``demo.unload``) and Gradio dropping the state both end it.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

import backend
from page.limits import LimitExceeded
from page.runtime import page_errors, plain, request_language, session_key
from page.sections.base import CLEARED_RUN, PRIVATE, Parts, SectionHandlers, output_box, step_intro

# Seconds a session's gr.State lives after its last update (the registry's TTL decides the keys).
STATE_TTL_SLACK_SECONDS = 60


class KeysHandlers(SectionHandlers):
    """Step 1's handlers and the session's end."""

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
        return (client, [], evaluation_key, "", "", "", *CLEARED_RUN)

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

    def end_session(self, request: gr.Request) -> None:
        """demo.unload: the tab was closed; delete its server session and its keys now."""
        self.runtime.registry.end(session_key(request))

    def discard_client(self, client: Any) -> None:
        """gr.State delete callback: Gradio dropped the session's state; close its client."""
        if isinstance(client, backend.CreditScoringClient):
            self.runtime.registry.forget(client)


def session_state(parts: Parts, steps: KeysHandlers) -> None:
    """The session's states: its client (closed when Gradio drops it) and its edited parties."""
    limits = parts.runtime.settings
    parts.add(
        client_state=gr.State(
            None,
            time_to_live=limits.page_session_ttl_seconds + STATE_TTL_SLACK_SECONDS,
            delete_callback=plain(steps.discard_client),
        ),
        stale_state=gr.State([]),
    )


def layout(parts: Parts) -> None:
    """Add Step 1: its button, the evaluation key's box, the limits line."""
    i18n = parts.i18n
    step_intro(i18n, 1, "step1_who", "step1_body")
    parts.add(
        keygen_button=gr.Button(i18n("btn_keygen"), elem_id="keygen-button", variant="primary"),
        evaluation_key=output_box(i18n, "label_evaluation_key", "evaluation-key"),
        limits_left=gr.Markdown(elem_id="limits-left"),
    )


def wire(parts: Parts, steps: KeysHandlers, demo: gr.Blocks) -> None:
    """Step 1's events, the limits line at load, the session's end at unload."""
    refresh_limits = parts.refresh_limits(steps.limits_text)
    demo.load(**refresh_limits)
    # The check has no outputs: a refusal (page full, rate limit) shows its message and marks no
    # box, as a click out of order does.
    parts["keygen_button"].click(
        plain(steps.check_keygen),
        inputs=None,
        outputs=None,
        show_progress="hidden",
        concurrency_limit=None,
        **PRIVATE,
    ).success(
        plain(steps.keygen),
        inputs=[parts["client_state"]],
        outputs=[
            parts["client_state"],
            parts["stale_state"],
            parts["evaluation_key"],
            parts["encrypted_applicant"],
            parts["encrypted_bank"],
            parts["encrypted_credit_bureau"],
            *parts.run_outputs(),
        ],
        concurrency_limit=parts.runtime.settings.page_keygen_workers,
        concurrency_id="keygen",
        **PRIVATE,
    ).then(**refresh_limits)
    demo.unload(plain(steps.end_session))
