"""Pending table vs. a dict of Futures with loop.call_later per call.

Run together with ``bench_wheel.py`` (see its docstring for the command and
the summary).  One "call" is the bookkeeping of a lightweight RPC: store it
with its deadline, then resolve it (pop + cancel the deadline).

- ``PendingTable c/py``: ``resolve(add(device, done, deadline))`` with one
  shared completion (fan-out style: a callback shared by every call);
- ``... + Future``: the same with a fresh ``loop.create_future()`` per call;
- ``asyncio/uvloop Future+call_later+dict``: ``create_future()``,
  ``call_later(timeout, on_timeout, rid)``, ``pending[rid] = (device, fut,
  handle)``, then ``pending.pop(rid)`` and ``handle.cancel()``.
"""

from __future__ import annotations

import pytest
from bench_wheel import LOOPS, N, new_loop, noop, run, settle

from fleetrpc import _core

TABLES = {
    name: (v["TimingWheel"], v["PendingTable"])
    for name, v in _core.VARIANTS.items()
    if "PendingTable" in v
}


def done(*args):
    """The shared completion."""


@pytest.fixture(params=LOOPS)
def loop(request):
    lp = new_loop(request.param)
    lp.name = request.param
    yield lp
    lp.close()


@pytest.mark.parametrize("impl", sorted(TABLES))
def test_add_resolve(benchmark, impl):
    wheel_cls, table_cls = TABLES[impl]
    table = table_cls(wheel_cls(0.005))
    add, resolve = table.add, table.resolve

    def body():
        for _ in range(N):
            resolve(add("dev-00001", done, 10.0))

    run(benchmark, body, group="pending: add+resolve", label=f"PendingTable {impl}")


@pytest.mark.parametrize("impl", sorted(TABLES))
def test_add_resolve_future(benchmark, impl):
    wheel_cls, table_cls = TABLES[impl]
    table = table_cls(wheel_cls(0.005))
    add, resolve = table.add, table.resolve
    loop = new_loop("asyncio")
    create_future = loop.create_future

    def body():
        for _ in range(N):
            resolve(add("dev-00001", create_future(), 10.0))

    run(benchmark, body, group="pending: add+resolve", label=f"PendingTable {impl} + Future")
    loop.close()


def test_add_resolve_asyncio(benchmark, loop):
    pending = {}
    create_future, call_later = loop.create_future, loop.call_later
    last = [0]

    def body():
        first = last[0] + 1
        for rid in range(first, first + N):
            pending[rid] = ("dev-00001", create_future(), call_later(10.0, noop, rid))
            pending.pop(rid)[2].cancel()
        last[0] = first + N - 1

    run(benchmark, body, lambda: settle(loop), "pending: add+resolve",
        f"{loop.name} Future+call_later+dict")


@pytest.mark.parametrize("impl", sorted(TABLES))
def test_expire_many_due(benchmark, impl):
    """N pending calls over 200 ticks all time out at once."""
    wheel_cls, table_cls = TABLES[impl]
    wheel = wheel_cls(0.005)
    table = table_cls(wheel)
    expire = table.expire
    target = []

    def setup():
        t = wheel.now
        for i in range(N):
            table.add("dev-00001", done, t + 0.001 + (i % 200) * 0.005)
        target[:] = [t + 1.5]

    def body():
        for rid, device, completion, flags in expire(target[0]):
            completion(rid)

    run(benchmark, body, setup, "pending: expire, N due", f"PendingTable {impl}")
