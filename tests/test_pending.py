"""PendingTable: the contract of docs/core.md, for both variants (``core``)."""

from __future__ import annotations

import gc
import random
import sys
import tracemalloc
import weakref

import pytest

from fleetrpc import _core
from fleetrpc.errors import UnknownRequestError, WrongDeviceError


def new_table(core):
    # Not a fixture: pytest keeps fixture values alive until after the leak check.
    return core.PendingTable(core.TimingWheel(0.005))


class Completion:
    """A completion object that can be weakly referenced and carry a back-reference."""


# -- add / resolve ---------------------------------------------------------------------------


def test_rids_count_up_and_are_never_reused(core):
    table = new_table(core)
    assert table.next_rid == 1
    rids = [table.add("dev", object(), 1.0) for _ in range(5)]
    assert rids == [1, 2, 3, 4, 5]
    assert table.next_rid == 6  # the dispatcher tells ended calls (below it) from unknown ids
    for r in rids:
        table.resolve(r)
    assert table.add("dev", object(), 1.0) == 6
    assert len(table) == 1 and table.next_rid == 7


def test_add_resolve(core):
    wheel = core.TimingWheel()
    t = core.PendingTable(wheel)
    c = Completion()
    rid = t.add("dev-1", c, 1.0, 5)
    assert type(rid) is int
    assert rid in t and len(t) == 1 and len(wheel) == 1
    assert t.peek(rid) == ("dev-1", c, 5)
    assert t.resolve(rid) is c
    assert rid not in t and len(t) == 0
    assert len(wheel) == 0  # deadline cancelled
    assert t.expire(10.0) == []


def test_resolve_unknown(core):
    table = new_table(core)
    for rid in (1, 0, -5, 2**53, 2**64, 2**200):
        with pytest.raises(UnknownRequestError) as e:
            table.resolve(rid)
        assert str(e.value) == f"request {rid} is not pending"
    rid = table.add("d", None, 1.0)
    table.resolve(rid)
    with pytest.raises(UnknownRequestError, match=f"^request {rid} is not pending$"):
        table.resolve(rid)
    with pytest.raises(LookupError):  # UnknownRequestError is a LookupError
        table.resolve(rid)


def test_resolve_wrong_device_keeps_entry(core):
    table = new_table(core)
    c = object()
    rid = table.add("a", c, 1.0)
    with pytest.raises(WrongDeviceError) as e:
        table.resolve(rid, "b")
    assert str(e.value) == f"request {rid} belongs to device 'a', not 'b'"
    assert rid in table
    assert table.resolve(rid, "a") is c


def test_resolve_device_str_subclass(core):
    table = new_table(core)
    class Dev(str):
        pass

    rid = table.add("a", 1, 1.0)
    with pytest.raises(WrongDeviceError):
        table.resolve(rid, Dev("b"))
    assert table.resolve(rid, Dev("a")) == 1


def test_argument_types(core):
    table = new_table(core)
    rid = table.add("d", None, 1.0)
    for bad, name in (("1", "str"), (1.0, "float"), (None, "NoneType")):
        for call in (table.resolve, table.peek, lambda r: table.set_flags(r, 1),
                     lambda r: table.rearm(r, 2.0)):
            with pytest.raises(TypeError) as e:
                call(bad)
            assert str(e.value) == f"rid must be an int, got {name}"
        assert bad not in table
    with pytest.raises(TypeError) as e:
        table.resolve(rid, 5)
    assert str(e.value) == "device must be a str or None, got int"
    with pytest.raises(TypeError) as e:
        table.add(b"dev", None, 1.0)
    assert str(e.value) == "device must be a str, got bytes"
    with pytest.raises(TypeError, match="must be real number, not str"):
        table.add("d", None, "1.0")
    with pytest.raises(TypeError, match="must be real number, not str"):
        table.rearm(rid, "1.0")
    with pytest.raises(TypeError, match="must be real number, not str"):
        table.expire("1.0")
    assert len(table) == 1 and rid in table


