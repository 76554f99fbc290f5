"""ThingsBoard's entity endpoints (tenants, customers, users, devices,
credentials): built on the identity repositories once they are merged."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def setup(app: web.Application, ctx: Any) -> None:
    pass
