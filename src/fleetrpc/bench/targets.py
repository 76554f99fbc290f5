"""The dispatchers a run compares, behind one small interface (:class:`Target`):
``reference`` (bench/reference.py), ``limit`` (bench/limit.py) and
``fleetrpc`` (the Dispatcher)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import BenchConfig

__all__ = ["Target", "ReferenceTarget", "LimitTarget", "FleetrpcTarget", "make_target", "open_target"]


class Target:
    """What the harness needs from a dispatcher; one subclass per kind."""

    name = ""
    #: Source files whose allocations count as the target's own (memory phase).
    alloc_files: tuple[str, ...] = ()

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def ready(self, devices: list[str], timeout: float) -> None:
        """Return once every device can be called."""

    call: Callable[..., Any]

    async def fanout(self, devices: list[str], params: Any, timeout: float,
                     tick: Callable[[int], None]) -> tuple[int, int]:
        """One call to every device at once; returns (succeeded, failed)."""
        raise NotImplementedError

    async def sequential(self, devices: list[str], k: int, params: Any, timeout: float,
                         tick: Callable[[int], None]) -> tuple[int, int]:
        """``k`` calls per device, one at a time per device; (succeeded, failed)."""
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        return {}


class ReferenceTarget(Target):
    name = "reference"

    def __init__(self, url: str, cfg: BenchConfig) -> None:
        from . import reference

        self.alloc_files = (reference.__file__,)
        self.d = reference.ReferenceDispatcher(
            url, node_id=f"bench-ref-{os.getpid()}", qos=cfg.qos,
            window=max(cfg.window, cfg.mem_pending) + 16, default_timeout=cfg.timeout,
        )
        self.call = self.d.call

    async def start(self) -> None:
        await self.d.start()

    async def close(self) -> None:
        await self.d.close()

    async def fanout(self, devices, params, timeout, tick):
        # The plain way: one awaiting call per device, all at once.
        return await self.sequential(devices, 1, params, timeout, tick)

    async def sequential(self, devices, k, params, timeout, tick):
        call = self.call
        ok = failed = 0

        async def per_device(dev):
            nonlocal ok, failed
            for i in range(k):
                try:
                    await call(dev, "echo", params, timeout=timeout)
                    ok += 1
                except Exception:  # noqa: BLE001 - counted, never fatal
                    failed += 1
                tick(1)

        await asyncio.gather(*(per_device(dev) for dev in devices))
        return ok, failed

    def stats(self):
        return dict(self.d.stats)


class FleetrpcTarget(Target):
    name = "fleetrpc"

    def __init__(self, url: str, cfg: BenchConfig) -> None:
        from .. import dispatcher as dispatcher_module
        from ..config import Settings
        from ..dispatch import Dispatcher

        pkg = Path(dispatcher_module.__file__).resolve().parent
        # The package's own files, not the harness and the simulator.
        self.alloc_files = (str(pkg),)
        self._exclude = (str(pkg / "bench"), str(pkg / "sim"))
        self.d = Dispatcher(Settings(
            mqtt_url=url, node_id=f"bench-{os.getpid()}", qos=cfg.qos, min_timeout_ms=0,
            inflight_window=max(cfg.window, cfg.mem_pending) + 16,
            queue_cap=max(100, cfg.calls_per_device + 1),
        ))
        self.call = self.d.call

    async def start(self) -> None:
        await self.d.start()

    async def close(self) -> None:
        await self.d.close()

    async def ready(self, devices, timeout):
        # Calls to devices not (yet) known online fail at once: wait for the
        # retained presence of every device.
        deadline = time.monotonic() + timeout
        want = set(devices)
        while True:
            missing = len(want - self.d.online_devices)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{missing} devices not seen online by the dispatcher after {timeout:.0f} s")
            await asyncio.sleep(0.05)

    async def fanout(self, devices, params, timeout, tick):
        bc = self.d.broadcast(devices, "echo", params, timeout=timeout)
        async for _outcome in bc:
            tick(1)
        summary = await bc.wait()
        return summary.succeeded, summary.failed

    async def sequential(self, devices, k, params, timeout, tick):
        from .._core.constants import DeliveryStrategy

        d = self.d
        for dev in devices:
            d.configure_device(dev, strategy=DeliveryStrategy.SEQUENTIAL_ON_RESPONSE)
        try:
            # All k rounds are submitted at once; each device's queue releases
            # its next call only when the previous one has its reply.
            rounds = [d.broadcast(devices, "echo", params, timeout=timeout * k) for _ in range(k)]

            async def drain(bc):
                async for _outcome in bc:
                    tick(1)
                return await bc.wait()

            summaries = await asyncio.gather(*(drain(bc) for bc in rounds))
        finally:
            for dev in devices:
                d.configure_device(dev, strategy=DeliveryStrategy.BURST)
        return sum(s.succeeded for s in summaries), sum(s.failed for s in summaries)

    def stats(self):
        s = self.d.stats
        return s.as_dict() if hasattr(s, "as_dict") else dict(s)


class LimitTarget(Target):
    """The limit (bench/limit.py): frames MQTT and matches replies, nothing else."""

    name = "limit"

    def __init__(self, url: str, cfg: BenchConfig) -> None:
        from . import limit

        self.alloc_files = (limit.__file__,)
        self.d = limit.LimitDispatcher(url, node_id=f"bench-limit-{os.getpid()}", qos=cfg.qos)
        self.call = self.d.call

    async def start(self) -> None:
        await self.d.start()

    async def close(self) -> None:
        await self.d.close()

    def stats(self):
        return dict(self.d.stats)


_KINDS = {"reference": ReferenceTarget, "limit": LimitTarget, "fleetrpc": FleetrpcTarget}


def make_target(name: str, url: str, cfg: BenchConfig) -> Target:
    return _KINDS[name](url, cfg)


async def open_target(name: str, url: str, cfg: BenchConfig, devices: list[str]) -> Target:
    target = make_target(name, url, cfg)
    try:
        await asyncio.wait_for(target.start(), 30.0)
        await target.ready(devices, 30.0 + len(devices) / 500)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(target.close(), 15.0)
        raise
    return target
