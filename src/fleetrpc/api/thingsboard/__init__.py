"""ThingsBoard's REST API: RPC v1 and v2, persistent RPC, entities."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def setup(app: web.Application, ctx: Any) -> None:
    from . import entities, persistent, rpc

    rpc.setup(app, ctx)
    persistent.setup(app, ctx)
    entities.setup(app, ctx)