def test_flags(core):
    table = new_table(core)
    rid = table.add("d", None, 1.0)
    assert table.peek(rid)[2] == 0
    table.set_flags(rid, 2**32 - 1)
    assert table.peek(rid)[2] == 2**32 - 1
    table.set_flags(rid, True)
    assert table.peek(rid) == ("d", None, 1) and type(table.peek(rid)[2]) is int
    for bad in (-1, 2**32, 2**70):
        with pytest.raises(ValueError) as e:
            table.set_flags(rid, bad)
        assert str(e.value) == f"flags must be in [0, 2**32), got {bad!r}"
        with pytest.raises(ValueError):
            table.add("d", None, 1.0, bad)
    with pytest.raises(TypeError) as e:
        table.add("d", None, 1.0, 1.5)
    assert str(e.value) == "flags must be an int, got float"
    with pytest.raises(UnknownRequestError, match="^request 99 is not pending$"):
        table.set_flags(99, 1)
    assert len(table) == 1


def test_bad_deadline_adds_nothing(core):
    table = new_table(core)
    with pytest.raises(ValueError) as e:
        table.add("d", None, float("nan"))
    assert str(e.value) == "deadline must be finite and within 2**62 ticks of 0, got nan"
    assert len(table) == 0
    assert table.add("d", None, 1.0) == 1  # the failed add used no id


def test_peek(core):
    table = new_table(core)
    assert table.peek(1) is None
    assert table.peek(-1) is None
    assert table.peek(2**80) is None
    rid = table.add("d", "c", 1.0, 3)
    assert table.peek(rid) == ("d", "c", 3)
    assert table.peek(True) == ("d", "c", 3)  # True == 1


def test_contains(core):
    table = new_table(core)
    rid = table.add("d", None, 1.0)
    assert rid in table
    assert rid + 1 not in table
    assert "1" not in table and 1.0 not in table and None not in table
    assert 2**100 not in table and -1 not in table


# -- deadlines: expire / rearm / drain --------------------------------------------------------


def test_expire(core):
    wheel = core.TimingWheel(0.01)
    t = core.PendingTable(wheel)
    c1, c2, c3 = object(), object(), object()
    r1 = t.add("a", c1, 0.5, 1)
    r2 = t.add("b", c2, 0.2, 2)
    r3 = t.add("c", c3, 5.0, 3)
    assert t.expire(0.1) == []
    assert t.expire(0.6) == [(r2, "b", c2, 2), (r1, "a", c1, 1)]
    assert len(t) == 1 and len(wheel) == 1
    with pytest.raises(UnknownRequestError):
        t.resolve(r1)
    assert t.expire(10.0) == [(r3, "c", c3, 3)]
    assert len(wheel) == 0


def test_expire_never_early_at_most_one_tick_late(core):
    tick = 0.005
    t = core.PendingTable(core.TimingWheel(tick))
    deadlines = {t.add("d", None, 0.0013 * i): 0.0013 * i for i in range(1, 500)}
    now = 0.0
    while len(t):
        now += 0.001
        for rid, *_ in t.expire(now):
            d = deadlines.pop(rid)
            assert d <= now < d + tick + 0.001
    assert not deadlines


def test_rearm(core):
    wheel = core.TimingWheel(0.01)
    t = core.PendingTable(wheel)
    rid = t.add("d", "c", 0.1)
    t.rearm(rid, 1.0)
    assert len(wheel) == 1  # the old deadline was cancelled
    assert t.expire(0.5) == []
    with pytest.raises(ValueError):
        t.rearm(rid, float("inf"))  # the old deadline stays
    assert t.expire(1.02) == [(rid, "d", "c", 0)]
    with pytest.raises(UnknownRequestError, match=f"^request {rid} is not pending$"):
        t.rearm(rid, 2.0)
    # Rearm to the past: due at the next expire.
    rid = t.add("d", "c", 100.0)
    t.rearm(rid, 0.0)
    assert t.expire(1.02) == [(rid, "d", "c", 0)]


def test_drain(core):
    wheel = core.TimingWheel()
    t = core.PendingTable(wheel)
    rids = [t.add(f"d{i}", i, 10.0 - i * 0.1, i) for i in range(300)]
    for r in rids[::3]:
        t.resolve(r)
    got = t.drain()
    assert [g[0] for g in got] == sorted(rids[1::3] + rids[2::3])
    assert all(g == (g[0], f"d{g[2]}", g[2], g[2]) for g in got)
    assert len(t) == 0 and len(wheel) == 0
    assert t.drain() == []
    assert t.add("x", None, 1.0) == 301


