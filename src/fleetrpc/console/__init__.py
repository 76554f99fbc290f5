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
from ..api.keys import CTX
from .hub import EventHub, events_stream
from .stats import TenantRpcMetrics, stats, tenant_rpc_middleware

__all__ = ["setup", "STATIC"]

#: Where the console's files are.
STATIC = Path(__file__).with_name("static")
_HUB: web.AppKey[EventHub] = web.AppKey("fleetrpc_console_hub", EventHub)


@public
async def index(request: web.Request) -> web.FileResponse:
    # Never cached: a new release must load its new modules.
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def setup(app: web.Application, ctx: Any) -> None:
    hub = EventHub(ctx)
    app[_HUB] = hub
    ctx.console_hub = hub
    app.middlewares.append(tenant_rpc_middleware(TenantRpcMetrics(ctx.metrics.registry)))

    async def start_hub(app: web.Application):
        hub.start()
        yield
        await hub.close()

    app.cleanup_ctx.append(start_hub)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, append_version=False, show_index=False)

    @public
    async def events(request: web.Request) -> web.StreamResponse:
        return await events_stream(request, app[_HUB])

    app.router.add_get("/api/console/events", events)
    app.router.add_get("/api/console/stats", stats)
