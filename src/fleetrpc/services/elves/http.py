"""Elves over HTTP: ``POST /api/elves`` with the same envelope as over MQTT.

Under the server's JWT auth: ``request[PRINCIPAL]`` (api/keys.py) (set by its
middleware) gives the tenant, and the envelope may name the app it acts as
(``key``, ``auth_id``, or the instruction's ``app`` for a tenant admin; see
docs/elves.md).  The answer is the reply envelope with HTTP 200 (Elves
reports failures in ``flag``/``error``, as over MQTT), except a body that
is not an envelope (400) and a principal that may not use Elves (403).

``setup(app, ctx)`` is what the server's ``create_app`` calls (the
server's ``elves`` part lists it in ``ctx.features``): it serves the
:class:`~.service.ElvesService` the part started (``ctx.elves``), adds the
app-key administration (:mod:`.admin`) and lets the optional parts (OpenAPI
v2, the CMDB import) add their own routes; every route is described in the
server's OpenAPI document.  Without ``ctx.elves`` (a program of its own, a
test) it builds the service on ``ctx.dispatcher`` and ``ctx.db``, starts it
with the application and closes it on clean-up.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ...api.keys import PRINCIPAL
from .envelope import error_envelope, parse_envelope
from .errors import Code, ElvesError
from .router import ElvesCall

__all__ = ["setup", "ELVES_SERVICE", "handle_post", "ALLOWED_AUTHORITIES"]

#: Where ``setup`` keeps the service on the application.
ELVES_SERVICE: web.AppKey = web.AppKey("elves_service", object)
#: Who may use Elves over HTTP: the tenant's administrators.  Customers do
#: not own agents; the system administrator has no tenant of agents.
ALLOWED_AUTHORITIES = frozenset({"TENANT_ADMIN"})


def setup(app: web.Application, ctx: Any, *, service: Any = None) -> Any:
    """Add ``POST /api/elves``, the app administration and the optional
    parts' routes to ``app``."""
    if service is None:
        service = getattr(ctx, "elves", None)
    if service is None:
        from .service import ElvesService

        service = ElvesService(
            ctx.dispatcher,
            ctx.db,
            settings=getattr(ctx, "elves_settings", None),
            directory=getattr(ctx, "agent_directory", None),
        )

        async def start(_app: web.Application) -> None:
            await service.start()

        async def stop(_app: web.Application) -> None:
            await service.close()

        app.on_startup.append(start)
        app.on_cleanup.append(stop)
    app[ELVES_SERVICE] = service
    app.router.add_post("/api/elves", handle_post)
    from .admin import setup_admin

    setup_admin(app, service)
    for module in service.parts.values():
        setup_http = getattr(module, "setup_http", None)
        if setup_http is not None:
            setup_http(app, service)
    _describe(app)
    return service


# -- the OpenAPI description (api/openapi.py) ------------------------------------


class EnvelopeBody(msgspec.Struct):
    """An Elves call: the service, the function and its flat arguments (docs/elves.md)."""

    mqt: str
    mqs: str
    mqf: str


class EnvelopeReply(msgspec.Struct):
    """The reply envelope: ``flag`` "true"/"false", ``error`` "[code]Message", the function's fields."""

    mqt: str
    mqs: str
    mqf: str
    flag: str
    error: str


class V2Answer(msgspec.Struct):
    """Elves' OpenAPI v2 answer (always HTTP 200)."""

    flag: str
    error: str
    result: Any = None


_SIGNED = ("auth_id", "timestamp", "sign_type", "sign")
_V2_PARAMS: dict[str, tuple[str, ...]] = {
    "/api/v2/rt/exec": ("ip", "app", "func", "param", "timeout", "proxy"),
    "/api/v2/cron/add": ("ip", "app", "func", "param", "timeout", "proxy", "mode", "rule"),
    "/api/v2/cron/start": ("cron_id",), "/api/v2/cron/stop": ("cron_id",),
    "/api/v2/cron/delete": ("cron_id",), "/api/v2/cron/detail": ("cron_id",),
    "/api/v2/queue/create": ("app",),
    "/api/v2/queue/addtask": ("queue_id", "ip", "func", "param", "timeout", "proxy", "mode", "depend_task_id"),
    "/api/v2/queue/commit": ("queue_id",), "/api/v2/queue/stop": ("queue_id",),
    "/api/v2/queue/result": ("queue_id",), "/api/v2/info/app": (), "/api/v2/info/agents": (),
}


def _describe(app: web.Application) -> None:
    """Record the Elves routes in the server's OpenAPI document (an
    application made without ``create_app`` has none)."""
    from ...api.keys import OPERATIONS
    from ...api.openapi import Answer, Param, operation

    if OPERATIONS not in app:
        return
    described = {(op.method, op.path) for op in app[OPERATIONS]}
    for route in app.router.routes():
        if route.resource is None or route.method == "HEAD":
            continue
        path = route.resource.canonical
        if (route.method, path) in described:
            continue
        if path == "/api/elves":
            operation(app, route, tag="elves", summary="Call an Elves function (the envelope, as over MQTT)",
                      body=EnvelopeBody, response=EnvelopeReply,
                      statuses={400: Answer("Not an envelope: the error envelope", EnvelopeReply),
                                403: Answer("Not a tenant administrator: the error envelope", EnvelopeReply)})
        elif path == "/api/elves/cmdb":
            operation(app, route, tag="elves", summary="Import the CMDB from a CSV body (text/csv)",
                      response=V2Answer, query=[Param("replace", bool, description="replace the whole table")],
                      statuses={400: Answer("Bad CSV (flag false, error)", V2Answer),
                                403: Answer("Not a tenant administrator (flag false, error)", V2Answer),
                                413: "CSV too large"})
        elif path in _V2_PARAMS:
            params = [Param(n, required=True, description="signature (docs/elves-cron.md)") for n in _SIGNED]
            params += [Param(n) for n in _V2_PARAMS[path]]
            operation(app, route, tag="elves-v2", summary=f"Elves OpenAPI v2 {path[len('/api/v2/'):]} (signed)",
                      response=V2Answer, query=params)


async def handle_post(request: web.Request) -> web.Response:
    service = request.app[ELVES_SERVICE]
    principal = request.get(PRINCIPAL)
    if principal is None or getattr(principal, "authority", None) not in ALLOWED_AUTHORITIES:
        err = ElvesError(Code.DENIED, "Permission Denied: Elves is for tenant administrators")
        return web.json_response(error_envelope(err), status=403)
    body = await request.read()
    try:
        envelope = parse_envelope(body)  # a body that is no envelope at all is a 400
    except ElvesError as err:
        return web.json_response(error_envelope(err, body=None), status=400)
    call = ElvesCall(tenant_id=principal.tenant_id, principal=principal, via="http")
    return web.json_response(await service.handle(envelope.body, call))
