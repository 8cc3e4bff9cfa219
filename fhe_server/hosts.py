"""Answer only requests addressed to an accepted host name (against DNS rebinding).

A web page on ``evil.example`` can make its own name resolve to 127.0.0.1 and then talk to a
server on the visitor's loopback as if it were same-origin; the Host header still says
``evil.example``. Starlette's ``TrustedHostMiddleware`` does the same check but answers in plain
text and does not read IPv6 literals (``[::1]:8000``); this one answers ``{"detail": ...}``.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


def host_name(host_header: str) -> str:
    """The name part of a Host header, lower-cased, without the port (``[::1]:80`` -> ``[::1]``)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.split(":", 1)[0]


def host_allowed(name: str, allowed: Iterable[str]) -> bool:
    """Whether a host name matches one of the accepted names ("*", "*.domain" or a name)."""
    for pattern in allowed:
        pattern = pattern.strip().lower()
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class AllowedHostsMiddleware:
    """Refuse, with 400 and a JSON detail, HTTP requests whose Host is not accepted."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str]) -> None:
        """Wrap ``app``; ``allowed_hosts`` as in ``settings.ServerSettings.allowed_hosts``."""
        self.app = app
        self.allowed_hosts = list(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass accepted requests (and lifespan events) on; answer 400 to the others."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        name = host_name(Headers(scope=scope).get("host", ""))
        if name and host_allowed(name, self.allowed_hosts):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            status_code=400,
            content={"detail": f"this server does not answer for host {name or '(none)'!r}"},
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
