"""The top of the page: the language switch, the logo, the title, the privacy notice, the diagram.

Layout only (no handler): its texts are the ``title``, ``privacy_*``, ``acc_*``, ``logo_alt``
and ``diagram_caption`` keys of page/locales/<lang>.json.
"""

from __future__ import annotations

import base64

import gradio as gr

import settings
from page import diagram, language
from page.runtime import tr


def _svg_img(file_name: str, alt: str, width: str) -> str:
    """An <img> with the SVG of static/ inlined as a data: URI (no remote address)."""
    data = base64.b64encode((settings.STATIC_DIR / file_name).read_bytes()).decode("ascii")
    return (
        f'<p align="center"><img src="data:image/svg+xml;base64,{data}" alt="{alt}" '
        f'style="width:{width};max-width:100%;height:auto"></p>'
    )


def _both_languages(key: str) -> str:
    """A text in both languages (for what Gradio does not translate, such as an image's alt)."""
    return f"{tr('en', key)} / {tr('zh', key)}"


def layout(i18n: gr.I18n) -> None:
    """Add the top of the page (inside ``gr.Blocks``)."""
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
