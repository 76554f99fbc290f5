"""Throughput workloads: ``peak`` (closed loop), ``latency`` (open loop at a
fixed rate, timed from each call's scheduled start) and ``oneway``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

from ..sim.fleet import Fleet
from .pacer import Pacer
from .phase import Phase, closed_loop, ticking
from .rig import percentiles

__all__ = ["peak", "fixed_rate", "oneway", "PACER_PERIOD"]

#: Period of the open-loop generator's wake-ups (s): the most a call can
#: leave after its intended time on an idle loop.
PACER_PERIOD = 0.0005


async def peak(target, devices, cfg, progress) -> dict[str, Any]:
    with Phase(progress, target.name, "peak", cfg.warmup, "warm-up") as w:
        async with ticking(w):
            await closed_loop(target, devices, cfg, cfg.warmup, record=False)
    with Phase(progress, target.name, "peak", cfg.duration) as ph:
        async with ticking(ph):
            r = await closed_loop(target, devices, cfg, cfg.duration)
    ok = r["ok"]
    return {
        "window": cfg.window,
        "round_trips": ok,
        "errors": r["errors"],
        "elapsed_s": round(ph.elapsed, 3),
        "rps": round(ok / ph.elapsed, 1),
        **percentiles(r["latencies"]),
        "cpu_s": round(ph.cpu, 3),
        "cpu_us_per_rt": ph.cpu_us_per(ok),
        **ph.rig_report(ok),
    }


async def fixed_rate(target, devices, cfg, progress, peak_rps: float,
                      label: str = "latency") -> dict[str, Any]:
    rate = max(1.0, peak_rps * cfg.rate_fraction)
    total = max(1, int(rate * cfg.duration))
    call = target.call
    params = cfg.params
    timeout = cfg.timeout
    n = len(devices)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    outstanding = 0
    cap = max(10 * cfg.window, 10_000)  # beyond this the target is overloaded: shed
    shed = 0
    all_done = loop.create_future()
    launched = 0
    clock = time.perf_counter

    async def one(dev: str, scheduled: float) -> None:
        nonlocal outstanding
        try:
            await call(dev, "echo", params, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - counted, never fatal
            errors[type(exc).__name__] += 1
        else:
            latencies.append(clock() - scheduled)
        outstanding -= 1
        if outstanding == 0 and launched >= total and not all_done.done():
            all_done.set_result(None)

    def release_due() -> None:
        # Every call whose intended time has come leaves now and is timed
        # from its intended time, so a late wake-up is charged to the calls
        # it delayed (no coordinated omission).
        nonlocal launched, shed, outstanding
        elapsed = clock() - t0
        due = min(total, int(elapsed * rate) + 1)
        while launched < due:
            if outstanding >= cap:
                shed += 1
            else:
                outstanding += 1
                loop.create_task(one(devices[launched % n], t0 + launched / rate))
            launched += 1
        if elapsed > cfg.duration * 2 + 1:  # the loop itself fell behind: stop
            shed += total - launched
            launched = total
        if launched >= total and not generated.done():
            generated.set_result(None)

    generated = loop.create_future()
    with Phase(progress, target.name, label, cfg.duration, f"{rate:,.0f}/s") as ph:
        async with ticking(ph):
            t0 = clock()
            # A timerfd pacer: uvloop's own timers are whole milliseconds
            # late, a finer sleep spins (see fleetrpc.bench.pacer).
            with Pacer(PACER_PERIOD, release_due):
                release_due()
                await generated
            if outstanding:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(all_done), timeout + 2.0)
    done = len(latencies)
    return {
        "target_rps": round(rate, 1),
        "achieved_rps": round(done / ph.elapsed, 1),
        "calls": done,
        "errors": dict(errors),
        "shed": shed,
        **percentiles(latencies),
        "cpu_s": round(ph.cpu, 3),
        "cpu_us_per_rt": ph.cpu_us_per(done),
        **ph.rig_report(done),
    }


async def oneway(target, devices, cfg, progress, fleet: Fleet) -> dict[str, Any]:
    before = (await fleet.stats())["notified"]
    with Phase(progress, target.name, "oneway", cfg.duration) as ph:
        async with ticking(ph):
            r = await closed_loop(target, devices, cfg, cfg.duration, method="notify", oneway=True, record=False)
        issued_s = time.perf_counter() - ph.t0
        sent = r["ok"]
        # Then wait for the devices to have them all (bounded).
        delivered, last_t, last_change = 0, time.perf_counter(), time.perf_counter()
        while delivered < sent:
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            got = (await fleet.stats())["notified"] - before
            if got != delivered:
                delivered, last_t, last_change = got, now, now
            elif now - last_change > 2.0 or now - ph.t0 > cfg.duration + cfg.timeout:
                break
    span = max(last_t - ph.t0, issued_s)
    return {
        "window": cfg.window,
        "sent": sent,
        "errors": r["errors"],
        "sent_per_s": round(sent / issued_s, 1),
        "delivered": delivered,
        "delivered_per_s": round(delivered / span, 1),
        "lost": max(0, sent - delivered),
        "cpu_s": round(ph.cpu, 3),
        "cpu_us_per_call": ph.cpu_us_per(sent),
    }