def test_foreign_payloads_are_ignored(core):
    wheel = core.TimingWheel(0.01)
    t = core.PendingTable(wheel)
    rid = t.add("d", None, 0.5)
    wheel.schedule(0.5, 12345)  # not a pending rid
    wheel.schedule(0.5, rid + 1)  # not yet added
    assert t.expire(1.0) == [(rid, "d", None, 0)]


def test_wheel_must_match_variant(core):
    for bad in (None, object(), "wheel"):
        with pytest.raises(TypeError) as e:
            core.PendingTable(bad)
        t = type(bad)
        assert str(e.value) == (
            f"wheel must be a TimingWheel of the same variant, got {t.__module__}.{t.__qualname__}"
        )
    for name, other in _core.VARIANTS.items():
        if name != core.name and "TimingWheel" in other:
            with pytest.raises(TypeError, match="of the same variant"):
                core.PendingTable(other["TimingWheel"]())


# -- references and memory -----------------------------------------------------------------------


def test_refcounts(core):
    wheel = core.TimingWheel(0.01)
    t = core.PendingTable(wheel)
    dev = "device-" + str(random.random())  # a fresh str: its count is ours alone
    comp = Completion()
    base = (sys.getrefcount(dev), sys.getrefcount(comp))
    rids = [t.add(dev, comp, 1.003 + i * 0.01) for i in range(10)]
    assert sys.getrefcount(comp) >= base[1] + 10
    t.resolve(rids[0])
    t.resolve(rids[1], dev)
    with pytest.raises(WrongDeviceError):
        t.resolve(rids[2], "other")
    got = t.expire(1.065)
    assert [g[0] for g in got] == rids[2:6]
    del got
    drained = t.drain()
    assert len(drained) == 4
    del drained
    assert (sys.getrefcount(dev), sys.getrefcount(comp)) == base
    t.add(dev, comp, 1.0)
    t.add(dev, comp, 2.0)
    del t
    gc.collect()
    assert (sys.getrefcount(dev), sys.getrefcount(comp)) == base
    assert len(wheel) == 0  # a dropped table cancels its deadlines


def test_cycle_through_completion_is_collected(core):
    wheel = core.TimingWheel()
    t = core.PendingTable(wheel)
    c = Completion()
    c.table = t  # completion -> table -> completion
    t.add("d", c, 1.0)
    ref = weakref.ref(c)
    del c, t
    gc.collect()
    assert ref() is None
    assert len(wheel) == 0


def test_reentrant_finalizers(core):
    # A completion's finalizer that uses the table while the table pops it.
    wheel = core.TimingWheel(0.01)
    t = core.PendingTable(wheel)
    log = []

    class Nasty:
        def __init__(self, n):
            self.n = n

        def __del__(self):
            rid = t.add("late", None, 100.0)
            log.append(rid)
            for other in list(log[:-1]):
                if other in t:
                    t.resolve(other)

    for i in range(50):
        t.add("d", Nasty(i), 0.05 + (i % 5) * 0.01)
    got = t.expire(0.2)
    assert len(got) == 50
    del got
    gc.collect()
    assert len(log) == 50
    assert len(t) == 1  # each finalizer resolved the previous late add
    rid = t.add("x", Nasty(99), 0.3)
    t.resolve(rid)
    assert len(log) == 51
    t.add("y", Nasty(100), 0.3)
    t.drain()
    assert len(log) == 52
    t.drain()


def test_many_entries_and_shrink(core):
    wheel = core.TimingWheel(0.001)
    t = core.PendingTable(wheel)
    rng = random.Random(7)
    deadlines = {}
    for _ in range(3):
        for _ in range(20_000):
            d = rng.uniform(0.0, 2.0)
            deadlines[t.add(f"d{rng.randrange(100)}", None, d)] = d
        for rid in rng.sample(sorted(deadlines), 10_000):
            t.resolve(rid)
            del deadlines[rid]
        assert len(t) == len(deadlines) == len(wheel)
        for rid, d in rng.sample(sorted(deadlines.items()), 100):
            assert t.peek(rid) is not None
        now = wheel.now + 2.1
        got = t.expire(now)
        assert sorted(g[0] for g in got) == sorted(deadlines)
        deadlines.clear()
        assert len(t) == 0 and len(wheel) == 0
    assert t.add("d", None, 1.0) == 60_001


