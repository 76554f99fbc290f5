"""Time for the things that run on a schedule (center crons, an agent's
self crons): a :class:`Clock` is ``time()`` and ``sleep_until(when, wake)``.
:class:`SystemClock` is the real one; :class:`ManualClock` moves only when a
test tells it to, so that firings are tested without waiting or sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "ManualClock"]


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch."""

    async def sleep_until(self, when: float, wake: asyncio.Event) -> None:
        """Return at ``when`` (epoch seconds) or once ``wake`` is set."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    async def sleep_until(self, when: float, wake: asyncio.Event) -> None:
        delay = when - time.time()
        if delay <= 0 or wake.is_set():
            return
        try:
            await asyncio.wait_for(wake.wait(), delay)
        except asyncio.TimeoutError:
            pass


class ManualClock:
    """A clock that moves only when told to (:meth:`set`, :meth:`advance`);
    sleepers whose time has come wake at once."""

    def __init__(self, now: float) -> None:
        self._now = float(now)
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = 0

    def time(self) -> float:
        return self._now

    def set(self, now: float) -> None:
        self._now = float(now)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    async def sleep_until(self, when: float, wake: asyncio.Event) -> None:
        if when <= self._now or wake.is_set():
            return
        fut = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (when, self._seq, fut))
        waiter = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait([fut, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not fut.done():
                fut.cancel()
