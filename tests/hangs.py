"""When a test hangs, show where its coroutines wait.

pytest-timeout prints the threads' stacks, and the main thread of a hung
asyncio test is always in the event loop's ``select``: that says nothing.
Shortly before the timeout fires, this prints every asyncio task's stack
(to the test's captured stderr, which the failure report shows).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading

import pytest

MARGIN = 10.0  # seconds before pytest-timeout's own report


def _timeout(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    try:
        return float(item.config.getini("timeout") or 0)
    except (ValueError, KeyError):
        return 0.0


def _running_loops() -> list[asyncio.AbstractEventLoop]:
    return [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]


def _await_chain(task: asyncio.Task) -> list[str]:
    """Where a task waits, outermost first: its coroutine and every one it
    awaits (a Task's own stack shows only the outermost frame)."""
    lines = []
    obj = task.get_coro()
    while obj is not None and len(lines) < 40:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        if frame is not None:
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        elif not hasattr(obj, "cr_await") and not hasattr(obj, "gi_yieldfrom"):
            lines.append(f"  awaiting {obj!r:.200}")
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None) or getattr(obj, "ag_await", None)
    return lines


def _print_tasks(nodeid: str) -> None:
    out = sys.stderr
    tasks = asyncio.all_tasks()
    print(f"\n==== {nodeid}: {len(tasks)} asyncio tasks, {MARGIN:.0f} s before the timeout ====", file=out)
    for task in tasks:
        print(f"{task.get_name()}:", *_await_chain(task), sep="\n", file=out)
    out.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    timeout = _timeout(item)
    timer = None
    if timeout > 2 * MARGIN:
        def fire() -> None:
            for loop in _running_loops():
                loop.call_soon_threadsafe(_print_tasks, item.nodeid)

        timer = threading.Timer(timeout - MARGIN, fire)
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