@pytest.mark.parametrize("n", [1 << 16, 20_000, (1 << 16) + 2])
def test_call_memory(core, n):
    if core.name != "c":
        pytest.skip("the byte budget is the compiled table's")
    wheel = core.TimingWheel()
    t = core.PendingTable(wheel)
    done = object()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        add = t.add
        for i in range(n - 1):
            add("dev", done, 1.0 + i * 1e-4)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # 40 B slab + 32 B wheel entry + 8-16 B index (load 1/4 to 1/2)
    assert used / n <= 100
    # The slab and the pool have less than a page (1,024 entries) of slack
    # at any size, also just past a power of two (doubling arrays had 160 B
    # per call allocated at 65,537).
    index = 4 * 2 ** (2 * n - 1).bit_length() / n
    assert used / n <= (40 + 32) * (1 + 1024 / n) + index + 0.5


# -- CallFuture: the completion a call() returns --------------------------------------------
#
# Wired as the dispatcher wires it: the site's cancel hook drops the call's
# entry, so a cancelled future leaves nothing pending (and, on the debug
# core, no counted entry: the autouse leak check).

import asyncio  # noqa: E402
import contextvars  # noqa: E402

import uvloop  # noqa: E402


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    return asyncio.run if request.param == "asyncio" else uvloop.run


class Calls:
    """A table and a site as the dispatcher has them; ``call()`` makes a pending call."""

    def __init__(self, core, loop):
        self.table = new_table(core)
        self.cancelled: list[int] = []
        self.site = core.CallSite(loop, self._cancel)
        self.core = core

    def _cancel(self, rid):
        self.cancelled.append(rid)
        if rid in self.table:
            self.table.resolve(rid)

    def call(self):
        fut = self.site.future()
        self.table.add("dev", fut, 10.0)
        return fut

    def answer(self, fut, result=None, error=None):
        self.table.resolve(fut.rid)
        fut._finish(result, error)


def test_call_future_is_a_future_and_a_coroutine(core, run):
    import collections.abc

    async def main():
        calls = Calls(core, asyncio.get_running_loop())
        fut = calls.call()
        assert fut.rid == 1 and not fut.done() and not fut.cancelled()
        assert asyncio.isfuture(fut) and isinstance(fut, collections.abc.Coroutine)
        assert fut.get_loop() is asyncio.get_running_loop()
        assert asyncio.ensure_future(fut) is fut
        with pytest.raises(asyncio.InvalidStateError):
            fut.result()
        with pytest.raises(asyncio.InvalidStateError):
            fut.exception()
        assert type(fut).__name__ in repr(fut) and "pending" in repr(fut)
        with pytest.raises(TypeError):
            core.CallFuture()
        asyncio.get_running_loop().call_later(0.01, calls.answer, fut, {"ok": 1})
        assert await fut == {"ok": 1}
        assert fut.done() and fut.result() == {"ok": 1} and fut.exception() is None
        assert await fut == {"ok": 1}  # awaited again: the same result
        assert fut.cancel() is False and calls.cancelled == []
        with pytest.raises(asyncio.InvalidStateError):
            fut.set_result(2)
        assert len(calls.table) == 0

    run(main())


def test_call_future_errors_at_the_await(core, run):
    async def main():
        calls = Calls(core, asyncio.get_running_loop())
        fut = calls.call()
        err = ValueError("no")
        asyncio.get_running_loop().call_soon(calls.answer, fut, None, err)
        with pytest.raises(ValueError) as info:
            await fut
        assert info.value is err and fut.exception() is err
        fut._finish(1, None)  # once done, the dispatcher's completion is a no-op
        assert fut.exception() is err
        # A tuple result is the result, not StopIteration's arguments.
        fut = calls.call()
        asyncio.get_running_loop().call_soon(calls.answer, fut, (1, 2))
        assert await fut == (1, 2)

    run(main())


