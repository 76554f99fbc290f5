"""Run a coroutine on uvloop when it is available (the default), else asyncio."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Coroutine


def use_uvloop() -> bool:
    if os.environ.get("FLEETRPC_LOOP", "uvloop") == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` on uvloop (``FLEETRPC_LOOP=asyncio`` opts out)."""
    if use_uvloop():
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
