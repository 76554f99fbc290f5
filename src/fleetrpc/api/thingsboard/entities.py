"""ThingsBoard's entity endpoints.

Now: a device's online state and last activity, read as ThingsBoard exposes
them -- the server-scope attributes ``active`` and ``lastActivityTime``:

    GET /api/plugins/telemetry/DEVICE/{deviceId}/values/attributes/SERVER_SCOPE[?keys=active,lastActivityTime]
    -> [{"lastUpdateTs": ms, "key": "active", "value": true},
        {"lastUpdateTs": ms, "key": "lastActivityTime", "value": ms}]

The CRUD endpoints of tenants, customers, users, devices and credentials
come with the identity repositories.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from ..keys import CTX
from ..openapi import Param, operation
from .access import check_uuid, device_for_read

__all__ = ["setup"]

ACTIVITY_KEYS = ("active", "lastActivityTime")


class AttributeKv(msgspec.Struct):
    """One attribute as ThingsBoard lists it."""

    lastUpdateTs: int
    key: str
    value: Any


async def device_activity(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    device = await device_for_read(ctx, request["principal"], check_uuid(request.match_info["deviceId"]))
    device_id = str(device.id)
    wanted = request.query.get("keys")
    keys = [k for k in wanted.split(",") if k in ACTIVITY_KEYS] if wanted else list(ACTIVITY_KEYS)
    last = ctx.activity.last(device_id)
    info = ctx.dispatcher.device_info(device_id)
    since = int(info.since * 1000) if info is not None else (last or 0)
    online = ctx.dispatcher.is_online(device_id) if info is not None else False
    values = {"active": (online, since), "lastActivityTime": (last or 0, last or 0)}
    now = int(time.time() * 1000)
    return web.json_response([
        {"lastUpdateTs": values[k][1] or now, "key": k, "value": values[k][0]} for k in keys
    ])


def setup(app: web.Application, ctx: Any) -> None:
    operation(
        app, app.router.add_get("/api/plugins/telemetry/DEVICE/{deviceId}/values/attributes/SERVER_SCOPE",
                                device_activity),
        tag="devices", summary="A device's online state and last activity (server-scope attributes)",
        response=list[AttributeKv], query=(Param("keys", str, False, "Comma-separated: active,lastActivityTime"),),
        statuses={404: "No such device in the tenant"},
    )
