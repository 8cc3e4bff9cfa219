"""What the sections share: the page's components by name, the handlers' base, layout helpers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

import backend
from page.runtime import (
    PageRuntime,
    order_check,
    page_error,
    page_errors,
    plain,
    raise_order_problem,
    request_language,
    session_key,
)

# Every handler is reachable from the page only (no named API route).
PRIVATE: dict[str, Any] = {"api_visibility": "private"}
# Outputs cleared when a run no longer matches the inputs: FHE time, encrypted output, verdict,
# explanation.
CLEARED_RUN = ("", "", "", "")


class Parts:
    """The page's components by name, as the sections' layouts add them.

    Attributes:
        i18n: the page's gr.I18n.
        runtime: the page's runtime.
        components: {name: component}; ``parts["verdict"]`` reads one.
    """

    def __init__(self, i18n: gr.I18n, runtime: PageRuntime) -> None:
        self.i18n = i18n
        self.runtime = runtime
        self.components: dict[str, Any] = {}

    def add(self, **components: Any) -> None:
        """Record components under their names (a name is given once)."""
        for name in components:
            if name in self.components:
                raise ValueError(f"two components named {name!r}")
        self.components.update(components)

    def __getitem__(self, name: str) -> Any:
        return self.components[name]

    def run_outputs(self) -> list[Any]:
        """What a new run clears: FHE time, encrypted output, verdict, explanation."""
        return [self[name] for name in ("fhe_time", "encrypted_output", "verdict", "explanation")]

    def refresh_limits(self, limits_text: Callable[..., str]) -> dict[str, Any]:
        """The event arguments that rewrite the limits line under Step 1."""
        return {
            "fn": plain(limits_text),
            "outputs": [self["limits_left"]],
            "show_progress": "hidden",
            "queue": False,
            **PRIVATE,
        }


class SectionHandlers:
    """The base of every section's handlers: the runtime, a step's order and rate checks."""

    def __init__(self, runtime: PageRuntime) -> None:
        self.runtime = runtime

    def _live_client(
        self, lang: str, step: str, client: Any, stale: Sequence[str], request: gr.Request
    ) -> backend.CreditScoringClient:
        """The session's client if it still holds keys and the step is in order; counts a step.

        Raises:
            gr.Error: out of order, session expired, or the client's rate limit reached.
        """
        raise_order_problem(lang, step, client, stale)
        if not self.runtime.registry.holds(session_key(request), client):
            raise page_error(lang, "err_session_expired")
        with page_errors(lang):
            self.runtime.use_admission("steps", request)
        return client

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


def wire_step(
    parts: Parts,
    steps: SectionHandlers,
    button: gr.Button,
    step: str,
    handler: Callable[..., Any],
    inputs: Sequence[Any],
    outputs: Sequence[Any],
) -> None:
    """A step's button: its check (no outputs), then the step, then the limits line.

    The check has no outputs: a click out of order shows its message and marks no box.
    """
    session_inputs = [parts["client_state"], parts["stale_state"]]
    button.click(
        plain(steps.step_check(step)),
        inputs=session_inputs,
        outputs=None,
        show_progress="hidden",
        concurrency_limit=None,
        **PRIVATE,
    ).success(
        plain(handler),
        inputs=[*session_inputs, *inputs],
        outputs=list(outputs),
        concurrency_limit=parts.runtime.settings.page_step_concurrency,
        concurrency_id="fhe-steps",
        **PRIVATE,
    ).then(**parts.refresh_limits(steps.limits_text))


def whole(value: Any) -> Any:
    """A slider's number as an int; anything else unchanged (the client library rejects it)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(round(value))
    return value


def step_intro(i18n: gr.I18n, step: int, *keys: str) -> None:
    """A step's heading, rule and paragraphs (translation keys)."""
    gr.Markdown(i18n(f"step{step}_title"), elem_id=f"step{step}-title")
    gr.Markdown("<hr />")
    for key in keys:
        gr.Markdown(i18n(key))


def output_box(i18n: gr.I18n, label_key: str, elem_id: str, max_lines: int = 2) -> gr.Textbox:
    """A read-only textbox showing what a step produced."""
    return gr.Textbox(
        label=i18n(label_key), max_lines=max_lines, interactive=False, elem_id=elem_id
    )
