"""``fleetrpc demo``: the whole server on a fresh machine, a live fleet in its
web console, and a tour of what it does.

It starts ``fleetrpc serve`` on embedded defaults (SQLite in a temporary
directory, its own broker: Mosquitto when installed, else the embedded
one) with ThingsBoard's demo accounts, adds a fleet of simulated dimmers
(:class:`~fleetrpc.sim.widgets.WidgetDevice`: a level behind the console's
switch and knob) connected to the broker with their own access tokens, and a
few thermostats running ThingsBoard firmware unchanged
(:class:`~fleetrpc.sim.thingsboard.ThingsBoardDevice`) connected to the
server's own device endpoint (the last one over ThingsBoard's HTTP device
API, :class:`~fleetrpc.sim.thingsboard.ThingsBoardHttpDevice`), prints the console's address and the logins,
makes a mix of calls through the REST API as any client would, prints what
happened, and keeps serving -- devices now and
then dropping off and coming back, so presence changes live -- until Ctrl-C
(``--once`` stops after the tour; the tests use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import click

__all__ = ["run_demo", "demo", "LOGINS"]

#: The logins the demo prints (ThingsBoard's demo accounts).
LOGINS = (
    ("tenant@thingsboard.org", "tenant", "tenant administrator: every device"),
    ("customerA@thingsboard.org", "customer", "customer user: Customer A's devices only"),
    ("sysadmin@thingsboard.org", "sysadmin", "system administrator: tenants"),
)
ROOMS = ("kitchen", "hall", "office", "lab", "porch", "garage", "attic", "cellar")
#: Devices running ThingsBoard firmware, connected to the device endpoint
#: (over MQTT; the last one polls over HTTP).
THERMOSTATS = tuple(f"Thermostat {i + 1}" for i in range(3))
#: The fewest dimmers: one stays away for the tour's offline calls.
MIN_DIMMERS = 2


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class _Rest:
    """The demo's REST client: what any ThingsBoard script would do."""

    def __init__(self, url: str) -> None:
        import aiohttp

        self.url = url
        self.session = aiohttp.ClientSession()
        self.headers: dict[str, str] = {}

    async def login(self, email: str, password: str) -> None:
        status, body = await self.call("POST", "/api/auth/login", {"username": email, "password": password})
        if status != 200:
            raise RuntimeError(f"login as {email} failed: HTTP {status} {body}")
        self.headers = {"X-Authorization": f"Bearer {body['token']}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import json

        async with self.session.request(method, self.url + path, json=body, headers=self.headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text) if text else None
            except ValueError:
                return r.status, text

    async def close(self) -> None:
        await self.session.close()


async def _fleet_devices(ctx: Any, tenant_id: str, n: int) -> list[Any]:
    """``n`` dimmers in the demo tenant (created once), some assigned to
    customers A and B; returns every device of the tenant to connect (the
    thermostats excepted: they connect to the device endpoint)."""
    customers = {c.title: c.id for c in (await ctx.customers.list(tenant_id, 100, 0)).data}
    for i in range(n):
        name = f"Dimmer {i + 1:03d}"
        if await ctx.devices.by_name(tenant_id, name) is not None:
            continue
        customer = customers.get("Customer A") if i % 4 == 1 else customers.get("Customer B") if i % 7 == 3 else None
        await ctx.devices.create(tenant_id, name, type="dimmer", label=ROOMS[i % len(ROOMS)], customer_id=customer)
    for i, name in enumerate(THERMOSTATS):
        if await ctx.devices.by_name(tenant_id, name) is None:
            await ctx.devices.create(tenant_id, name, type="thermostat", label=ROOMS[i % len(ROOMS)])
    found: list[Any] = []
    page = 0
    while True:
        batch = await ctx.devices.list(tenant_id, 1000, page)
        found.extend(d for d in batch.data if d.name not in THERMOSTATS)
        if not batch.has_next:
            return found
        page += 1


def _uses_tokens(ctx: Any) -> bool:
    """Devices log in with their access tokens, except on the embedded
    broker, which checks nothing and refuses unknown user names."""
    return ctx.broker is None or ctx.broker.kind != "embedded"


async def _connect(ctx: Any, devices: list[Any], url: str, version: int) -> dict[str, Any]:
    from .sim.widgets import WidgetDevice

    fleet: dict[str, Any] = {}
    # The embedded broker (amqtt) now and then loses a SUBACK when clients
    # subscribe at the same moment: one at a time there.
    sem = asyncio.Semaphore(100 if _uses_tokens(ctx) else 1)

    async def one(device: Any) -> None:
        creds = await ctx.devices.credentials(device.tenant_id, device.id)
        token = creds.credentials_id if _uses_tokens(ctx) else None
        dev = WidgetDevice(device.id, url, token=token, level=random.randrange(0, 101, 5), version=version)
        async with sem:
            await dev.connect()
        fleet[device.id] = dev

    await asyncio.gather(*(one(d) for d in devices))
    return fleet


async def _connect_thermostats(ctx: Any, tenant_id: str) -> dict[str, Any]:
    """The thermostats run ThingsBoard firmware: they log in to the device
    endpoint with their access tokens and speak ThingsBoard's topics; the
    last one uses ThingsBoard's HTTP device API instead."""
    from .sim.thingsboard import ThingsBoardDevice, ThingsBoardHttpDevice

    port = ctx.endpoint.ports["tcp"]
    found: dict[str, Any] = {}
    for i, name in enumerate(THERMOSTATS):
        device = await ctx.devices.by_name(tenant_id, name)
        creds = await ctx.devices.credentials(tenant_id, device.id)
        state: dict[str, Any] = {"target": 21.0, "on": True}

        def set_value(params: Any, state: dict = state) -> dict:
            # the console's knob sends a number, its switch true or false
            state["on" if isinstance(params, bool) else "target"] = params
            return state

        handlers = {"getValue": lambda params, state=state: state["target"] if state["on"] else False,
                    "setValue": set_value, "getTemperature": lambda params, i=i: {"celsius": 20.5 + i},
                    "rpcCommand": lambda params: {"firmware": "ThingsBoard's, unchanged"},
                    "echo": lambda params: params}
        if name == THERMOSTATS[-1]:
            dev = ThingsBoardHttpDevice(ctx.url, creds.credentials_id, handlers)
            await dev.connect()
        else:
            dev = ThingsBoardDevice(creds.credentials_id, handlers)
            await dev.connect("127.0.0.1", port)
        found[device.id] = dev
    return found


async def _wait_online(ctx: Any, ids: list[str], timeout: float = 15.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        online = sum(1 for i in ids if ctx.dispatcher.is_online(i))
        if online >= len(ids):
            return online
        await asyncio.sleep(0.05)
    return sum(1 for i in ids if ctx.dispatcher.is_online(i))


async def _tour(ctx: Any, rest: _Rest, fleet: dict[str, Any], devices: list[Any], offline: Any,
                url: str, version: int, titles: dict[str, str], rows: list[tuple[str, str, str]],
                thermostats: dict[str, Any]) -> None:
    """The mix of calls, each through the REST API; one row each."""
    ids = [d.id for d in devices if d.id in fleet]
    online = await _wait_online(ctx, ids)
    rows.append(("presence", f"{online}/{len(ids)} devices online", "retained presence + Last Will, via the broker"))

    # two-way getValue, as the console's knob does on load: concurrency 50
    lat: list[float] = []
    sem = asyncio.Semaphore(50)

    async def get_value(device_id: str) -> None:
        async with sem:
            t = time.perf_counter()
            status, _ = await rest.call("POST", f"/api/rpc/twoway/{device_id}", {"method": "getValue", "params": None})
            if status == 200:
                lat.append(time.perf_counter() - t)

    calls = (ids * (1 + 400 // max(1, len(ids))))[:400]
    t0 = time.perf_counter()
    await asyncio.gather(*(get_value(d) for d in calls))
    took = time.perf_counter() - t0
    lat.sort()
    if lat:
        rows.append(("two-way getValue x400 (REST)", f"{len(lat) / took:,.0f} calls/s",
                     f"p50 {_ms(lat[len(lat) // 2])}, p99 {_ms(lat[int(len(lat) * 0.99) - 1])}"))

    target = ids[0]
    status, _ = await rest.call("POST", f"/api/rpc/oneway/{target}", {"method": "setValue", "params": 80})
    status2, level = await rest.call("POST", f"/api/rpc/twoway/{target}", {"method": "getValue", "params": None})
    rows.append(("one-way setValue 80, read back", f"{status} then {level}", "the knob's and switch's calls"))
    status, body = await rest.call("POST", f"/api/plugins/rpc/twoway/{target}", {"method": "rpcCommand", "params": {}})
    rows.append(("v1 two-way rpcCommand", f"{status}", "ThingsBoard's deprecated v1 API"))

    # ThingsBoard's offline behaviour: the call waits out its timeout, then 504
    t = time.perf_counter()
    status, _ = await rest.call("POST", f"/api/rpc/twoway/{offline.id}", {"method": "getValue", "timeout": 1000})
    rows.append(("offline device (v2)", f"{status}", f"after {time.perf_counter() - t:.1f} s, as ThingsBoard"))

    # a persistent call waits for the offline device, delivered when it connects
    exp = int(time.time() * 1000) + 60_000
    status, body = await rest.call("POST", f"/api/rpc/twoway/{offline.id}",
                                   {"method": "setValue", "params": True, "persistent": True, "expirationTime": exp})
    rpc_id = body["rpcId"] if status == 200 else None
    if rpc_id:
        _, rec = await rest.call("GET", f"/api/rpc/persistent/{rpc_id}")
        rows.append(("persistent call, device offline", rec["status"], "stored, held until it connects"))
        creds = await ctx.devices.credentials(offline.tenant_id, offline.id)
        from .sim.widgets import WidgetDevice

        token = creds.credentials_id if _uses_tokens(ctx) else None
        late = WidgetDevice(offline.id, url, token=token, level=0, version=version)
        await late.connect()
        fleet[offline.id] = late
        for _ in range(200):
            _, rec = await rest.call("GET", f"/api/rpc/persistent/{rpc_id}")
            if rec["status"] in ("SUCCESSFUL", "FAILED", "EXPIRED", "TIMEOUT"):
                break
            await asyncio.sleep(0.05)
        rows.append(("persistent call, device online", rec["status"], f"response {rec['response']}"))

    # a fleet job: one RPC to every dimmer, with progress and an aggregate
    status, job = await rest.call("POST", "/api/jobs", {
        "name": "all dimmers to 50", "targets": {"deviceType": "dimmer"}, "method": "setValue", "params": 50,
    })
    if status == 200:
        job_id = job["id"]["id"]
        for _ in range(400):
            _, job = await rest.call("GET", f"/api/job/{job_id}")
            if job["status"] not in ("QUEUED", "RUNNING"):
                break
            await asyncio.sleep(0.05)
        r = job["result"]
        rows.append(("job: setValue 50 to every dimmer", f"{r['successfulCount']}/{r['totalCount']} ok",
                     f"{job['status']}, {(r['finishTs'] - r['startTs'])} ms"))
    else:
        rows.append(("job", f"HTTP {status}", str(job)))

    # client-side RPC: a device asks the platform
    dev = fleet[target]
    try:
        now = await dev.client.call("getCurrentTime", timeout=5)
        rows.append(("client-side getCurrentTime", str(now), "a device asked the server"))
    except Exception as exc:  # noqa: BLE001 - the row says what happened
        rows.append(("client-side getCurrentTime", type(exc).__name__, str(exc)))

    # ThingsBoard firmware, unchanged, on the server's own device endpoint
    if thermostats:
        await _wait_online(ctx, list(thermostats))
        thermostat_id, thermostat = next(iter(thermostats.items()))
        status, body = await rest.call("POST", f"/api/rpc/twoway/{thermostat_id}",
                                       {"method": "getTemperature", "params": {}})
        rows.append(("ThingsBoard firmware, two-way getTemperature", f"{status}",
                     f"{body}; ThingsBoard's topics, token as user name"))
        try:
            now = await thermostat.call("getCurrentTime", timeout=5)
            rows.append(("ThingsBoard firmware, client-side getCurrentTime", str(now),
                         "asked on v1/devices/me/rpc/request/1"))
        except Exception as exc:  # noqa: BLE001 - the row says what happened
            rows.append(("ThingsBoard firmware, client-side getCurrentTime", type(exc).__name__, str(exc)))
        http_id = list(thermostats)[-1]
        status, body = await rest.call("POST", f"/api/rpc/twoway/{http_id}",
                                       {"method": "getTemperature", "params": {}})
        rows.append(("ThingsBoard HTTP firmware, two-way getTemperature", f"{status}",
                     f"{body}; long-polls GET /api/v1/{{token}}/rpc"))

    # another customer's device is out of reach
    victim = next((d for d in devices if titles.get(d.customer_id) == "Customer A"), None)
    if victim is not None:
        other = _Rest(rest.url)
        try:
            await other.login("customerB@thingsboard.org", "customer")
            status, body = await other.call("POST", f"/api/rpc/twoway/{victim.id}", {"method": "getValue"})
            rows.append(("customer B calls customer A's device", f"{status}", str(body)))
        finally:
            await other.close()


async def _churn(fleet: dict[str, Any], stop: asyncio.Event) -> None:
    """Now and then a device drops off (its Will tells the server) and comes
    back a few seconds later: presence changes live in the console."""
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 12.0)
        if stop.is_set() or not fleet:
            return
        dev = random.choice(list(fleet.values()))
        if not dev.client.connected:
            continue
        dev.client.kill()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 6.0)
        with contextlib.suppress(Exception):
            await dev.connect()


def _settings(port: int, url: str | None, broker: str, data_dir: str, endpoint_port: int) -> Any:
    """The server's settings: embedded defaults, ./fleetrpc.toml when
    present (the environment is not read), the demo's own overrides."""
    from .config import load_server_settings

    overrides: dict[str, dict[str, Any]] = {
        "server": {"data_dir": data_dir, "broker": broker, "drain_timeout_s": 2.0},
        "http": {"port": port, "access_log": False},
        "store": {"ttl_enabled": False},
        # Short timeouts answer the tour's offline call in a second.
        "dispatch": {"min_timeout_ms": 1000},
        # ThingsBoard firmware connects here (the thermostats)
        "endpoint": {"enabled": True, "host": "127.0.0.1", "port": endpoint_port},
    }
    if url:
        overrides["mqtt"] = {"url": url}
    return load_server_settings(env={}, overrides=overrides)


def _check_device_limit(limit: int, dimmers: int) -> None:
    """Refuse, before anything starts, a ``store.max_devices_per_tenant``
    the demo's tenant cannot fit in: its tour needs every device it makes
    (the job's count, the offline dimmer, the thermostats), so making fewer
    would show something else than it says."""
    from .errors import EntitiesLimitExceededError
    from .server.demo_data import DEMO_DEVICES

    fixed = len(DEMO_DEVICES) + len(THERMOSTATS)
    needed = fixed + dimmers
    if not limit or limit >= needed:
        return
    where = " (set in ./fleetrpc.toml)" if os.path.exists("fleetrpc.toml") else ""
    fit = limit - fixed
    advice = (f"run it with --devices {fit} or fewer, or raise the setting to {needed} or more (0: no limit)"
              if fit >= MIN_DIMMERS else f"raise the setting to at least {needed} (0: no limit)")
    raise EntitiesLimitExceededError("DEVICE", limit, message=(
        f"store.max_devices_per_tenant is {limit}{where}, but the demo makes {needed} devices in its "
        f"tenant ({len(DEMO_DEVICES)} of ThingsBoard's demo devices, {len(THERMOSTATS)} thermostats, "
        f"{dimmers} dimmers): {advice}"))


@contextlib.asynccontextmanager
async def _server(settings: Any) -> AsyncIterator[Any]:
    from .server import Server, ServerContext

    ctx = ServerContext(settings)
    ctx.demo = True
    async with Server(settings, ctx=ctx) as server:
        yield server.ctx


async def run_demo(devices: int = 200, *, url: str | None = None, port: int = 8080, once: bool = False,
                   broker: str = "auto", console: Any = None, endpoint_port: int = 0) -> dict[str, str]:
    """Run the demonstration; returns the tour's rows ``{what: result}``."""
    from rich.console import Console
    from rich.table import Table

    from .server.demo_data import TENANT_TITLE

    console = console or Console()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="fleetrpc-demo-") as data_dir:
        settings = _settings(port, url, broker, data_dir, endpoint_port)
        _check_device_limit(settings.store.max_devices_per_tenant, devices)
        async with _server(settings) as ctx:
            tenant = await ctx.tenants.by_title(TENANT_TITLE)
            titles = {c.id: c.title for c in (await ctx.customers.list(tenant.id, 100, 0)).data}
            registry = await _fleet_devices(ctx, tenant.id, devices)
            # One device stays away for the tour's offline and persistent calls.
            offline = next(d for d in registry if d.name == "Dimmer 002") if devices >= 2 else registry[0]
            broker_url, version = ctx.library.mqtt_url, ctx.library.mqtt_version
            fleet = await _connect(ctx, [d for d in registry if d.id != offline.id], broker_url, version)
            thermostats = await _connect_thermostats(ctx, tenant.id)
            console.print(f"\n[bold green]fleetrpc is serving[/]  console: [bold]{ctx.url}/[/]   "
                          f"API docs: {ctx.url}/api/docs   broker: {broker_url}   "
                          f"device endpoint: mqtt://127.0.0.1:{ctx.endpoint.ports['tcp']}")
            for email, password, what in LOGINS:
                console.print(f"  log in as [bold]{email}[/] / [bold]{password}[/]  ({what})")
            console.print(f"  {len(fleet)} simulated devices connected to the broker with their access tokens,"
                          f" {len(thermostats)} running ThingsBoard firmware to the device endpoint\n")
            rest = _Rest(ctx.url)
            try:
                await rest.login("tenant@thingsboard.org", "tenant")
                await _tour(ctx, rest, fleet, registry, offline, broker_url, version, titles, rows, thermostats)
            finally:
                await rest.close()
            table = Table(title="fleetrpc demo: a tour through the REST API")
            for col in ("what", "result", "note"):
                table.add_column(col)
            for row in rows:
                table.add_row(*row)
            console.print(table)
            if not once:
                console.print(f"\nStill serving at [bold]{ctx.url}/[/]: open it in a browser. Ctrl-C stops.")
                from .runner import stop_on_signals

                with stop_on_signals(asyncio.Event()) as stop:
                    await _churn(fleet, stop)
            await asyncio.gather(*(d.close() for d in [*fleet.values(), *thermostats.values()]),
                                 return_exceptions=True)
    return {r[0]: r[1] for r in rows}


@click.command()
@click.option("--devices", default=200, show_default=True, type=click.IntRange(min=MIN_DIMMERS),
              help="simulated dimmers")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="HTTP port of the console and the API (0: any free port)")
@click.option("--url", default=None, help="use this broker instead of starting one")
@click.option("--broker", type=click.Choice(["auto", "mosquitto", "embedded"]), default="auto",
              show_default=True, help="which broker to start: Mosquitto if present, else the embedded one")
@click.option("--endpoint-port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="MQTT port of the device endpoint, where ThingsBoard firmware connects (0: any free port)")
@click.option("--once", is_flag=True, help="stop after the tour instead of serving until Ctrl-C")
def demo(devices: int, port: int, url: str | None, broker: str, endpoint_port: int, once: bool) -> None:
    """Start the server with a simulated fleet, tour it, and serve the console."""
    from .errors import ValidationError
    from .runner import run

    try:
        run(run_demo(devices=devices, url=url, port=port, once=once, broker=broker, endpoint_port=endpoint_port))
    except ValidationError as exc:  # the settings (./fleetrpc.toml), the device limit among them
        click.echo(f"fleetrpc demo: {exc}", err=True)
        sys.exit(2)
