"""``fleetrpc bench --rest``: two-way RPCs through ThingsBoard's REST API
against the library path, in the same run, on the same fleet.

The rig: a throwaway Mosquitto (or ``--url``), simulated devices in worker
processes (UUID ids, answering ``echo``), and a server in this process (the
real parts: dispatcher, engine, HTTP API with JWT; an in-memory directory of
one tenant administrator and the fleet's devices).  Two phases of
``duration`` seconds with ``window`` concurrent callers each:

``library``  ``dispatcher.call(device, "echo", ...)`` on the server's loop;
``rest``     a load generator in a child process (aiohttp, keep-alive
             connections, ``X-Authorization: Bearer <jwt>`` on every request)
             posting ``/api/rpc/twoway/{deviceId}``.

Reported per phase: calls/s, p50/p99 latency, and the server process's CPU
per call (``time.process_time`` deltas; the load generator's CPU is its
own).  The HTTP layer's CPU per call is the difference of the two.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Callable

import msgspec

__all__ = ["RestBenchConfig", "run_rest_bench", "UUID_FORMAT"]

#: Device ids of the simulated fleet: valid UUIDs, as the server wants them.
UUID_FORMAT = "00000000-0000-4000-8000-{:012d}"


class RestBenchConfig(msgspec.Struct, kw_only=True):
    devices: int = 100
    window: int = 64
    duration: float = 3.0
    url: str | None = None
    processes: int | None = 1
    qos: int = 1


class _Directory:
    """One tenant, its administrator, the fleet's devices (in memory)."""

    def __init__(self, device_ids: list[str]) -> None:
        from types import SimpleNamespace

        from ..api.auth import NULL_UUID

        self.tenant = str(uuid.uuid4())
        self.password = uuid.uuid4().hex
        self.user = SimpleNamespace(
            id=str(uuid.uuid4()), email="bench@fleetrpc.invalid", authority="TENANT_ADMIN",
            tenant_id=self.tenant, customer_id=NULL_UUID, first_name=None, last_name=None, enabled=True,
            to_thingsboard=lambda: {"email": "bench@fleetrpc.invalid"},
        )
        self._devices = {
            d: SimpleNamespace(id=d, tenant_id=self.tenant, customer_id=NULL_UUID) for d in device_ids
        }

    async def authenticate(self, email: str, password: str) -> Any:
        from ..api.auth import LoginRefused

        if email == self.user.email and password == self.password:
            return self.user
        raise LoginRefused("Invalid username or password")

    async def by_id(self, user_id: str) -> Any:
        return self.user if user_id == self.user.id else None

    async def get(self, tenant_id: str, device_id: str) -> Any:
        d = self._devices.get(device_id)
        return d if d is not None and d.tenant_id == tenant_id else None

    async def open(self, ctx: Any):
        ctx.users = self
        ctx.devices = self

        async def close() -> None:
            return None

        return close


