"""The web console, served by ``fleetrpc serve`` at ``/``.

The browser side is static files (``static/``: Preact + htm, uPlot and Pico,
vendored and pinned by ``tools/vendor-console``; no build step).  The server
side is this package's :func:`setup`, a feature of
:func:`fleetrpc.api.app.create_app`:

- ``GET /`` and ``/static/...``: the console itself;
- ``GET /api/console/events?token=<jwt>``: the live event stream
  (Server-Sent Events, :mod:`.hub`): RPC status events, presence changes and
  job events that the user may see, with a bounded buffer per connection;
- ``GET /api/console/stats``: the figures of the overview page, read from the
  same counters as ``/metrics`` (:mod:`.stats`).

Everything the pages read or change goes through ThingsBoard's REST API, as
any other client's calls do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from ..api.auth import public
from ..api.errors import ErrorBody
from ..api.keys import CTX as _CTX
from ..api.openapi import Answer, Param, operation
from .hub import EventHub, events_stream
from .stats import stats

__all__ = ["setup", "STATIC"]

#: Where the console's files are.
STATIC = Path(__file__).with_name("static")
_HUB: web.AppKey[EventHub] = web.AppKey("fleetrpc_console_hub", EventHub)


@public
async def index(request: web.Request) -> web.FileResponse:
    # Never cached: a new release must load its new modules.
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def device_urls(request: web.Request) -> dict[str, str | None]:
    """Where devices connect: the broker the server uses (its own one's
    address as the browser sees this server when it listens on every
    interface) and fleetrpc's own MQTT listener when it is on."""
    from urllib.parse import urlsplit, urlunsplit

    ctx = request.app[_CTX]
    host = request.url.host or "127.0.0.1"
    broker = ctx.library.mqtt_url if ctx.library is not None else None
    if broker and ctx.broker is not None and ctx.settings.server.broker_host in ("0.0.0.0", "::"):
        parts = urlsplit(broker)
        broker = urlunsplit(parts._replace(netloc=f"{host}:{parts.port}"))
    endpoint = None
    if getattr(ctx, "endpoint", None) is not None and "tcp" in ctx.endpoint.ports:
        endpoint = f"mqtt://{host}:{ctx.endpoint.ports['tcp']}"
    return {"brokerUrl": broker, "endpointUrl": endpoint}


def setup(app: web.Application, ctx: Any) -> None:
    hub = EventHub(ctx)
    app[_HUB] = hub
    ctx.console_hub = hub

    async def start_hub(app: web.Application):
        hub.start()
        yield
        await hub.close()

    app.cleanup_ctx.append(start_hub)

    async def end_streams(app: web.Application) -> None:
        hub.end_streams()  # first: an open stream would hold up the drain

    app.on_shutdown.insert(0, end_streams)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, append_version=False, show_index=False)

    @public
    async def events(request: web.Request) -> web.StreamResponse:
        return await events_stream(request, app[_HUB])

    operation(app, app.router.add_get("/api/console/events", events), tag="console", response_kind="empty",
              summary="The user's live events as Server-Sent Events (RPC status, presence, jobs)",
              query=(Param("token", str, True, "An access token (EventSource cannot send headers)"),),
              statuses={401: Answer("No, a bad or an expired token (errorCode 10 or 11)", ErrorBody),
                        403: Answer("Not a user of the console (errorCode 20)", ErrorBody),
                        429: Answer("Too many open event streams (errorCode 33)", ErrorBody),
                        503: "Server shutting down"})
    async def info(request: web.Request) -> web.Response:
        return web.json_response(device_urls(request))

    operation(app, app.router.add_get("/api/console/info", info), tag="console",
              summary="Where devices connect: the broker's URL and fleetrpc's own MQTT listener's")
    operation(app, app.router.add_get("/api/console/stats", stats), tag="console",
              summary="The overview's figures: the whole server for the system administrator, "
                      "the tenant's for a tenant administrator")
