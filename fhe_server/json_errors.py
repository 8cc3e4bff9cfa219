"""Answer every unexpected error as JSON and keep the connection open.

Starlette's outermost middleware answers an unexpected exception with the app's handler for
``Exception`` and then raises it again, on which uvicorn closes the connection. Behind nginx,
that closed kept-alive connection then fails the next request sent on it, and nginx counts that
failure against a healthy replica. ``JSONErrorsMiddleware`` sits inside it: it logs the error
with its trace and answers 500 ``{"detail": "internal server error"}`` without raising again.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("fhe_server")


class JSONErrorsMiddleware:
    """Turn an exception that escapes the routes into a JSON 500 (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app``."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request; answer 500 if it raises before its answer started."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            logger.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # half an answer is out: only closing the connection can tell the client
            response = JSONResponse(status_code=500, content={"detail": "internal server error"})
            await response(scope, receive, send)