def _percentiles(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    lat.sort()
    return {"p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000}


async def _library_phase(d: Any, devices: list[str], window: int, duration: float) -> dict[str, Any]:
    lat: list[float] = []
    stop_at = time.perf_counter() + duration
    errors = 0

    async def caller(k: int) -> None:
        nonlocal errors
        i = k
        call = d.call
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                await call(devices[i % len(devices)], "echo", {"i": i}, timeout=10)
            except Exception:
                errors += 1
            lat.append(time.perf_counter() - t0)
            i += window

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(window)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    n = len(lat)
    return {"calls": n, "errors": errors, "calls_per_s": n / wall, "cpu_us_per_call": cpu / max(n, 1) * 1e6,
            **_percentiles(lat)}


# -- the load generator (a child process) ------------------------------------------------


async def _generate(url: str, token: str, devices: list[str], window: int, duration: float) -> dict[str, Any]:
    import aiohttp

    lat: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + duration
    headers = {"X-Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=window)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def caller(k: int) -> None:
            i = k
            while time.perf_counter() < stop_at:
                body = b'{"method":"echo","params":{"i":%d}}' % i
                t0 = time.perf_counter()
                async with session.post(f"{url}/api/rpc/twoway/{devices[i % len(devices)]}", data=body,
                                        headers=headers) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                lat.append(time.perf_counter() - t0)
                i += window

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(window)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = len(lat)
    return {"calls": n, "wall": wall, "generator_cpu_s": cpu, "statuses": statuses, **_percentiles(lat)}


def _generator_main() -> None:
    spec = json.loads(sys.argv[1])
    from ..runner import run

    out = run(_generate(spec["url"], spec["token"], spec["devices"], spec["window"], spec["duration"]))
    sys.stdout.write(json.dumps(out))


async def _rest_phase(ctx: Any, token: str, devices: list[str], window: int, duration: float) -> dict[str, Any]:
    spec = json.dumps({"url": ctx.url, "token": token, "devices": devices, "window": window, "duration": duration})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from fleetrpc.bench.rest import _generator_main; _generator_main()", spec,
        stdout=subprocess.PIPE,
    )
    cpu0 = time.process_time()
    out, _ = await asyncio.wait_for(proc.communicate(), duration + 60)
    cpu = time.process_time() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"the REST load generator failed (exit {proc.returncode})")
    result = json.loads(out)
    n = result["calls"]
    ok = result["statuses"].get("200", 0)
    return {"calls": n, "errors": n - ok, "calls_per_s": n / result["wall"],
            "cpu_us_per_call": cpu / max(n, 1) * 1e6,
            "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "statuses": result["statuses"],
            "generator_cpu_us_per_call": result["generator_cpu_s"] / max(n, 1) * 1e6}


async def run_rest_bench(cfg: RestBenchConfig, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run both phases; returns the report (see the module docstring)."""
    import aiohttp

    from ..broker import start_broker
    from ..config import load_server_settings
    from ..server import Server, ServerContext
    from ..sim.fleet import Fleet

    async def with_broker(url: str) -> dict[str, Any]:
        fleet = Fleet(url, cfg.devices, processes=cfg.processes, qos=cfg.qos, id_format=UUID_FORMAT)
        await fleet.start()
        try:
            directory = _Directory(list(fleet.device_ids))
            with tempfile.TemporaryDirectory(prefix="fleetrpc-rest-bench-") as tmp:
                settings = load_server_settings(env={}, overrides={
                    "server": {"data_dir": tmp, "log_level": "WARNING"},
                    "mqtt": {"url": url, "qos": cfg.qos},
                    "store": {"url": f"sqlite:///{tmp}/bench.db", "ttl_enabled": False},
                    "http": {"port": 0, "access_log": False, "docs": False},
                    "jwt": {"secret": os.urandom(48).hex()},
                })
                ctx = ServerContext(settings)
                ctx.open_repositories = directory.open
                async with Server(settings, ctx=ctx):
                    d = ctx.dispatcher
                    deadline = time.monotonic() + 30
                    while len(d.online_devices) < cfg.devices and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    devices = list(fleet.device_ids)
                    async with aiohttp.ClientSession() as session:
                        async with session.post(f"{ctx.url}/api/auth/login", json={
                            "username": directory.user.email, "password": directory.password}) as r:
                            token = (await r.json())["token"]
                    log(f"library path: {cfg.window} callers, {cfg.duration:.1f} s")
                    library = await _library_phase(d, devices, cfg.window, cfg.duration)
                    log(f"REST path: {cfg.window} keep-alive connections, {cfg.duration:.1f} s")
                    rest = await _rest_phase(ctx, token, devices, cfg.window, cfg.duration)
        finally:
            await fleet.stop()
        return {
            "config": msgspec.structs.asdict(cfg),
            "library": library,
            "rest": rest,
            "rest_vs_library": rest["calls_per_s"] / library["calls_per_s"] if library["calls_per_s"] else 0.0,
            "http_cpu_us_per_call": rest["cpu_us_per_call"] - library["cpu_us_per_call"],
        }

    if cfg.url:
        return await with_broker(cfg.url)
    async with start_broker("auto") as broker:
        return await with_broker(broker.url)


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'path':<10}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'server CPU us/call':>20}"]
    for name in ("library", "rest"):
        r = report[name]
        lines.append(f"{name:<10}{r['calls_per_s']:>10,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                     f"{r['cpu_us_per_call']:>20.1f}")
    lines.append(f"REST reaches {report['rest_vs_library']:.0%} of the library path; "
                 f"the HTTP layer adds {report['http_cpu_us_per_call']:.1f} us of server CPU per call "
                 f"(JWT included); REST errors: {report['rest']['errors']}")
    return "\n".join(lines)


def command_main(devices: int, qos: int, duration: float, url: str | None, processes: int | None,
                 window: int, json_path: Any, quick: bool) -> None:
    """``fleetrpc bench --rest``'s body (bench/command.py stays a table of flags)."""
    import click

    from ..runner import run

    cfg = RestBenchConfig(devices=devices, qos=qos, duration=duration, url=url,
                          processes=1 if processes is None else processes, window=window)
    if quick:
        cfg.devices, cfg.window, cfg.duration = min(cfg.devices, 20), min(cfg.window, 16), min(cfg.duration, 1.0)
    report = run(run_rest_bench(cfg, lambda msg: click.echo(msg, err=True)))
    click.echo(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        click.echo(f"report written to {json_path}", err=True)
