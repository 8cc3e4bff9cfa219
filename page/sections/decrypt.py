"""Step 4: the encrypted verdict, fetched and decrypted with the session's secret key."""

from __future__ import annotations

from typing import Any

import gradio as gr

import backend
from page.runtime import page_errors, request_language, tr
from page.sections.base import Parts, SectionHandlers, output_box, step_intro, wire_step


class DecryptHandlers(SectionHandlers):
    """Step 4's handler."""

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


def layout(parts: Parts) -> None:
    """Add Step 4: its button, the encrypted output's box and the verdict."""
    i18n = parts.i18n
    step_intro(i18n, 4, "step4_who", "step4_body", "step4_body2")
    parts.add(
        get_output_button=gr.Button(
            i18n("btn_get_output"), elem_id="get-output-button", variant="primary"
        ),
        encrypted_output=output_box(i18n, "label_encrypted_output", "encrypted-output"),
        verdict=gr.Textbox(
            label=i18n("label_verdict"), max_lines=1, interactive=False, elem_id="verdict"
        ),
    )


def wire(parts: Parts, steps: DecryptHandlers) -> None:
    """Step 4's button."""
    outputs = [parts["encrypted_output"], parts["verdict"], parts["explanation"]]
    wire_step(parts, steps, parts["get_output_button"], "output", steps.get_output, [], outputs)
