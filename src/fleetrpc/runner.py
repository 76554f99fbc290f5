"""Run a coroutine on uvloop when it is available (the default), else asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from typing import Any, Coroutine, Iterator


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


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[asyncio.Event]:
    """Set ``stop`` on SIGINT or SIGTERM while the block runs, then give
    the signals back.  Left installed, SIGINT would stay bound to a closed
    loop: a command run in-process (click's test runner, an embedding
    program) would leave Ctrl-C doing nothing afterwards.  Off the main
    thread, where a loop may not take signals, nothing is installed.  The
    handlers found are put back as they were: the loop's own removal sets
    SIGINT to Python's default, which would turn an inherited "ignore" (a
    process started in the background, under nohup) into KeyboardInterrupt."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            continue
        installed.append((sig, previous))
    try:
        yield stop
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            if previous is not None:  # None: installed outside Python, nothing to give back
                signal.signal(sig, previous)


#: The garbage collector's first threshold in a server (Python's default: 700).
SERVER_GC_THRESHOLD = 50_000


def raise_gc_threshold(first: int = SERVER_GC_THRESHOLD) -> tuple[int, int, int]:
    """Let the young generation grow to ``first`` objects before a collection.

    A server's live set churns: every call in flight holds a few tracked
    objects (its future, the caller's frame, decoded params) that die by
    reference counting, not by the collector, and every connected device
    holds a few more for as long as it stays.  Python counts allocations
    minus deallocations, so with 700 the collector runs every few hundred
    calls, each pass walks what is in flight, and each object alive at a
    pass is promoted until a full pass walks every session: measured with
    10,000 devices and 20,000 calls in flight on fleetrpc's own endpoint,
    ~9.7 us of CPU per round trip (a fifth of it) and a 200 ms pause in
    every 5 s (docs/endpoint.md).  At 50,000: 1.5-2.6 us, longest pause
    130-160 ms, and throughput up by a sixth to two fifths.  Cyclic garbage
    waits longer for its pass; fleetrpc's hot paths make none.

    Never lowers a threshold set higher already.  Process-wide, like
    :func:`freeze_startup_heap`; returns the thresholds it replaced, which
    ``gc.set_threshold(*old)`` puts back.
    """
    old = gc.get_threshold()
    if first > old[0]:
        gc.set_threshold(first, *old[1:])
    return old


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
