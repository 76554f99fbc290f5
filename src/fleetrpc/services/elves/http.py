"""Elves over HTTP: ``POST /api/elves`` with the same envelope as over MQTT.

Under the server's JWT auth: ``request["principal"]`` (set by its
middleware) gives the tenant, and the envelope may name the app it acts as
(``key``, ``auth_id``, or the instruction's ``app`` for a tenant admin; see
docs/elves.md).  The answer is the reply envelope with HTTP 200 (Elves
reports failures in ``flag``/``error``, as over MQTT), except a body that
is not an envelope (400) and a principal that may not use Elves (403).

``setup(app, ctx)`` is what the server's ``create_app`` calls: it builds the
:class:`~.service.ElvesService` on ``ctx.dispatcher`` and ``ctx.db``, starts
it with the application and closes it on clean-up, and lets the optional
parts (OpenAPI v2, ...) add their own routes.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

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
    """Add ``POST /api/elves`` (and the optional parts' routes) to ``app``."""
    if service is None:
        from .service import ElvesService

        service = ElvesService(
            ctx.dispatcher,
            ctx.db,
            settings=getattr(ctx, "elves_settings", None),
            directory=getattr(ctx, "agent_directory", None),
        )
    app[ELVES_SERVICE] = service
    app.router.add_post("/api/elves", handle_post)

    async def start(_app: web.Application) -> None:
        await service.start()

    async def stop(_app: web.Application) -> None:
        await service.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    for module in service.parts.values():
        setup_http = getattr(module, "setup_http", None)
        if setup_http is not None:
            setup_http(app, service)
    return service


async def handle_post(request: web.Request) -> web.Response:
    service = request.app[ELVES_SERVICE]
    principal = request.get("principal")
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
