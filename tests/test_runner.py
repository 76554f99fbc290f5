"""fleetrpc.runner: the loop choice and the start-up heap freeze."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fleetrpc.runner import run, stop_on_signals


def test_run_uses_asyncio_when_asked(monkeypatch):
    monkeypatch.setenv("FLEETRPC_LOOP", "asyncio")

    async def loop_module():
        import asyncio

        return type(asyncio.get_running_loop()).__module__

    assert run(loop_module()).startswith("asyncio")


def test_freeze_startup_heap_hides_the_heap_but_not_new_garbage():
    # In a child: freezing is process-wide and must not leak into other tests.
    code = textwrap.dedent("""
        import gc, weakref
        from fleetrpc.runner import freeze_startup_heap

        class Node:
            pass

        keep = [Node() for _ in range(1000)]
        before = gc.get_freeze_count()
        freeze_startup_heap()
        assert gc.get_freeze_count() > before + 1000, (before, gc.get_freeze_count())
        # what is allocated afterwards is still collected, cycles included
        a = Node(); a.self = a
        ref = weakref.ref(a)
        del a
        gc.collect()
        assert ref() is None
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_raise_gc_threshold_raises_only_the_first_and_gives_the_old_back():
    import gc

    from fleetrpc.runner import SERVER_GC_THRESHOLD, raise_gc_threshold

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        assert raise_gc_threshold() == (700, 11, 12)
        assert gc.get_threshold() == (SERVER_GC_THRESHOLD, 11, 12)
        assert raise_gc_threshold(1000) == (SERVER_GC_THRESHOLD, 11, 12)  # never lowered
        assert gc.get_threshold() == (SERVER_GC_THRESHOLD, 11, 12)
    finally:
        gc.set_threshold(*saved)


@pytest.fixture
def sigint_restored():
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_stop_on_signals_sets_stop_and_gives_the_signals_back(monkeypatch, sigint_restored, loop):
    """SIGINT sets the event while the block runs; afterwards Ctrl-C raises
    KeyboardInterrupt again (left installed, it was bound to a closed loop
    and did nothing: seen after `fleetrpc simulate` ran in-process)."""
    monkeypatch.setenv("FLEETRPC_LOOP", loop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # however pytest was started

    async def main() -> bool:
        with stop_on_signals(asyncio.Event()) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.wait_for(stop.wait(), 5)
            return stop.is_set()

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert run(main()) is True
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler runs at the next bytecode boundary


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_stop_on_signals_keeps_an_inherited_ignore(monkeypatch, sigint_restored, loop):
    """A process started in the background (or under nohup) ignores SIGINT;
    a command that ran in it leaves it ignored (the loop's own removal of
    its handler would set Python's default, KeyboardInterrupt, instead)."""
    monkeypatch.setenv("FLEETRPC_LOOP", loop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    async def main() -> None:
        with stop_on_signals(asyncio.Event()) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), 5)

    run(main())
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_stop_on_signals_off_the_main_thread_installs_nothing():
    async def main() -> bool:
        with stop_on_signals(asyncio.Event()) as stop:
            return stop.is_set()

    before = signal.getsignal(signal.SIGINT)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, main()).result(10) is False
    assert signal.getsignal(signal.SIGINT) is before
