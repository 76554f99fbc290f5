"""The aiohttp application of ``fleetrpc serve``.

:func:`create_app` builds it from a :class:`~fleetrpc.server.context.ServerContext`
and calls each feature's ``setup(app, ctx)``: auth, ThingsBoard's REST API,
metrics and health, the OpenAPI document, then whatever the context lists in
``ctx.features`` (``"package.module"`` or ``"package.module:function"``
names: how jobs, Elves, the console ... add their routes without this file
knowing them).  Handlers reach the context as ``request.app[CTX]``.

Middleware, outermost first: metrics and access log (and the drain's 503),
the error shapes (ThingsBoard's JSON, bare text, empty), the body-size limit
(413 from Content-Length, before anything is read), authentication and rate
limits (``request["principal"]``).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from aiohttp import web

from . import auth, metrics, openapi
from .errors import error_middleware, too_large
from .keys import CTX, OPERATIONS
from .thingsboard import setup as thingsboard_setup

__all__ = ["create_app", "CTX"]


def _size_limit(limit: int):
    @web.middleware
    async def size_limit(request: web.Request, handler):
        # ThingsBoard's PayloadSizeFilter: the Content-Length header decides;
        # a chunked body is capped by client_max_size while it is read.
        length = request.content_length
        if length is not None and length > limit and request.path.startswith("/api/"):
            return too_large(limit)
        return await handler(request)

    return size_limit


def _feature(name: str) -> Callable[[web.Application, Any], None]:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr or "setup")


def create_app(ctx: Any) -> web.Application:
    """The application, every feature's routes added."""
    limit = ctx.settings.http.max_body_bytes
    app = web.Application(
        middlewares=[metrics.metrics_middleware, error_middleware, _size_limit(limit), auth.auth_middleware],
        client_max_size=limit,
    )
    app[CTX] = ctx
    app[OPERATIONS] = []
    for setup in (auth.setup, thingsboard_setup, metrics.setup, openapi.setup,
                  *(_feature(name) for name in getattr(ctx, "features", ()))):
        setup(app, ctx)
    return app
