"""Step 3: the server runs the decision tree on the encrypted inputs (public keys only)."""

from __future__ import annotations

from typing import Any

import gradio as gr

import backend
from page.runtime import page_errors, request_language
from page.sections.base import Parts, SectionHandlers, output_box, step_intro, wire_step


class RunHandlers(SectionHandlers):
    """Step 3's handler."""

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


def layout(parts: Parts) -> None:
    """Add Step 3: its button and the FHE time's box."""
    i18n = parts.i18n
    step_intro(i18n, 3, "step3_who", "step3_body")
    parts.add(
        run_fhe_button=gr.Button(i18n("btn_run_fhe"), elem_id="run-fhe-button", variant="primary"),
        fhe_time=output_box(i18n, "label_fhe_time", "fhe-execution-time", max_lines=1),
    )


def wire(parts: Parts, steps: RunHandlers) -> None:
    """Step 3's button."""
    wire_step(parts, steps, parts["run_fhe_button"], "run", steps.run_fhe, [], parts.run_outputs())
