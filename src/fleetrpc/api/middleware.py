"""The API's one middleware: everything every request goes through.

In order, as the four middlewares it replaces did (metrics and access log,
error shapes, body-size limit, authentication and rate limits):

1. once the server drains, 503 and ``Connection: close``;
2. the request is counted in flight (the drain waits for it), timed, and
   counted by route, method and status afterwards; the access log line;
3. under ``/api/``: a ``Content-Length`` over ``http.max_body_bytes`` is a
   413 before anything is read (ThingsBoard's PayloadSizeFilter); a
   handler not marked public needs a valid token (``request[PRINCIPAL]`` (api/keys.py))
   and passes the rate limits;
4. whatever the handler raises is answered in ThingsBoard's shapes
   (:func:`~fleetrpc.api.errors.answer_for`).

One middleware instead of four because each costs a coroutine frame, a
``functools.partial`` call and an exception re-raise per layer: a
measurable share of a request that aiohttp itself serves in ~100 us on the
project's machine (docs/server.md, "Performance").  What depends on the
route only -- its metric label and counters, whether it is under /api,
whether it is public -- is worked out once per route and kept.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from .auth import Principal, authenticate_request
from .errors import ApiError, answer_for, loggable_path, too_large
from .metrics import HttpStats
from .keys import PRINCIPAL

__all__ = ["request_middleware"]

log = logging.getLogger("fleetrpc.access")


class _Route:
    """What the middleware needs to know about one route."""

    __slots__ = ("api", "public", "stats")

    def __init__(self, api: bool | None, public: bool, stats: HttpStats | None) -> None:
        #: under /api/ (None: depends on the path, e.g. a pattern starting with a variable)
        self.api = api
        #: the handler needs no token (``fleetrpc_public``)
        self.public = public
        #: its counters (None: the method is the request's, a route for any method)
        self.stats = stats


def _under_api(pattern: str) -> bool | None:
    """Whether every path matching ``pattern`` is under /api/; None if it
    depends on the path."""
    if "{" not in pattern:
        return pattern.startswith("/api/")
    static = pattern.split("{", 1)[0]
    if static.startswith("/api/"):
        return True
    if "/api/".startswith(static):
        return None
    return False


def request_middleware(ctx: Any):
    """The middleware of ``create_app(ctx)``."""
    http = ctx.settings.http
    limit = http.max_body_bytes
    access_log = http.access_log
    metrics = ctx.metrics
    routes: dict[Any, _Route] = {}
    perf_counter = time.perf_counter

    def describe(request: web.Request) -> _Route:
        route = request.match_info.route
        resource = route.resource
        if resource is None:
            # No route, or not this method: a new SystemRoute per request.
            return _Route(request.path.startswith("/api/"), False,
                          metrics.http_stats("unmatched", request.method))
        pattern = resource.canonical
        method = route.method
        info = _Route(_under_api(pattern), bool(getattr(route.handler, "fleetrpc_public", False)),
                      None if method == "*" else metrics.http_stats(pattern, method))
        routes[route] = info
        return info

    @web.middleware
    async def middleware(request: web.Request, handler):
        if ctx.draining:
            return web.Response(status=503, text="Server is shutting down", headers={"Connection": "close"})
        ctx.http_started()
        started = perf_counter()
        status = 500
        info = None
        try:
            try:
                info = routes.get(request.match_info.route)
                if info is None:
                    info = describe(request)
                api = info.api
                if api is None:
                    api = request.path.startswith("/api/")
                if not api:
                    response = await handler(request)
                else:
                    length = request.content_length
                    if length is not None and length > limit:
                        response = too_large(limit)
                    else:
                        if not info.public:
                            principal = authenticate_request(ctx, request)
                            if principal.__class__ is not Principal:  # an API key read from the database
                                principal = await principal
                            request[PRINCIPAL] = principal
                        response = await handler(request)
            except ApiError as exc:
                response = exc.response()
            except Exception as exc:
                response = answer_for(request, exc, limit)  # raises what aiohttp answers itself
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            ctx.http_finished()
            seconds = perf_counter() - started
            stats = info.stats if info is not None else None
            if stats is None:
                stats = metrics.http_stats(_label(request), request.method)
            stats.done(status, seconds)
            if access_log and log.isEnabledFor(logging.INFO):
                p = request.get(PRINCIPAL)
                log.info("%s %s %d %.1fms", request.method, loggable_path(request.path_qs)[:200], status, seconds * 1000,
                         extra={"remote": request.remote, "status": status, "user": p.user_id if p else None,
                                "ms": round(seconds * 1000, 2)})

    return middleware


def _label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical
