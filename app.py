"""The five-step Gradio page of the encrypted credit-card approval service, in Chinese and English.

``python app.py`` starts the FHE server (``uvicorn server:app``) as a supervised child process
unless FHE_SERVER_URL names another server, waits for its /health, starts the three-party server
(``uvicorn threeparty.server:app`` in .venv-threeparty) as a second child of the same supervisor
unless THREEPARTY_SERVER_URL names one, then serves the page. Its settings (``page.config.
PageConfig``: both servers, the keys folder, the page's limits, every time-out) are read from the
environment once, at start, and passed in.

The page is made of sections (``page/sections/``), one module each with its layout, its handlers
and its texts' keys: ``build_demo`` composes them, ``PageSteps`` combines their handlers.

The page's process is the client: every browser session gets its own ``CreditScoringClient``
(in a ``gr.State`` and in the ``SessionRegistry``) whose secret key lives in this process and in a
folder under the keys directory, until the session ends, expires or never opened a page.

Limits (page/limits.py, page/guard.py): key generation runs in worker processes; live sessions
holding keys are capped; key generations and steps are rate-limited per client address; Gradio's
queue is bounded; only the page's own event handlers are reachable (no upload, deep link,
monitoring or named API route). Texts live in page/locales/<lang>.json (page/strings.py).
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import gradio as gr

from page import diagram, language, strings
from page.config import PageConfig, ThreePartyConfig
from page.limits import KeyFolders, SessionRegistry, client_address
from page.runtime import (
    STEPS,
    PageRuntime,
    order_check,
    order_problem,
    page_errors,
    request_language,
    session_key,
    tr,
)
from page.sections import decrypt, explain, fhe_run, inputs, intro, keys, switch, threeparty
from page.sections.base import Parts
from page.sections.decrypt import DecryptHandlers
from page.sections.explain import ExplainHandlers
from page.sections.fhe_run import RunHandlers
from page.sections.inputs import (
    ASSET_FIELDS,
    NO,
    YES,
    InputsHandlers,
    mark_applicant_edited,
    mark_bank_edited,
    mark_credit_bureau_edited,
    mark_edited,
)
from page.sections.keys import KeysHandlers
from page.sections.switch import SwitchHandlers
from page.sections.threeparty import ThreePartyHandlers, three_party_admission
from page.supervisor import Supervisor

# Names the tests and tools import from app.py (each defined in its section or in page/).
__all__ = [
    "ASSET_FIELDS",
    "NO",
    "STEPS",
    "YES",
    "KeyFolders",
    "PageRuntime",
    "PageSteps",
    "SessionRegistry",
    "build_demo",
    "client_address",
    "main",
    "make_i18n",
    "mark_applicant_edited",
    "mark_bank_edited",
    "mark_credit_bureau_edited",
    "mark_edited",
    "order_check",
    "order_problem",
    "page_errors",
    "page_fn_ids",
    "request_language",
    "serve_page",
    "session_key",
    "start_threeparty_server",
    "three_party_admission",
    "tr",
]

logger = logging.getLogger(__name__)

# The browser tab's title (Gradio does not translate it): both languages.
PAGE_TITLE = "信用卡审批预测 · Credit-card approval with FHE"
# The sections in the page's order (``intro`` has no component to wire).
SECTIONS = (keys, inputs, fhe_run, decrypt, explain, threeparty, switch)


class PageSteps(
    KeysHandlers,
    InputsHandlers,
    RunHandlers,
    DecryptHandlers,
    ExplainHandlers,
    ThreePartyHandlers,
    SwitchHandlers,
):
    """The page's step handlers, bound to the page's runtime: every section's, combined."""


def make_i18n() -> gr.I18n:
    """Return the page's gr.I18n (English, and Chinese under every zh locale name)."""
    return gr.I18n(**strings.gradio_translations())


def build_demo(runtime: PageRuntime | None = None) -> gr.Blocks:
    """Build the page from its sections (serve it with ``serve_page``: the guard and i18n).

    Args:
        runtime: the page's runtime (default: one with the settings of the environment).
    """
    runtime = runtime or PageRuntime.from_config(PageConfig.from_environment())
    steps = PageSteps(runtime)
    parts = Parts(make_i18n(), runtime)
    with gr.Blocks(title=PAGE_TITLE) as demo:
        keys.session_state(parts, steps)
        intro.layout(parts.i18n)
        for section in SECTIONS:
            section.layout(parts)
        keys.wire(parts, steps, demo)
        for section in SECTIONS[1:]:
            section.wire(parts, steps)
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


def start_threeparty_server(
    config: ThreePartyConfig, supervisor: Supervisor, runtime: PageRuntime
) -> None:
    """Start the three-party server as the supervisor's second child, in the background.

    Nothing starts when THREEPARTY_SERVER_URL names a server or the mode is unavailable here
    (the section then says why). The page serves meanwhile; a run waits for the server.
    """
    from page.supervisor import threeparty_server
    from page.threeparty_runs import unavailable_reason

    if config.server_url or unavailable_reason(config.python, config.probe_timeout) is not None:
        return
    child = supervisor.add(
        "threeparty",
        threeparty_server(config.python, config.port, config.start_timeout, config.restart_limit),
    )
    logger.info("starting the three-party server on port %d", config.port)
    child.start_in_background()
    runtime.threeparty_ready = child.ready


def main() -> None:
    """Start the servers (unless their URLs are given), wait for the FHE server, serve the page."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Ctrl-C (SIGINT) and SIGTERM leave through the finally block below: the sessions are closed
    # (keys deleted) and the servers stopped, and the process exits with status 0 (`make run`
    # then prints no error). (Gradio's own Ctrl-C handling only closes its server, and can wait
    # there for open connections.)
    signal.signal(signal.SIGTERM, _stop_requested)
    signal.signal(signal.SIGINT, _stop_requested)
    from fhe_server.make_parent import watch_make_parent

    watch_make_parent()  # `make run`: a SIGINT to make alone stops the page too
    from fhe_server.launcher import ServerStartError, wait_for_health
    from page.keygen import KeygenPool
    from page.supervisor import fhe_server

    config = PageConfig.from_environment()  # the one reading of the page's environment
    client_settings = config.client
    pool = KeygenPool(client_settings.page_keygen_workers)
    runtime = PageRuntime.from_config(config, key_generator=pool)
    supervisor = Supervisor()
    try:
        try:
            if client_settings.server_url:
                url = client_settings.resolved_server_url()
                wait_for_health(url, timeout=client_settings.server_start_timeout)
            else:
                server = supervisor.add(
                    "fhe",
                    fhe_server(
                        client_settings.server_port,
                        client_settings.server_start_timeout,
                        client_settings.server_restart_limit,
                    ),
                )
                logger.info("starting the FHE server on port %d", client_settings.server_port)
                server.start()
                url = server.url
                runtime.server_problem = server.problem
        except ServerStartError as error:  # a startup problem: say it, without a traceback
            logger.error(
                "%s\nSet FHE_SERVER_PORT to a free port, or FHE_SERVER_URL to use a server "
                "that is already running.",
                error,
            )
            raise SystemExit(1) from None
        logger.info("FHE server ready at %s", url)
        start_threeparty_server(config.threeparty, supervisor, runtime)
        runtime.open()
        pool.start()
        serve_page(build_demo(runtime), runtime)
    finally:
        runtime.close()
        pool.close()
        supervisor.stop()


if __name__ == "__main__":
    main()
