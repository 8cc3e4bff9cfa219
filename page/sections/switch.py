"""The footer and the language switch's hidden button: the outputs shown, in the new language.

The switch's links are at the top (``intro``); its head script (page/language.py) changes the
page's static texts in place and clicks the hidden ``#relabel-button``, whose handler here
rewrites every output already shown (ciphertexts and numbers unchanged). Nothing else changes:
the session, its keys and the fields stay.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from page import language
from page.runtime import plain, request_language, tr
from page.sections.base import PRIVATE, Parts, SectionHandlers

# The outputs the switch rewrites (names in ``Parts``).
SHOWN = (
    "encrypted_applicant",
    "encrypted_bank",
    "encrypted_credit_bureau",
    "verdict",
    "explanation",
    "limits_left",
    "tp_explanation",
    "tp_progress",
    "tp_verdict",
)


class SwitchHandlers(SectionHandlers):
    """The relabelling handler."""

    def relabel(self, shown: dict[Any, Any], request: gr.Request) -> dict[Any, str]:
        """The language switch: the outputs shown, in the request's (new) language.

        Args:
            shown: each output component with its current text (see ``language.relabel``).
            request: the Gradio request (its cookie holds the new language).
        """
        return language.relabel(shown, request_language(request), tr, self.limits_text(request))


def layout(parts: Parts) -> None:
    """Add the footer and the hidden relabel button."""
    i18n = parts.i18n
    gr.Markdown(i18n("footer"), elem_id="footer")
    parts.add(relabel_button=gr.Button(i18n("btn_relabel"), elem_id=language.RELABEL_BUTTON_ID))


def wire(parts: Parts, steps: SwitchHandlers) -> None:
    """The hidden button: every output shown, in the new language."""
    shown = [parts[name] for name in SHOWN]
    parts["relabel_button"].click(
        plain(steps.relabel),
        inputs=set(shown),  # a set: the handler gets a dict
        outputs=shown,
        show_progress="hidden",
        queue=False,
        **PRIVATE,
    )
