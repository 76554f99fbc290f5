"""The aiohttp application of ``fleetrpc serve``.

:func:`create_app` builds it from a :class:`~fleetrpc.server.context.ServerContext`
and calls each feature's ``setup(app, ctx)``: auth, ThingsBoard's REST API,
metrics and health, the OpenAPI document, then whatever the context lists in
``ctx.features`` (``"package.module"`` or ``"package.module:function"``
names: how jobs, Elves, the console ... add their routes without this file
knowing them).  Handlers reach the context as ``request.app[CTX]``.

One middleware (``api/middleware.py``) does, in this order, what every
request needs: the drain's 503, metrics and the access log, the body-size
limit (413 from Content-Length, before anything is read), authentication
and rate limits (``request[PRINCIPAL]`` (api/keys.py)), and the error shapes
(ThingsBoard's JSON, bare text, empty).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from aiohttp import web

from . import auth, metrics, openapi
from .keys import CTX, OPERATIONS
from .middleware import request_middleware
from .thingsboard import setup as thingsboard_setup

__all__ = ["create_app", "CTX"]


def _feature(name: str) -> Callable[[web.Application, Any], None]:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr or "setup")


def create_app(ctx: Any) -> web.Application:
    """The application, every feature's routes added."""
    app = web.Application(middlewares=[request_middleware(ctx)], client_max_size=ctx.settings.http.max_body_bytes)
    app[CTX] = ctx
    app[OPERATIONS] = []
    for setup in (auth.setup, thingsboard_setup, metrics.setup, openapi.setup,
                  *(_feature(name) for name in getattr(ctx, "features", ()))):
        setup(app, ctx)
    return app
