"""fleetrpc.runner: the loop choice and the start-up heap freeze."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from fleetrpc.runner import run


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
