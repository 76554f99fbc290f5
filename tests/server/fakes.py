"""In-memory stand-ins for the identity repositories, for tests of the HTTP
layer that do not need a database (auth, RPC status codes, drain)."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from fleetrpc.api.auth import NULL_UUID, LoginRefused


class FakeDevice(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    customer_id: str = NULL_UUID
    name: str = "device"


class FakeUser(msgspec.Struct, kw_only=True):
    id: str
    email: str
    authority: str
    tenant_id: str = NULL_UUID
    customer_id: str = NULL_UUID
    first_name: str | None = None
    last_name: str | None = None
    enabled: bool = True
    password: str = "secret"

    def to_thingsboard(self) -> dict[str, Any]:
        return {"id": {"entityType": "USER", "id": self.id}, "email": self.email,
                "authority": self.authority, "tenantId": {"entityType": "TENANT", "id": self.tenant_id},
                "customerId": {"entityType": "CUSTOMER", "id": self.customer_id}}


class FakeDevices:
    def __init__(self) -> None:
        self.rows: dict[str, FakeDevice] = {}

    def add(self, tenant_id: str, customer_id: str = NULL_UUID) -> FakeDevice:
        d = FakeDevice(id=str(uuid.uuid4()), tenant_id=tenant_id, customer_id=customer_id)
        self.rows[d.id] = d
        return d

    async def get(self, tenant_id: str, device_id: str) -> FakeDevice | None:
        d = self.rows.get(device_id)
        return d if d is not None and d.tenant_id == tenant_id else None


class FakeUsers:
    def __init__(self) -> None:
        self.rows: dict[str, FakeUser] = {}

    def add(self, email: str, authority: str, **kw: Any) -> FakeUser:
        u = FakeUser(id=str(uuid.uuid4()), email=email, authority=authority, **kw)
        self.rows[u.id] = u
        return u

    async def authenticate(self, email: str, password: str) -> FakeUser:
        for u in self.rows.values():
            if u.email == email:
                if u.password != password:
                    break
                if not u.enabled:
                    raise LoginRefused("User account is not active")
                return u
        raise LoginRefused("Invalid username or password")

    async def by_id(self, user_id: str) -> FakeUser | None:
        return self.rows.get(user_id)


class World:
    """Two tenants; tenant 1 has two customers; a device per owner."""

    def __init__(self) -> None:
        self.devices = FakeDevices()
        self.users = FakeUsers()
        self.t1, self.t2 = str(uuid.uuid4()), str(uuid.uuid4())
        self.c1, self.c2 = str(uuid.uuid4()), str(uuid.uuid4())
        self.sysadmin = self.users.add("sysadmin@thingsboard.org", "SYS_ADMIN")
        self.tenant = self.users.add("tenant@thingsboard.org", "TENANT_ADMIN", tenant_id=self.t1)
        self.customer = self.users.add("customerA@thingsboard.org", "CUSTOMER_USER", tenant_id=self.t1, customer_id=self.c1)
        self.customer2 = self.users.add("customerB@thingsboard.org", "CUSTOMER_USER", tenant_id=self.t1, customer_id=self.c2)
        self.tenant2 = self.users.add("tenant2@thingsboard.org", "TENANT_ADMIN", tenant_id=self.t2)
        self.dev_c1 = self.devices.add(self.t1, self.c1)   # customer 1's device
        self.dev_t1 = self.devices.add(self.t1)            # tenant 1's, unassigned
        self.dev_t2 = self.devices.add(self.t2)            # tenant 2's

    async def open(self, ctx: Any):
        ctx.devices = self.devices
        ctx.users = self.users

        async def close() -> None:
            return None

        return close
