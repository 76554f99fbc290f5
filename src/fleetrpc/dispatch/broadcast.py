"""Fan-out: one call to many devices, one completion for all of them."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import msgspec

from ..errors import DeviceOfflineError, RpcTimeoutError

__all__ = ["Outcome", "BroadcastSummary", "Broadcast"]


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """What one device of a broadcast answered."""

    device: str
    ok: bool
    result: Any = None
    error: BaseException | None = None


class BroadcastSummary(msgspec.Struct, frozen=True):
    """The aggregate of a broadcast once every device has an outcome."""

    total: int
    succeeded: int
    failed: int
    timed_out: int
    offline: int
    #: Seconds from the broadcast to its last outcome.
    elapsed: float
    outcomes: list[Outcome]

    @property
    def results(self) -> dict[str, Any]:
        return {o.device: o.result for o in self.outcomes if o.ok}


class Broadcast:
    """One call to many devices.

    Iterate it (``async for outcome in bc``) to get outcomes as they arrive,
    or ``await bc.wait()`` for the :class:`BroadcastSummary`.  It is the one
    completion shared by all its calls: no Future per device.
    """

    def __init__(self, total: int, loop: asyncio.AbstractEventLoop) -> None:
        self.total = total
        self.done = 0
        self.succeeded = 0
        self.timed_out = 0
        self.offline = 0
        self._outcomes: list[Outcome] = []
        self._read = 0
        self._loop = loop
        # One per coroutine waiting for the next outcome: every reader (an
        # iteration, a wait()) is woken at each outcome, however many there are.
        self._waiters: list[asyncio.Future] = []
        # wait() needs only the last outcome: one future, woken once, rather
        # than a new waiter per loop iteration that records outcomes.
        self._finished: asyncio.Future | None = None
        self._started = time.perf_counter()
        self._elapsed: float | None = None

    def _record(self, device: str, ok: bool, result: Any, error: BaseException | None) -> None:
        self._outcomes.append(Outcome(device, ok, result, error))
        self.done += 1
        if ok:
            self.succeeded += 1
        elif isinstance(error, RpcTimeoutError):
            self.timed_out += 1
        elif isinstance(error, DeviceOfflineError):
            self.offline += 1
        if self.done >= self.total and self._elapsed is None:
            self._elapsed = time.perf_counter() - self._started
            finished = self._finished
            if finished is not None and not finished.done():
                finished.set_result(None)
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _changed(self) -> None:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def __call__(self, rid: int, device: str, result: Any, error: BaseException | None) -> None:
        self._record(device, error is None, result, error)

    @property
    def progress(self) -> float:
        return self.done / self.total if self.total else 1.0

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Outcome]:
        # One cursor for all iterations: an iteration broken off and started
        # again goes on where it stopped (concurrent ones share the outcomes).
        while True:
            while self._read < len(self._outcomes):
                self._read += 1
                yield self._outcomes[self._read - 1]
            if self.done >= self.total:
                return
            await self._changed()

    async def wait(self) -> BroadcastSummary:
        if self.done < self.total:
            if self._finished is None:
                self._finished = self._loop.create_future()
            # shield: one cancelled wait() must not cancel the others' future
            await asyncio.shield(self._finished)
        return BroadcastSummary(
            total=self.total,
            succeeded=self.succeeded,
            failed=self.total - self.succeeded,
            timed_out=self.timed_out,
            offline=self.offline,
            elapsed=self._elapsed or 0.0,
            outcomes=list(self._outcomes),
        )
