"""The server of the fault probes, in a process of its own.

    python -m tests.faults.serve SPEC.json

SPEC is JSON: ``{"settings": {section: {key: value}}, "tenant": uuid,
"devices": [uuid, ...]}``.  It runs what ``fleetrpc serve`` runs
(:func:`fleetrpc.server.process.serve`: every part, the same shutdown on
SIGTERM), with one difference: the identity repositories are in memory and
hold one tenant administrator (``tenant@faults.test`` / ``secret``) owning
SPEC's devices.  This build has no identity repositories on the database
yet (``fleetrpc serve`` says so and stops); the probes exercise the
dispatcher, the persistent engine, the store and the API, which do not
care where users and devices come from.

Prints ``READY <url> <the collector's first threshold>`` on stdout once
every part is up; logs go to
stderr (the probes scan them for tracebacks).
"""

from __future__ import annotations

import gc
import json
import sys
from typing import Any

import msgspec

from fleetrpc.api.auth import NULL_UUID, LoginRefused
from fleetrpc.config import load_server_settings
from fleetrpc.runner import run
from fleetrpc.server.context import ServerContext
from fleetrpc.server.logs import configure_logging
from fleetrpc.server.process import serve

EMAIL = "tenant@faults.test"
PASSWORD = "secret"
USER_ID = "5e1f0000-0000-4000-8000-000000000001"


class Device(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    customer_id: str = NULL_UUID
    name: str = "device"


class User(msgspec.Struct, kw_only=True):
    id: str
    email: str
    authority: str
    tenant_id: str
    customer_id: str = NULL_UUID
    first_name: str | None = None
    last_name: str | None = None
    enabled: bool = True

    def to_thingsboard(self) -> dict[str, Any]:
        return {"id": {"entityType": "USER", "id": self.id}, "email": self.email,
                "authority": self.authority, "tenantId": {"entityType": "TENANT", "id": self.tenant_id},
                "customerId": {"entityType": "CUSTOMER", "id": self.customer_id}}


class Devices:
    def __init__(self, tenant: str, ids: list[str]) -> None:
        self.rows = {i: Device(id=i, tenant_id=tenant) for i in ids}

    async def get(self, tenant_id: str, device_id: str) -> Device | None:
        d = self.rows.get(device_id)
        return d if d is not None and d.tenant_id == tenant_id else None

    async def all_ids(self):
        # What presence keeps state for (fleetrpc.server.registered).
        yield list(self.rows)

    async def ids_created_since(self, ms: int) -> list[str]:
        return []  # fixed at start


class Users:
    def __init__(self, tenant: str) -> None:
        self.user = User(id=USER_ID, email=EMAIL, authority="TENANT_ADMIN", tenant_id=tenant)

    async def authenticate(self, email: str, password: str) -> User:
        if email == EMAIL and password == PASSWORD:
            return self.user
        raise LoginRefused("Invalid username or password")

    async def by_id(self, user_id: str) -> User | None:
        return self.user if user_id == USER_ID else None


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    settings = load_server_settings(env={}, overrides=spec["settings"])
    configure_logging(settings.server.log_level, settings.server.log_format)
    ctx = ServerContext(settings)
    devices, users = Devices(spec["tenant"], spec["devices"]), Users(spec["tenant"])

    async def open_repositories(ctx: ServerContext):
        ctx.devices, ctx.users = devices, users

        async def close() -> None:
            return None

        return close

    ctx.open_repositories = open_repositories

    def ready(server) -> None:
        print("READY", server.ctx.url, gc.get_threshold()[0], flush=True)

    run(serve(settings, ctx=ctx, ready=ready))


if __name__ == "__main__":
    main(sys.argv[1])
