"""Step 5: the explanation, what would change the verdict, from one more FHE run."""

from __future__ import annotations

from typing import Any

import gradio as gr

import backend
from page import strings
from page.runtime import page_errors, request_language
from page.sections.base import Parts, SectionHandlers, step_intro, wire_step
from page.sections.inputs import NO


class ExplainHandlers(SectionHandlers):
    """Step 5's handler."""

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


def layout(parts: Parts) -> None:
    """Add Step 5: its button and the explanation's box."""
    i18n = parts.i18n
    step_intro(i18n, 5, "step5_body")
    parts.add(
        explain_button=gr.Button(i18n("btn_explain"), elem_id="explain-button", variant="primary"),
        explanation=gr.Textbox(
            label=i18n("label_explain"), interactive=False, elem_id="explain-result"
        ),
    )


def wire(parts: Parts, steps: ExplainHandlers) -> None:
    """Step 5's button (the employed radio says what the explanation names)."""
    inputs, outputs = [parts["employed"]], [parts["explanation"]]
    wire_step(parts, steps, parts["explain_button"], "explain", steps.explain, inputs, outputs)
