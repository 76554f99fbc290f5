"""``fleetrpc demo``: a broker, a simulated fleet and a mix of calls, on a
fresh machine with nothing else installed."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import click

from ._core.constants import DeliveryStrategy
from .config import Settings
from .device import DeviceClient
from .dispatcher import Dispatcher
from .errors import DeviceOfflineError, FleetRpcError, RpcTimeoutError


async def _start_fleet(url: str, n: int, mqtt5: bool) -> list[DeviceClient]:
    devices = []
    for i in range(n):
        dev = DeviceClient(f"demo-{i:03d}", url, ack=(i % 2 == 0), version=5 if (mqtt5 and i % 3) else 4)

        @dev.method("echo")
        def echo(params):
            return params

        @dev.method("getTemperature")
        async def temp(params):
            await asyncio.sleep(random.uniform(0, 0.02))
            return {"celsius": round(20 + random.random() * 5, 2)}

        @dev.method("setGPIO")
        def set_gpio(params):
            return {"pin": params.get("pin"), "value": params.get("value"), "changed": True}

        @dev.method("hang")
        async def hang(params):
            await asyncio.sleep(3600)

        devices.append(dev)
    await asyncio.gather(*(d.connect() for d in devices))
    return devices


async def run_demo(devices: int = 50, url: str | None = None, console=None, broker: str = "auto") -> dict[str, Any]:
    """Run the demonstration; returns the summary rows (also printed)."""
    if devices < 8:
        raise ValueError("the demo needs at least 8 devices (each scenario uses its own)")
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from .broker import start_broker

    console = console or Console()
    rows: list[tuple[str, str, str]] = []

    async def scenario(broker_url: str, mqtt5: bool) -> None:
        console.print(f"[bold]broker[/] {broker_url}   [bold]devices[/] {devices}")
        fleet = await _start_fleet(broker_url, devices, mqtt5)
        settings = Settings(mqtt_url=broker_url, node_id="demo", min_timeout_ms=0, default_timeout_ms=2000,
                            mqtt_version=5 if mqtt5 else 4, store_url=store_url, ttl_enabled=False)
        async with Dispatcher(settings) as d:

            @d.handler("getCurrentTime")
            def now(device, params):
                return int(time.time() * 1000)

            # wait for every device's retained presence
            for _ in range(200):
                if len(d.online_devices) >= devices:
                    break
                await asyncio.sleep(0.02)
            names = sorted(d.online_devices)
            rows.append(("presence", f"{len(names)}/{devices} devices online", "retained status + Last Will"))

            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("two-way calls", total=500)
                t0 = time.perf_counter()
                lat: list[float] = []

                async def one(i: int) -> None:
                    s = time.perf_counter()
                    await d.call(names[i % len(names)], "echo", {"i": i}, timeout=5)
                    lat.append(time.perf_counter() - s)
                    progress.advance(task)

                await asyncio.gather(*(one(i) for i in range(500)))
                took = time.perf_counter() - t0
            lat.sort()
            rows.append(("two-way echo x500", f"{500 / took:,.0f} calls/s",
                         f"p50 {lat[250] * 1000:.2f} ms, p99 {lat[494] * 1000:.2f} ms"))

            r = await d.call(names[0], "setGPIO", {"pin": 4, "value": 1})
            rows.append(("setGPIO", str(r), "ThingsBoard-style two-way"))
            await d.call(names[1], "setGPIO", {"pin": 4, "value": 0}, oneway=True)
            rows.append(("one-way setGPIO", "published", "returns once the broker has it"))

            bc = d.broadcast(names, "getTemperature", {})
            summary = await bc.wait()
            rows.append(("broadcast getTemperature", f"{summary.succeeded}/{summary.total} ok",
                         f"{summary.elapsed * 1000:.1f} ms for the whole fleet"))

            try:
                await d.call(names[2], "hang", {}, timeout=0.3)
            except RpcTimeoutError as exc:
                rows.append(("stuck device", "RpcTimeoutError", str(exc)))
            try:
                await d.call("no-such-device", "echo", {})
            except DeviceOfflineError as exc:
                rows.append(("offline device", "DeviceOfflineError", str(exc)))

            seq = names[3]
            d.configure_device(seq, strategy=DeliveryStrategy.SEQUENTIAL_ON_RESPONSE)
            order = await asyncio.gather(*(d.call(seq, "echo", i) for i in range(10)))
            rows.append(("sequential device", str(order), "one call at a time, FIFO"))

            got = await fleet[4].call("getCurrentTime")
            rows.append(("client-side getCurrentTime", str(got), "device asked the platform"))
            try:
                await fleet[4].call("noSuchMethod")
            except FleetRpcError as exc:
                rows.append(("client-side unknown method", type(exc).__name__, str(exc)))

            fleet[5].kill()  # vanish: the broker sends the Will
            for _ in range(100):
                if not d.is_online(fleet[5].device_id):
                    break
                await asyncio.sleep(0.05)
            rows.append(("device killed", "offline" if not d.is_online(fleet[5].device_id) else "online",
                         "Last Will seen by the dispatcher"))
            await _persistent_part(d, broker_url, mqtt5, rows)
            stats = d.stats.as_dict()
        await asyncio.gather(*(dev.close() for dev in fleet[:5] + fleet[6:]), return_exceptions=True)
        rows.append(("dispatcher counters", ", ".join(f"{k}={v}" for k, v in stats.items() if v), ""))

    import tempfile

    with tempfile.TemporaryDirectory(prefix="fleetrpc-demo-") as tmp:
        store_url = f"sqlite:///{tmp}/demo.db"
        if url:
            await scenario(url, True)
        else:
            async with start_broker(prefer=broker) as b:
                # the embedded broker speaks MQTT 3.1.1 only
                await scenario(b.url, b.kind == "mosquitto")

    table = Table(title="fleetrpc demo")
    for col in ("what", "result", "note"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return {r[0]: r[1] for r in rows}


async def _persistent_part(d: Dispatcher, url: str, mqtt5: bool, rows: list) -> None:
    """A persistent call to a device that is offline, delivered once it
    connects; every status change shown as an event."""
    from .events import EventBus
    from .rpc.persistent import PersistentRpc
    from .store import open_store

    store = await open_store(d.settings.store_url, group_commit=True)
    bus = EventBus()
    events: list[str] = []
    bus.add(lambda e: events.append(e.type.removeprefix("RPC_")))
    bus.start()
    engine = PersistentRpc(d, store, emit=bus.emit)
    await engine.start()
    try:
        rpc_id = await engine.call("sleepy-meter", "readRegister", {"reg": 3}, retries=2,
                                   expiration_time=int(time.time() * 1000) + 60_000)
        await asyncio.sleep(0.2)
        before = (await engine.get(rpc_id)).status.value
        meter = DeviceClient("sleepy-meter", url, version=5 if mqtt5 else 4)
        meter.add_method("readRegister", lambda p: {"reg": p["reg"], "value": 1234})
        await meter.connect()
        record = await engine.wait(rpc_id, 10)
        await asyncio.sleep(0.05)
        rows.append(("persistent call, device offline", before, "stored (SQLite), held until it connects"))
        rows.append(("persistent call, device online", record.status.value,
                     f"{record.response}; events: {' > '.join(events)}"))
        await meter.close()
    finally:
        await engine.close()
        await bus.close()
        await store.close()


@click.command()
@click.option("--devices", default=50, show_default=True, type=click.IntRange(min=8), help="simulated devices")
@click.option("--url", default=None, help="use this broker instead of starting one")
@click.option("--broker", type=click.Choice(["auto", "mosquitto", "embedded"]), default="auto",
              show_default=True, help="which broker to start: Mosquitto if present, else amqtt")
def demo(devices: int, url: str | None, broker: str) -> None:
    """Start a broker and a simulated fleet, make a mix of calls, print a summary."""
    from .runner import run

    run(run_demo(devices=devices, url=url, broker=broker))
