"""An ASGI middleware in front of the Gradio app: only the page's own parts are reachable.

The page needs Gradio's page, assets, queue, heartbeat and its own event handlers. Everything
else Gradio serves is refused with 404 (JSON): file uploads (the page has no file input), deep
links (they write a session's values to a file anyone can fetch), the monitoring page, the named
API routes (``/gradio_api/call/...``, ``/run/<name>``, ``/api/<name>``), the file and proxy
routes, and Gradio's development routes. Calls of event handlers (``/gradio_api/queue/join`` and
``/gradio_api/run/predict``) must name one of the page's own events by ``fn_index`` (internal
handlers, such as the unload handler, are not callable) and have a small JSON body.

The guard also tells the session registry when a page opens its heartbeat connection, and puts
``head_html`` at the very start of the page's ``<head>`` (Gradio's own ``head`` option is applied
by its scripts, after they chose the page's language: too late for the language script).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from typing import Any

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

# Paths refused outright (prefixes).
REFUSED_PREFIXES = (
    "/gradio_api/upload",
    "/gradio_api/deep_link",
    "/monitoring",
    "/gradio_api/monitoring",
    "/gradio_api/call/",
    "/gradio_api/api/",
    "/gradio_api/file",
    "/gradio_api/proxy=",
    "/gradio_api/stream/",
    "/gradio_api/component_server",
    "/gradio_api/process_recording",
    "/gradio_api/vibe",
    "/gradio_api/undo-vibe-edit",
    "/gradio_api/runs",
    "/gradio_api/dev/",
    "/gradio_api/custom_component/",
    "/gradio_api/openapi.json",
    "/gradio_api/mcp",
    "/openapi.json",
    "/docs",
    "/redoc",
    "/login",
    "/logout",
    "/pwa_icon",
    "/upload",
    "/file=",
    "/call/",
    "/run/",
    "/api/",
    "/queue/",
)
EVENT_PATHS = ("/gradio_api/queue/join", "/gradio_api/run/predict")
HEARTBEAT_PREFIX = "/gradio_api/heartbeat/"
MAX_EVENT_BODY_BYTES = 64 * 1024


class PageGuard:
    """ASGI middleware: refuse what the page does not use, check event calls, note heartbeats.

    Args:
        app: the Gradio app.
        allowed_fn_ids: the page's own event handlers (``fn_index`` values) callable by a page.
        on_heartbeat: called with the session hash when a page opens its heartbeat connection.
        head_html: HTML put first in the ``<head>`` of the page (GET /).
    """

    def __init__(
        self,
        app: Any,
        allowed_fn_ids: Collection[int],
        on_heartbeat: Callable[[str], None],
        head_html: str = "",
    ) -> None:
        self.app = app
        self.allowed_fn_ids = frozenset(allowed_fn_ids)
        self.on_heartbeat = on_heartbeat
        self.head_html = head_html.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path.startswith(REFUSED_PREFIXES) or (
            path.startswith("/gradio_api/run/") and path not in EVENT_PATHS
        ):
            logger.info("refused %s %s", scope.get("method"), path)
            await _refuse(send, 404, "not available on this page")
            return
        if path.startswith(HEARTBEAT_PREFIX):
            session = path[len(HEARTBEAT_PREFIX) :].strip("/")
            if session:
                self.on_heartbeat(session)
        if path in EVENT_PATHS and scope.get("method") == "POST":
            body = await _read_body(receive, MAX_EVENT_BODY_BYTES)
            if body is None:
                await _refuse(send, 413, "request body too large")
                return
            if not self._allowed(body):
                logger.info("refused a call of an internal or unknown handler")
                await _refuse(send, 404, "not available on this page")
                return
            await self.app(scope, _replay(body, receive), send)
            return
        if path == "/" and scope.get("method") == "GET" and self.head_html:
            await self.app(scope, receive, _HeadInjector(send, self.head_html))
            return
        await self.app(scope, receive, send)

    def _allowed(self, body: bytes) -> bool:
        try:
            fn_index = json.loads(body).get("fn_index")
        except (ValueError, AttributeError):
            return False
        return isinstance(fn_index, int) and fn_index in self.allowed_fn_ids


class _HeadInjector:
    """A ``send`` that puts HTML right after ``<head>`` in an HTML response (body buffered)."""

    def __init__(self, send: Send, head_html: bytes) -> None:
        self.send = send
        self.head_html = head_html
        self.start: dict[str, Any] | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            if b"text/html" in headers.get(b"content-type", b"") and not headers.get(
                b"content-encoding"
            ):
                self.start = message
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(self.chunks)
            at = body.lower().find(b"<head>")
            if at >= 0:
                at += len(b"<head>")
                body = body[:at] + self.head_html + body[at:]
            headers = [
                (name, value)
                for name, value in self.start.get("headers", [])
                if name.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(body)).encode()))
            await self.send({**self.start, "headers": headers})
            await self.send({"type": "http.response.body", "body": body})
            return
        await self.send(message)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it grows past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, original: Receive) -> Receive:
    """A ``receive`` that gives the app the body read already, then waits like the original."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
