"""What every section's handlers share: the runtime, the request's language, messages, order.

``PageRuntime`` holds the page's settings (``page.config.PageConfig``), its live sessions, the
per-client rates and the key folders; ``page_errors`` turns every error of a step into a message
in the page's language; ``order_problem`` says what a step needs that is missing. The sections
(``page/sections/``) use these; ``app.py`` builds the runtime and composes the sections.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

import backend
import settings
from page import strings
from page.config import PageConfig, ThreePartyConfig
from page.limits import (
    ClientRates,
    KeyFolders,
    LimitExceeded,
    SessionRegistry,
    client_address,
    limits_are_local,
)
from page.strings import party_list

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The page's process: settings, sessions, limits
# ---------------------------------------------------------------------------------------------
ClientFactory = Callable[[Path], backend.CreditScoringClient]


class PageRuntime:
    """What the handlers share: settings, the live sessions, the rate limits, the key folders.

    ``config`` is the page's whole client-side settings (both servers, every time-out);
    ``settings`` its FHE/limits half, as the handlers have always read it.

    Args:
        client_settings: the page's settings.
        key_generator: where key sets are generated (the worker pool; default: this process).
        client_factory: builds a session's client for a key folder (tests pass a mock server).
        threeparty: the three-party mode's settings (default: those of the environment).
    """

    def __init__(
        self,
        client_settings: settings.ClientSettings,
        key_generator: backend.KeyGenerator | None = None,
        client_factory: ClientFactory | None = None,
        *,
        threeparty: ThreePartyConfig | None = None,
    ) -> None:
        self.config = PageConfig(client_settings, threeparty or ThreePartyConfig.from_environment())
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

        # Set by the supervisor when the page started the three-party server: whether it runs,
        # waiting up to a time-out for a start under way.
        self.threeparty_ready: Callable[[float], bool] | None = None

    @classmethod
    def from_config(
        cls, config: PageConfig, key_generator: backend.KeyGenerator | None = None
    ) -> PageRuntime:
        """The runtime of the page's settings (``PageConfig.from_environment()`` in ``main``)."""
        return cls(config.client, key_generator, threeparty=config.threeparty)

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
    """Translate a key of any section into a page language (page/locales/<lang>.json)."""
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


def page_error(lang: str, key: str, **values: Any) -> gr.Error:
    """A step's refusal: the message of ``key`` in ``lang``, shown without a traceback."""
    return gr.Error(tr(lang, key, **values), title=tr(lang, "error_title"), print_exception=False)


@contextlib.contextmanager
def page_errors(lang: str, runtime: PageRuntime | None = None) -> Iterator[None]:
    """Turn every error of a step into a gr.Error in the page's language (never a traceback)."""
    try:
        yield
    except gr.Error:
        raise
    except LimitExceeded as error:
        raise page_error(lang, error.key, **error.values) from None
    except backend.ServerUnreachableError as error:
        logger.info("step refused: %s (%s)", error.code, error.message)
        problem = runtime.server_problem() if runtime is not None else None
        raise page_error(lang, problem or f"err_{error.code}") from None
    except backend.ClientError as error:
        logger.info("step refused: %s (%s)", error.code, error.message)
        raise gr.Error(
            error_message(error, lang), title=tr(lang, "error_title"), print_exception=False
        ) from None
    except Exception:
        logger.exception("unexpected error in a page step")
        raise page_error(lang, "err_unexpected") from None


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


def raise_order_problem(lang: str, step: str, client: Any, stale: Sequence[str]) -> None:
    """Raise the message of what ``step`` needs that is missing (see ``order_problem``)."""
    problem = order_problem(step, client, stale)
    if problem is not None:
        key, values = problem
        if "parties" in values:
            values = {"parties": party_list(lang, values["parties"])}
        raise page_error(lang, key, **values)


def order_check(step: str) -> Callable[..., None]:
    """The check event of a step: raises its message, outputs nothing."""

    def check(client: Any, stale: list[str], request: gr.Request) -> None:
        raise_order_problem(request_language(request), step, client, stale)

    check.__name__ = f"check_{step}"
    return check


def plain(method: Callable[..., Any]) -> Callable[..., Any]:
    """A plain function calling a bound method.

    Gradio deep-copies its config (and with it a State's delete callback) on every /config
    request: a bound method would drag the runtime (worker pool pipes, sessions' keys) into the
    copy, and the copies' destructors close the pool's pipes. Functions are copied by reference.
    """

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    return call
