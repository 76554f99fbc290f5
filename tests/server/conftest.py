"""Fixtures of the server's tests: a real server on a free port, a real
broker (tests/services.py), the real identity repositories on SQLite and on
PostgreSQL (``store_url`` runs each test on both), and an HTTP client."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import aiohttp
import msgspec
import pytest

from fleetrpc.config import load_server_settings
from fleetrpc.server import Server, ServerContext
from fleetrpc.store.db import open_database
from fleetrpc.store.entities import (
    NULL_UUID,
    CustomerRepository,
    DeviceRepository,
    TenantRepository,
    UserRepository,
)
from tests.entities_fixtures import CHEAP_HASHER

SECRET = "test-secret-" + "x" * 60
PASSWORD = "secret"


def server_settings(mqtt_url: str, store_url: str, tmp_path, **sections: dict[str, Any]):
    overrides: dict[str, dict[str, Any]] = {
        "server": {"data_dir": str(tmp_path / "data"), "drain_timeout_s": 5.0},
        "mqtt": {"url": mqtt_url},
        "store": {"url": store_url, "ttl_enabled": False},
        "dispatch": {"min_timeout_ms": 0},
        "http": {"port": 0, "access_log": False},
        "jwt": {"secret": SECRET},
        "auth": {"failed_login_delay_ms": 0},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_server_settings(env={}, overrides=overrides)


class Account(msgspec.Struct):
    id: str
    email: str
    tenant_id: str = NULL_UUID
    customer_id: str = NULL_UUID


class Dev(msgspec.Struct):
    id: str
    name: str
    tenant_id: str
    customer_id: str = NULL_UUID


def _id() -> str:
    return str(uuid.uuid4())


class World:
    """Two tenants; tenant 1 has customers 1 and 2; users of every role; a
    device per owner.  The ids are chosen up front; :meth:`seed` writes it
    all into a database (once per database) through the repositories."""

    def __init__(self) -> None:
        self.t1, self.t2 = _id(), _id()
        self.c1, self.c2 = _id(), _id()
        self.c3 = _id()  # tenant 2's customer
        self.sysadmin = Account(_id(), "sysadmin@thingsboard.org")
        self.tenant = Account(_id(), "tenant@thingsboard.org", self.t1)
        self.customer = Account(_id(), "customera@thingsboard.org", self.t1, self.c1)
        self.customer2 = Account(_id(), "customerb@thingsboard.org", self.t1, self.c2)
        self.tenant2 = Account(_id(), "tenant2@thingsboard.org", self.t2)
        self.customer3 = Account(_id(), "customerc@thingsboard.org", self.t2, self.c3)
        self.dev_c1 = Dev(_id(), "Device C1", self.t1, self.c1)   # customer 1's device
        self.dev_c2 = Dev(_id(), "Device C2", self.t1, self.c2)   # customer 2's device
        self.dev_t1 = Dev(_id(), "Device T1", self.t1)            # tenant 1's, unassigned
        self.dev_t2 = Dev(_id(), "Device T2", self.t2)            # tenant 2's
        self._seeded: set[str] = set()

    @property
    def users(self) -> tuple[Account, ...]:
        return (self.sysadmin, self.tenant, self.customer, self.customer2, self.tenant2, self.customer3)

    async def seed(self, url: str) -> None:
        if url in self._seeded:
            return
        db = await open_database(url)
        try:
            devices = DeviceRepository(db)
            tenants = TenantRepository(db, devices=devices)
            customers = CustomerRepository(db)
            users = UserRepository(db, hasher=CHEAP_HASHER)
            await tenants.create("Tenant 1", id=self.t1)
            await tenants.create("Tenant 2", id=self.t2)
            await customers.create(self.t1, "Customer A", id=self.c1)
            await customers.create(self.t1, "Customer B", id=self.c2)
            await customers.create(self.t2, "Customer C", id=self.c3)
            for a in self.users:
                authority = ("SYS_ADMIN" if a.tenant_id == NULL_UUID else
                             "TENANT_ADMIN" if a.customer_id == NULL_UUID else "CUSTOMER_USER")
                await users.create(a.tenant_id, a.customer_id, a.email, authority, password=PASSWORD, id=a.id)
            for d in (self.dev_c1, self.dev_c2, self.dev_t1, self.dev_t2):
                await devices.create(d.tenant_id, d.name, customer_id=d.customer_id, id=d.id)
        finally:
            await db.close()
        self._seeded.add(url)


class Api:
    """A keep-alive HTTP client of one server."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def login(self, email: str, password: str = PASSWORD) -> str:
        async with self.session.post(f"{self.url}/api/auth/login", json={"username": email, "password": password}) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["token"]

    async def request(self, method: str, path: str, token: str | None = None, *, json: Any = None,
                      data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes, aiohttp.ClientResponse]:
        h = dict(headers or {})
        if token is not None:
            h["X-Authorization"] = f"Bearer {token}"
        async with self.session.request(method, f"{self.url}{path}", json=json, data=data, headers=h) as r:
            return r.status, await r.read(), r


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/server.db"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def store_url(request, sqlite_url) -> str:
    """Each server test on SQLite and on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return sqlite_url
    return request.getfixturevalue("fresh_pg_db")


@pytest.fixture
def start_server(mqtt_url, store_url, tmp_path, world):
    """``async with start_server(**sections) as (server, api)``: a server on
    ``store_url`` with the world seeded in it."""

    @contextlib.asynccontextmanager
    async def start(*, seed: bool = True, ssl: Any = None, demo: bool = False, **sections):
        settings = server_settings(mqtt_url, store_url, tmp_path, **sections)
        if seed:
            await world.seed(store_url)
        ctx = ServerContext(settings)
        ctx.password_hasher = CHEAP_HASHER
        ctx.demo = demo
        server = Server(settings, ctx=ctx)
        await server.start()
        try:
            if ctx.dispatcher is not None and ctx.dispatcher.settings.presence:
                # the server took requests only once the broker's retained presence was in
                assert ctx.dispatcher.stats.presence_synced == 1
            connector = aiohttp.TCPConnector(ssl=ssl) if ssl is not None else None
            async with aiohttp.ClientSession(connector=connector) as session:
                yield server, Api(ctx.url, session)
        finally:
            await server.stop()

    return start


@contextlib.asynccontextmanager
async def cluster_nodes(mqtt_url: str, store_url: str, tmp_path, world, n: int = 2,
                        poll_interval_s: float = 30.0, **sections):
    """``n`` servers (nodes of a cluster) on one database: their Api
    clients and the servers.  ``poll_interval_s``: the cluster's poll,
    long by default so that what a test sees came by notification."""
    await world.seed(store_url)
    servers: list[Server] = []
    try:
        for k in range(n):
            settings = server_settings(mqtt_url, store_url, tmp_path / f"node{k}",
                                       cluster={"lease_ttl_s": 2.0, "partitions": 16,
                                                "poll_interval_s": poll_interval_s},
                                       **sections)
            ctx = ServerContext(settings)
            ctx.password_hasher = CHEAP_HASHER
            server = Server(settings, ctx=ctx)
            await server.start()
            servers.append(server)
        async with aiohttp.ClientSession() as session:
            yield [Api(s.ctx.url, session) for s in servers], servers
    finally:
        for server in reversed(servers):
            await server.stop()
