"""Times of timing-wheel ticks, for tests that step a wheel tick by tick."""

from __future__ import annotations

import math


def tick_start(k: int, tick: float) -> float:
    """The earliest float time whose tick (floor(t / tick)) is k."""
    t = k * tick
    while math.floor(t / tick) < k:
        t = math.nextafter(t, math.inf)
    while math.floor(math.nextafter(t, -math.inf) / tick) >= k:
        t = math.nextafter(t, -math.inf)
    return t
