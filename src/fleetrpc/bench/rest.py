"""``fleetrpc bench --rest``: two-way RPCs through ThingsBoard's REST API
against the library path and a bare aiohttp floor, in the same run, on the
same fleet.

The rig: a throwaway Mosquitto (or ``--url``), simulated devices in worker
processes (UUID ids, answering ``echo``), and a server in this process with
every real part: dispatcher, engine, HTTP API with JWT, the identity
repositories on SQLite with ThingsBoard's demo accounts (``--demo``) and
the fleet's devices created in the demo tenant.  The load logs in as the
demo tenant administrator.  Four phases of
``duration`` seconds with ``window`` concurrent callers each, repeated
``rounds`` times:

``library``  ``dispatcher.call(device, "echo", ...)`` on the server's loop;
``floor``    a bare aiohttp application on the same loop answering the same
             request (same path, headers, body, connections, generator)
             with a constant: aiohttp's own cost per request;
``bare``     the same bare application making the call (``dispatcher.call``)
             and answering the reply: no middleware, JWT, access check or
             metrics -- the least any HTTP front of the dispatcher costs;
``rest``     the server's ``POST /api/rpc/twoway/{deviceId}``, the JWT in
             ``X-Authorization`` on every request.

The HTTP phases are driven by a keep-alive load generator in child
processes (``bench/http_load.py``: ``raw`` by default, ``aiohttp``, or
``wrk`` when installed), so the generator's CPU is never the server's.

Reported per phase: calls/s, p50/p99 latency, the server process's CPU per
call (``os.times`` user + system over the phase / calls; the system
part shown too) and the generator's.
Derived, each from one round's phases and then the median over rounds:
the HTTP layer's CPU per call (``rest - library``), split into aiohttp's
floor (``floor``), what the dispatcher loses when calls arrive one HTTP
request at a time (``bare - floor - library``: fewer calls per loop
iteration, so fewer MQTT packets per socket write and per read) and
fleetrpc's HTTP code (``rest - bare``: middleware, JWT, access check,
body parsing, metrics).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from statistics import median
from typing import Any, Callable

import msgspec

from .http_load import percentiles

__all__ = ["RestBenchConfig", "run_rest_bench", "floor_app", "format_report", "UUID_FORMAT"]

#: Device ids of the simulated fleet: valid UUIDs, as the server wants them.
UUID_FORMAT = "00000000-0000-4000-8000-{:012d}"
#: ThingsBoard's demo tenant administrator (server/demo_data.py), who calls the fleet.
BENCH_USER, BENCH_PASSWORD = "tenant@thingsboard.org", "tenant"


class RestBenchConfig(msgspec.Struct, kw_only=True):
    devices: int = 100
    window: int = 64
    duration: float = 3.0
    url: str | None = None
    processes: int | None = 1
    qos: int = 1
    #: the HTTP load generator: "raw", "aiohttp" or "wrk" (bench/http_load.py)
    generator: str = "raw"
    #: load generator processes (wrk: threads) sharing the connections
    clients: int = 1
    #: times the three phases run, in turn
    rounds: int = 1


#: The phases, in the order they run.
PATHS = ("library", "floor", "bare", "rest")


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

    cpu0, t0 = os.times(), time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(window)))
    wall = time.perf_counter() - t0
    n = len(lat)
    return {"calls": n, "errors": errors, "calls_per_s": n / wall, **_cpu_per_call(cpu0, os.times(), n),
            **percentiles(lat)}


def _cpu_per_call(before: os.times_result, after: os.times_result, calls: int) -> dict[str, float]:
    """This process's CPU per call, and how much of it the kernel's (system
    time: socket reads and writes, the loopback TCP path, epoll)."""
    user, system = after.user - before.user, after.system - before.system
    n = max(calls, 1)
    return {"cpu_us_per_call": (user + system) / n * 1e6, "sys_us_per_call": system / n * 1e6}


# -- the floor: a bare aiohttp app -----------------------------------------------------------


def floor_app(dispatcher: Any = None):
    """A bare aiohttp application answering the same request as the REST
    phase: no middleware, no JWT, no access check, no metrics.  Without a
    dispatcher it answers a constant: its CPU per call is aiohttp's own
    (parser, request object, routing, response writer) -- what no code of
    ours can remove.  With one, it makes the call the body asks for and
    answers the reply: the least any HTTP front of the dispatcher costs,
    including what the dispatcher loses when calls arrive one HTTP request
    at a time instead of in batches from many callers on the loop."""
    from aiohttp import web

    reply = b'{"i":0}'
    decode = msgspec.json.Decoder().decode
    encode = msgspec.json.Encoder().encode

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=reply, content_type="application/json")

    async def call(request: web.Request) -> web.Response:
        body = decode(await request.read())
        result = await dispatcher.call(request.match_info["deviceId"], body["method"], body.get("params"))
        return web.Response(body=encode(result), content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/rpc/twoway/{deviceId}", answer if dispatcher is None else call)
    return app


async def _start_floor(host: str, dispatcher: Any = None):
    """:func:`floor_app` on the server's loop; (url, runner)."""
    from aiohttp import web

    runner = web.AppRunner(floor_app(dispatcher), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return f"http://{host}:{runner.addresses[0][1]}", runner


async def _http_phase(url: str, token: str, devices: list[str], cfg: RestBenchConfig) -> dict[str, Any]:
    from .http_load import run_load

    paths = [f"/api/rpc/twoway/{d}" for d in devices]
    marks: list[os.times_result] = []
    result = await run_load(cfg.generator, url, token, paths, cfg.window, cfg.duration, cfg.clients,
                            lambda: marks.append(os.times()))
    n = result["calls"]
    ok = result["statuses"].get("200", 0)
    return {"calls": n, "errors": n - ok, "calls_per_s": n / result["wall"],
            **_cpu_per_call(marks[0], os.times(), n),
            "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "statuses": result["statuses"],
            "generator_cpu_us_per_call": result["generator_cpu_s"] / max(n, 1) * 1e6}


def _derived(library: dict[str, Any], floor: dict[str, Any], bare: dict[str, Any],
             rest: dict[str, Any]) -> dict[str, float]:
    """The HTTP layer's CPU per call (``rest - library``) in three parts:
    aiohttp's (``floor``), the dispatcher's extra when calls come one
    request at a time (``bare - floor - library``), fleetrpc's HTTP code
    (``rest - bare``)."""
    cpu = {k: v["cpu_us_per_call"] for k, v in (("library", library), ("floor", floor), ("bare", bare),
                                                ("rest", rest))}
    return {
        "rest_vs_library": rest["calls_per_s"] / library["calls_per_s"] if library["calls_per_s"] else 0.0,
        "http_cpu_us_per_call": cpu["rest"] - cpu["library"],
        "aiohttp_cpu_us_per_call": cpu["floor"],
        "unbatched_dispatch_cpu_us_per_call": cpu["bare"] - cpu["floor"] - cpu["library"],
        "ours_cpu_us_per_call": cpu["rest"] - cpu["bare"],
    }


async def run_rest_bench(cfg: RestBenchConfig, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run the phases ``rounds`` times; returns the report (see the module docstring)."""
    import aiohttp

    from argon2 import PasswordHasher

    from ..broker import start_broker
    from ..config import load_server_settings
    from ..runner import freeze_startup_heap
    from ..server import Server, ServerContext
    from ..sim.fleet import Fleet

    async def with_broker(url: str) -> dict[str, Any]:
        fleet = Fleet(url, cfg.devices, processes=cfg.processes, qos=cfg.qos, id_format=UUID_FORMAT)
        await fleet.start()
        rounds: list[dict[str, Any]] = []
        try:
            with tempfile.TemporaryDirectory(prefix="fleetrpc-rest-bench-") as tmp:
                settings = load_server_settings(env={}, overrides={
                    "server": {"data_dir": tmp, "log_level": "WARNING"},
                    "mqtt": {"url": url, "qos": cfg.qos},
                    "store": {"url": f"sqlite:///{tmp}/bench.db", "ttl_enabled": False},
                    "http": {"port": 0, "access_log": False, "docs": False},
                    "jwt": {"secret": os.urandom(48).hex()},
                })
                ctx = ServerContext(settings)
                ctx.demo = True
                ctx.password_hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)  # one login
                async with Server(settings, ctx=ctx):
                    floor_url, floor_runner = await _start_floor(settings.http.host)
                    bare_url, bare_runner = await _start_floor(settings.http.host, ctx.dispatcher)
                    try:
                        devices = list(fleet.device_ids)
                        async with aiohttp.ClientSession() as session:
                            async with session.post(f"{ctx.url}/api/auth/login", json={
                                    "username": BENCH_USER, "password": BENCH_PASSWORD}) as r:
                                token = (await r.json())["token"]
                        tenant_id = ctx.tokens.authenticate(token).tenant_id
                        for k, device_id in enumerate(devices):
                            await ctx.devices.create(tenant_id, f"bench-{k}", id=device_id)
                        freeze_startup_heap()  # as `fleetrpc serve` does
                        d = ctx.dispatcher
                        deadline = time.monotonic() + 30
                        while len(d.online_devices) < cfg.devices and time.monotonic() < deadline:
                            await asyncio.sleep(0.05)
                        for k in range(cfg.rounds):
                            tag = f"round {k + 1}/{cfg.rounds}: " if cfg.rounds > 1 else ""
                            log(f"{tag}library path: {cfg.window} callers, {cfg.duration:.1f} s")
                            library = await _library_phase(d, devices, cfg.window, cfg.duration)
                            log(f"{tag}bare aiohttp floor: {cfg.window} keep-alive connections "
                                f"({cfg.generator} x{cfg.clients}), {cfg.duration:.1f} s")
                            floor = await _http_phase(floor_url, token, devices, cfg)
                            log(f"{tag}bare aiohttp + dispatcher.call: {cfg.window} keep-alive connections, "
                                f"{cfg.duration:.1f} s")
                            bare = await _http_phase(bare_url, token, devices, cfg)
                            log(f"{tag}REST path: {cfg.window} keep-alive connections "
                                f"({cfg.generator} x{cfg.clients}), {cfg.duration:.1f} s")
                            rest = await _http_phase(ctx.url, token, devices, cfg)
                            rounds.append({"library": library, "floor": floor, "bare": bare, "rest": rest,
                                           **_derived(library, floor, bare, rest)})
                    finally:
                        await floor_runner.cleanup()
                        await bare_runner.cleanup()
        finally:
            await fleet.stop()
        # Medians over the rounds; each derived figure from the same round's phases.
        report: dict[str, Any] = {"config": msgspec.structs.asdict(cfg), "rounds": rounds}
        for path in PATHS:
            runs = [r[path] for r in rounds]
            merged = dict(runs[len(runs) // 2])
            for key in ("calls_per_s", "cpu_us_per_call", "sys_us_per_call", "p50_ms", "p99_ms"):
                merged[key] = median([r[key] for r in runs])
            merged["calls"] = sum(r["calls"] for r in runs)
            merged["errors"] = sum(r["errors"] for r in runs)
            if path != "library":
                statuses: dict[str, int] = {}
                for r in runs:
                    for s, n in r["statuses"].items():
                        statuses[s] = statuses.get(s, 0) + n
                merged["statuses"] = statuses
                merged["generator_cpu_us_per_call"] = median([r["generator_cpu_us_per_call"] for r in runs])
            report[path] = merged
        for key in ("rest_vs_library", "http_cpu_us_per_call", "aiohttp_cpu_us_per_call",
                    "unbatched_dispatch_cpu_us_per_call", "ours_cpu_us_per_call"):
            report[key] = median([r[key] for r in rounds])
        return report

    if cfg.url:
        return await with_broker(cfg.url)
    async with start_broker("auto") as broker:
        return await with_broker(broker.url)


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'path':<10}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'server CPU us/call':>20}"
             f"{'of it kernel':>14}{'client CPU us/call':>20}"]
    for name in PATHS:
        r = report[name]
        client = f"{r['generator_cpu_us_per_call']:>20.1f}" if "generator_cpu_us_per_call" in r else ""
        lines.append(f"{name:<10}{r['calls_per_s']:>10,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                     f"{r['cpu_us_per_call']:>20.1f}{r['sys_us_per_call']:>14.1f}{client}")
    n = len(report["rounds"])
    lines.append(("medians of %d rounds; " % n if n > 1 else "")
                 + f"REST reaches {report['rest_vs_library']:.0%} of the library path; "
                 f"the HTTP layer adds {report['http_cpu_us_per_call']:.1f} us of server CPU per call "
                 f"(JWT included) = aiohttp's floor {report['aiohttp_cpu_us_per_call']:.1f} us"
                 f" + the dispatcher unbatched {report['unbatched_dispatch_cpu_us_per_call']:.1f} us"
                 f" + fleetrpc's HTTP code {report['ours_cpu_us_per_call']:.1f} us; "
                 f"REST errors: {report['rest']['errors']}")
    return "\n".join(lines)


def command_main(devices: int, qos: int, duration: float, url: str | None, processes: int | None,
                 window: int, json_path: Any, quick: bool, *, generator: str = "raw", clients: int = 1,
                 rounds: int = 1) -> None:
    """``fleetrpc bench --rest``'s body (bench/command.py stays a table of flags)."""
    import click

    from ..runner import run
    from .http_load import wrk_available

    if generator == "wrk" and not wrk_available():
        raise click.BadParameter("wrk is not installed (Debian: apt-get install wrk)", param_hint="--generator")
    cfg = RestBenchConfig(devices=devices, qos=qos, duration=duration, url=url,
                          processes=1 if processes is None else processes, window=window,
                          generator=generator, clients=clients, rounds=rounds)
    if quick:
        cfg.devices, cfg.window, cfg.duration = min(cfg.devices, 20), min(cfg.window, 16), min(cfg.duration, 1.0)
    report = run(run_rest_bench(cfg, lambda msg: click.echo(msg, err=True)))
    click.echo(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        click.echo(f"report written to {json_path}", err=True)