def test_call_future_in_tasks_gather_and_wait_for(core, run):
    async def main():
        loop = asyncio.get_running_loop()
        calls = Calls(core, loop)
        direct = loop.create_task(calls.call())  # a Task around it, no coroutine
        futs = [calls.call() for _ in range(3)]
        loop.call_soon(lambda: [calls.answer(f, i) for i, f in enumerate(futs)])
        assert await asyncio.gather(*futs) == [0, 1, 2]
        assert not direct.done()
        slow = calls.call()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow, 0.01)
        assert slow.cancelled() and calls.cancelled == [slow.rid]
        shielded = calls.call()
        waiter = asyncio.shield(shielded)
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert not shielded.done()  # shield: the call goes on
        calls.answer(shielded, "late")
        assert await shielded == "late"
        direct.cancel()
        with pytest.raises(asyncio.CancelledError):
            await direct
        assert len(calls.table) == 0 and len(calls.cancelled) == 2

    run(main())


def test_cancelling_the_awaiting_task_drops_the_call(core, run):
    async def main():
        loop = asyncio.get_running_loop()
        calls = Calls(core, loop)
        futs = [calls.call() for _ in range(4)]

        async def user(f):
            return await f

        tasks = [loop.create_task(user(f)) for f in futs[:2]]
        tasks.append(loop.create_task(futs[2]))
        await asyncio.sleep(0)
        assert len(calls.table) == 4
        for t in tasks:
            t.cancel("stop")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert all(t.cancelled() for t in tasks)
        assert all(f.cancelled() for f in futs[:3])
        assert sorted(calls.cancelled) == [f.rid for f in futs[:3]]
        # A task cancelled before it ever ran: the call goes as well.
        early = loop.create_task(futs[3])
        early.cancel()
        with pytest.raises(asyncio.CancelledError):
            await early
        assert futs[3].cancelled() and len(calls.table) == 0
        # throw() / close() into a pending one drop it too.
        f = calls.call()
        with pytest.raises(KeyError):
            f.throw(KeyError("x"))
        g = calls.call()
        g.close()
        assert f.cancelled() and g.cancelled() and len(calls.table) == 0

    run(main())


def test_call_future_callbacks(core, run):
    async def main():
        loop = asyncio.get_running_loop()
        calls = Calls(core, loop)
        fut = calls.call()
        seen = []
        var = contextvars.ContextVar("v", default="none")

        def cb(tag):
            return lambda f: seen.append((tag, f.result(), var.get()))

        a, b, c = cb("a"), cb("b"), cb("c")
        ctx = contextvars.copy_context()
        ctx.run(var.set, "ctx")
        fut.add_done_callback(a, context=ctx)
        fut.add_done_callback(b)
        fut.add_done_callback(c)
        fut.add_done_callback(b)
        assert fut.remove_done_callback(b) == 2
        assert fut.remove_done_callback(b) == 0
        calls.answer(fut, 7)
        assert seen == []  # scheduled, never run inside the completion
        await asyncio.sleep(0)
        assert seen == [("a", 7, "ctx"), ("c", 7, "none")]
        fut.add_done_callback(a)  # already done: scheduled at once
        await asyncio.sleep(0)
        assert seen[-1] == ("a", 7, "none")
        assert fut.remove_done_callback(a) == 0

    run(main())


def test_call_future_cancel_message_and_exception_types(core, run):
    async def main():
        calls = Calls(core, asyncio.get_running_loop())
        fut = calls.call()
        assert fut.cancel("why") is True and fut.cancel() is False
        with pytest.raises(asyncio.CancelledError, match="why"):
            fut.result()
        with pytest.raises(asyncio.CancelledError, match="why"):
            await fut
        with pytest.raises(asyncio.CancelledError):
            fut.send(None)
        pending = calls.call()
        assert pending.send(None) is pending and pending._asyncio_future_blocking
        pending._asyncio_future_blocking = False
        assert not pending._asyncio_future_blocking
        pending.set_result((3,))
        with pytest.raises(StopIteration) as stop:
            pending.send(None)
        assert stop.value.value == (3,)
        with pytest.raises(asyncio.CancelledError):
            fut.exception()
        fut = calls.call()
        fut.set_exception(KeyError)  # a class becomes an instance
        assert isinstance(fut.exception(), KeyError)
        fut = calls.call()
        with pytest.raises(TypeError):
            fut.set_exception(StopIteration())
        with pytest.raises(TypeError):
            fut.set_exception("no")
        fut.set_result(None)
        assert fut.result() is None
        calls.table.drain()

    run(main())
