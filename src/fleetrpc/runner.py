"""Run a coroutine on uvloop when it is available (the default), else asyncio."""

from __future__ import annotations

import asyncio
import gc
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


def freeze_startup_heap() -> None:
    """Take everything allocated so far out of the garbage collector's sight.

    Call once a long-running process has started (connections open, modules
    imported).  A full collection walks every tracked object: about 27,000
    after importing fleetrpc, uvloop, gmqtt and msgspec, which takes 4-8 ms
    on the project's machine -- a pause that every call in flight waits out,
    every few seconds under load.  Frozen objects are never scanned (and
    never freed: only what lives for the whole process belongs there), so
    the pauses drop to what was allocated since.  Process-wide, so the
    library never does it on its own; an embedding server calls it after
    ``await dispatcher.start()``.
    """
    gc.collect()
    gc.freeze()
