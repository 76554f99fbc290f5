"""A periodic wake-up finer than the event loop's timers, for the open-loop
latency generator of ``fleetrpc bench``.

uvloop (libuv) keeps time and timer timeouts in whole milliseconds: a
``loop.call_later(0.0002, ...)`` or ``asyncio.sleep(0.0002)`` fires 0-2 ms
late, and a generator that wakes on such timers charges every call it sends
with that lateness (measured here on an idle loop: 0.46 ms at the median,
0.99 ms at p99, half of a 2 ms p99 budget).  A shorter sleep is a zero-delay
timer, i.e. a spinning generator that steals a core from the broker and the
fleet on a 2-core rig.

On Linux a ``timerfd`` fixes both: the kernel makes the descriptor readable
every ``period`` with microsecond precision, the loop wakes in ``epoll`` like
for any socket, and nothing spins.  Elsewhere the pacer falls back to the
loop's own timers (with their granularity, said by :attr:`Pacer.precise`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable

__all__ = ["Pacer"]

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timerfd(period: float) -> int | None:
    """A non-blocking timerfd firing every ``period`` s, or None where the
    platform has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    fd = create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
    if fd < 0:
        return None
    sec, nsec = int(period), int(round((period % 1) * 1e9))
    every = _Timespec(sec, max(nsec, 1) if sec == 0 else nsec)
    if settime(fd, 0, ctypes.byref(_Itimerspec(every, every)), None) != 0:
        os.close(fd)
        return None
    return fd


class Pacer:
    """Calls ``on_tick()`` every ``period`` seconds on the running loop until
    :meth:`close`.  Missed periods are not replayed: ``on_tick`` is expected to
    look at the clock and do everything that has come due since its last run
    (which is what keeps a late loop from being hidden)."""

    def __init__(self, period: float, on_tick: Callable[[], object]) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        self.period = period
        self._on_tick = on_tick
        self._loop = asyncio.get_running_loop()
        self._fd = _timerfd(period)
        self._handle: asyncio.TimerHandle | None = None
        self._closed = False
        if self._fd is not None:
            self._loop.add_reader(self._fd, self._fired)
        else:
            self._handle = self._loop.call_later(period, self._fired)

    @property
    def precise(self) -> bool:
        """True when a timerfd drives the ticks (sub-millisecond precision)."""
        return self._fd is not None

    def _fired(self) -> None:
        if self._closed:
            return
        if self._fd is not None:
            try:
                os.read(self._fd, 8)  # the count of expirations; re-arms readiness
            except BlockingIOError:
                return
        else:
            self._handle = self._loop.call_later(self.period, self._fired)
        self._on_tick()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def __enter__(self) -> Pacer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
