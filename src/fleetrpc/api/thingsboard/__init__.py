"""ThingsBoard's REST API: RPC v1 and v2, persistent RPC, and the entities
(tenants, customers, users, devices; shared pieces in :mod:`.entities`,
roles in :mod:`.access`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def setup(app: web.Application, ctx: Any) -> None:
    from . import devices, persistent, rpc, tenants, users

    rpc.setup(app, ctx)
    persistent.setup(app, ctx)
    tenants.setup(app, ctx)
    users.setup(app, ctx)
    devices.setup(app, ctx)
