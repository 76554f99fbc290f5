"""An Elves rig: a dispatcher with the Elves services on a real Mosquitto,
a database, an app key, agents and an app client."""

from __future__ import annotations

import contextlib
import itertools
import sys
import textwrap
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fleetrpc.agent import ElvesAgent
from fleetrpc.api.keys import PRINCIPAL
from fleetrpc.config import Settings
from fleetrpc.dispatch import Dispatcher
from fleetrpc.services.elves import NULL_TENANT, ElvesSettings
from fleetrpc.services.elves.client import ElvesClient
from fleetrpc.services.elves.http import setup as elves_http_setup
from fleetrpc.services.elves.service import ElvesService
from fleetrpc.store.db import open_database
from tests.helpers.http_receiver import post_receiver
from tests.helpers.waiting import wait_until

_seq = itertools.count()

WORKER = textwrap.dedent(
    """\
    import base64, json, sys, time
    app, func, b64 = sys.argv[1], sys.argv[2], sys.argv[3]
    param = base64.b64decode(b64).decode()
    if func == "echo":
        print("<ElvesWFlag>true</ElvesWFlag><ElvesWResult>%s:%s:%s</ElvesWResult>" % (app, func, param))
    elif func == "fail":
        print("<ElvesWFlag>false</ElvesWFlag><ElvesWResult>it went wrong</ElvesWResult>")
    elif func == "sleep":
        time.sleep(float(json.loads(param)["s"]))
        print("<ElvesWFlag>true</ElvesWFlag><ElvesWResult>slept</ElvesWResult>")
    elif func == "noflag":
        print("hello")
    else:
        sys.exit(3)
    """
)


@pytest.fixture
def apps_root(tmp_path: Path) -> Path:
    """An agent root with app ``ops``: a Python worker script."""
    folder = tmp_path / "apps" / "ops"
    folder.mkdir(parents=True)
    (folder / "worker.py").write_text(WORKER)
    (folder / "version").write_text("1.2.0\n")
    return tmp_path


class Rig:
    def __init__(self, url: str, prefix: str, dispatcher, service, db, key, client, root: Path) -> None:
        self.url, self.prefix, self.d, self.elves, self.db = url, prefix, dispatcher, service, db
        self.key, self.app, self.root = key, client, root
        self.agents: list[ElvesAgent] = []

    async def agent(self, ip: str, **kw) -> ElvesAgent:
        kw.setdefault("heartbeat_interval", 30.0)
        a = ElvesAgent(ip, self.url, root=self.root, prefix=self.prefix, **kw)

        @a.function("ops", "hello")
        def hello(param):
            return True, f"hello {param.get('name', 'world') if isinstance(param, dict) else param}"

        await a.start()
        self.agents.append(a)
        await wait_until(lambda: self.d.is_online(a.client.device_id) and self.d.device_info(a.client.device_id).heartbeat)
        return a

    async def client(self, app: str | None = None, key: str | None = "default") -> ElvesClient:
        c = ElvesClient(app or self.key.app, self.url, prefix=self.prefix, key=self.key.auth_key if key == "default" else key)
        await c.connect()
        self._clients.append(c)
        return c


@pytest.fixture
async def rig(mqtt_url, apps_root):
    n = next(_seq)
    prefix = f"elves{n}"
    d = Dispatcher(Settings(mqtt_url=mqtt_url, node_id=f"n{n}", prefix=prefix, min_timeout_ms=0))
    await d.start()
    db = await open_database("sqlite://:memory:")
    service = ElvesService(d, db, settings=ElvesSettings(accept_timeout_s=5.0, agent_grace_s=2.0))
    await service.start()
    key = await service.supervisor.create_app(NULL_TENANT, "ops")
    await service.supervisor.grant(NULL_TENANT, "ops", ips=["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.9.9.9"])
    client = ElvesClient("ops", mqtt_url, prefix=prefix, key=key.auth_key)
    await client.connect()
    r = Rig(mqtt_url, prefix, d, service, db, key, client, apps_root)
    r._clients = [client]
    yield r
    for c in r._clients:
        await c.close()
    for a in r.agents:
        await a.close()
    await service.close()
    await d.close()
    await db.close()


@web.middleware
async def fake_auth(request, handler):
    """Stands in for the server's JWT middleware: the caller is who the
    X-Test-Authority / X-Test-Tenant headers say (nobody without them)."""
    authority = request.headers.get("X-Test-Authority")
    if authority:
        request[PRINCIPAL] = types.SimpleNamespace(
            user_id="u1", tenant_id=request.headers.get("X-Test-Tenant", NULL_TENANT),
            customer_id=NULL_TENANT, authority=authority,
        )
    return await handler(request)


@web.middleware
async def tenant_admin(request, handler):
    """Stands in for the server's JWT middleware: every caller is the null
    tenant's administrator."""
    request[PRINCIPAL] = types.SimpleNamespace(
        user_id="u1", tenant_id=NULL_TENANT, customer_id=NULL_TENANT, authority="TENANT_ADMIN")
    return await handler(request)


@contextlib.asynccontextmanager
async def elves_http(
    rig, *middlewares, extra: Callable[[web.Application], None] | None = None
) -> AsyncIterator[TestClient]:
    """A test client of the Elves HTTP routes over ``rig`` (anything with
    ``d``, ``db`` and ``elves``); ``extra`` adds more to the app."""
    app = web.Application(middlewares=list(middlewares))
    elves_http_setup(app, types.SimpleNamespace(dispatcher=rig.d, db=rig.db), service=rig.elves)
    if extra is not None:
        extra(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def wait_task(rig, task_id: str, predicate, timeout: float = 5.0):
    """Poll the task log until ``predicate(row)`` holds for the task."""
    import asyncio
    import time

    end = time.monotonic() + timeout
    while True:
        rows = await rig.elves.tasklog.get(NULL_TENANT, [task_id])
        if rows and predicate(rows[0]):
            return rows[0]
        if time.monotonic() > end:
            raise AssertionError(f"task {task_id} never reached the state: {rows}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def aiohttp_processor():
    """An app's processor: an HTTP server recording what it is POSTed."""
    received: list = []

    async def handle(request):
        received.append(await request.json())
        return web.json_response({"ok": True})

    async with post_receiver(handle) as port:
        yield ("127.0.0.1", port), received
