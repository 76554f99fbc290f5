"""One timed phase of a workload (:class:`Phase`: CPU, wall clock, the
rig's other processes, progress) and the closed loop of callers that
several workloads drive."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

from .config import BenchConfig, Progress
from .rig import cpu_seconds
from .targets import Target

__all__ = ["RIG", "Phase", "ticking", "closed_loop"]


#: The rig's other processes whose CPU each phase reports: name -> pids.
RIG: ContextVar[dict[str, tuple[int, ...]]] = ContextVar("fleetrpc_bench_rig", default={})


class Phase:
    """CPU and wall clock of one phase, and a progress ticker."""

    def __init__(self, progress: Progress, target: str, workload: str, total: float, text: str = "") -> None:
        self.progress = progress
        self.target = target
        self.workload = workload
        self.total = total
        self.done = 0.0
        self._next = 0.0
        self.text = text

    def __enter__(self) -> Phase:
        gc.collect()
        self._rig0 = {name: cpu_seconds(pids) for name, pids in RIG.get().items() if pids}
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()
        self.progress(self.target, self.workload, 0, self.total, self.text)
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0
        #: CPU seconds of the rig's other processes over the phase.
        self.rig_cpu: dict[str, float | None] = {}
        for name, before in self._rig0.items():
            after = cpu_seconds(RIG.get()[name])
            self.rig_cpu[name] = None if before is None or after is None else after - before
        self.progress(self.target, self.workload, self.total, self.total, self.text)

    def tick(self, n: float = 1) -> None:
        # Called per outcome in some phases: redraw at most every 1 %.
        self.done += n
        if self.done >= self._next or n == 0:
            self._next = self.done + self.total / 100
            self.progress(self.target, self.workload, self.done, self.total, self.text)

    def cpu_us_per(self, n: int) -> float | None:
        return round(self.cpu / n * 1e6, 2) if n else None

    def rig_report(self, n: int) -> dict[str, float | None]:
        """The rig's CPU over the phase: share of one core per process group,
        and the broker's CPU per round trip (of ``n``)."""
        out: dict[str, float | None] = {}
        for name, cpu in self.rig_cpu.items():
            out[f"{name}_cpu"] = None if cpu is None else round(cpu / self.elapsed, 3)
        broker = self.rig_cpu.get("broker")
        if broker is not None and n:
            out["broker_cpu_us_per_rt"] = round(broker / n * 1e6, 2)
        return out


async def ticker(phase: Phase, period: float = 0.2) -> None:
    """Advance a time-based progress bar while a phase runs."""
    while True:
        await asyncio.sleep(period)
        phase.progress(phase.target, phase.workload, min(phase.total, time.perf_counter() - phase.t0),
                       phase.total, phase.text)


@contextlib.asynccontextmanager
async def ticking(phase: Phase) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(ticker(phase))
    try:
        yield
    finally:
        task.cancel()


async def closed_loop(target: Target, devices: list[str], cfg: BenchConfig, seconds: float,
                       *, method: str = "echo", oneway: bool = False, record: bool = True) -> dict[str, Any]:
    """``window`` callers, each calling again as soon as its call returned."""
    call = target.call
    params = cfg.params
    timeout = cfg.timeout
    n = len(devices)
    window = cfg.window
    end = time.perf_counter() + seconds
    # A count bound as well as the time bound: a target failing every call
    # instantly must not spin for ever either.
    limit = int(seconds * 2_000_000 / window) + 1
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    ok = 0
    clock = time.perf_counter

    async def caller(k: int) -> None:
        nonlocal ok
        i = k
        lat = latencies.append
        for step in range(limit):
            t = clock()
            if t >= end:
                return
            try:
                await call(devices[i % n], method, params, timeout=timeout, oneway=oneway)
            except Exception as exc:  # noqa: BLE001 - counted, never fatal
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0)
            else:
                ok += 1
                if record:
                    lat(clock() - t)
            if oneway and not step & 63:
                # A one-way call may complete without ever yielding to the loop.
                await asyncio.sleep(0)
            i += window

    await asyncio.gather(*(caller(k) for k in range(window)))
    return {"ok": ok, "errors": dict(errors), "latencies": latencies}
