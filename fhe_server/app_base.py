"""The application shell both servers share: FastAPI, the Host allow-list, JSON 500s, handlers.

``fhe_server.api.create_app`` and ``threeparty.server.api.create_app`` build their application
with ``base_app`` and differ only in their routes, lifespan, settings and error handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import Response

from fhe_server.hosts import AllowedHostsMiddleware
from fhe_server.json_errors import JSONErrorsMiddleware

Handler = Callable[[Request, Any], Awaitable[Response]]


def base_app(
    *,
    title: str,
    version: str,
    description: str,
    lifespan: Callable[[FastAPI], Any],
    settings: Any,
    router: APIRouter,
    handlers: Mapping[type[Exception], Handler],
) -> FastAPI:
    """An application with ``router``, ``settings`` in ``app.state.settings`` and the handlers.

    Args:
        title: the OpenAPI title.
        version: the OpenAPI version.
        description: the OpenAPI description.
        lifespan: the application's lifespan.
        settings: the settings (with ``allowed_hosts``) the routes and the lifespan read.
        router: the routes.
        handlers: {exception type: handler}.
    """
    app = FastAPI(title=title, version=version, description=description, lifespan=lifespan)
    app.state.settings = settings
    app.include_router(router)
    app.add_middleware(AllowedHostsMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(JSONErrorsMiddleware)  # outermost of ours: sees every route's error
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
    return app
