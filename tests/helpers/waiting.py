"""Polling helper shared by the integration tests."""

from __future__ import annotations

import asyncio
import time


async def wait_until(predicate, timeout: float = 5.0) -> None:
    """Poll ``predicate`` every 10 ms until true; AssertionError after ``timeout``."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
