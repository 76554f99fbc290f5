"""ThingsBoard's REST API: RPC v1 and v2, persistent RPC, and the entities
(tenants, customers, users, devices; shared pieces in :mod:`.entities`,
roles in :mod:`.access`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def setup(app: web.Application, ctx: Any) -> None:
    from . import api_keys, device_api, devices, persistent, rpc, tenants, users
    from .access import DeviceCache

    # The RPC path's access checks (access.device_for_rpc) read through it.
    ctx.device_cache = cache = DeviceCache(ctx)

    async def stop_listening(app: web.Application) -> None:
        cache.close()

    app.on_cleanup.append(stop_listening)

    rpc.setup(app, ctx)
    persistent.setup(app, ctx)
    tenants.setup(app, ctx)
    users.setup(app, ctx)
    api_keys.setup(app, ctx)
    devices.setup(app, ctx)
    device_api.setup(app, ctx)
