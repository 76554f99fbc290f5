"""Polling helper shared by the integration tests."""

from __future__ import annotations

import asyncio
import inspect
import time


async def wait_until(predicate, timeout: float = 5.0) -> None:
    """Poll ``predicate`` every 10 ms until true; AssertionError after ``timeout``."""
    end = time.monotonic() + timeout
    while not _holds(predicate):
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _holds(predicate) -> bool:
    value = predicate()
    if inspect.isawaitable(value):
        # A coroutine is truthy: waiting on one would pass at once, unchecked.
        if inspect.iscoroutine(value):
            value.close()
        raise TypeError("wait_until needs a plain predicate, not one returning an awaitable")
    return bool(value)
