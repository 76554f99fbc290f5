"""A Broadcast read by several coroutines at once: each must see it end."""

from __future__ import annotations

import asyncio

from fleetrpc.dispatch.broadcast import Broadcast


async def test_iterating_and_waiting_at_once_both_end():
    # One waiter slot: the second reader replaced the first's future, which
    # nothing resolved after: the first waited for ever.
    bc = Broadcast(3, asyncio.get_running_loop())

    async def read():
        return [o.device async for o in bc]

    readers = [asyncio.ensure_future(read()), asyncio.ensure_future(bc.wait()), asyncio.ensure_future(read())]
    await asyncio.sleep(0)
    for i, device in enumerate("abc"):
        bc(i, device, i, None)
        await asyncio.sleep(0)
    first, summary, third = await asyncio.wait_for(asyncio.gather(*readers), 2)
    # The iterations share one cursor: each outcome goes to one of them.
    assert sorted(first + third) == ["a", "b", "c"] and summary.succeeded == 3


async def test_a_cancelled_reader_does_not_stop_the_others():
    bc = Broadcast(2, asyncio.get_running_loop())
    gone = asyncio.ensure_future(bc.wait())
    kept = asyncio.ensure_future(bc.wait())
    await asyncio.sleep(0)
    gone.cancel()
    bc(1, "a", 1, None)
    bc(2, "b", 2, None)
    assert (await asyncio.wait_for(kept, 2)).succeeded == 2


async def test_wait_is_woken_once_by_the_last_outcome_not_by_each():
    # wait() used to park a new waiter after every outcome: a fleet job's
    # wait over 10,000 devices woke thousands of times for one answer.
    bc = Broadcast(3, asyncio.get_running_loop())
    waiting = asyncio.ensure_future(bc.wait())
    await asyncio.sleep(0)
    for i, device in enumerate("ab"):
        bc(i, device, i, None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert bc._waiters == [] and not waiting.done()
    bc(2, "c", 2, None)
    summary = await asyncio.wait_for(waiting, 2)
    assert (summary.total, summary.succeeded, [o.device for o in summary.outcomes]) == (3, 3, ["a", "b", "c"])


async def test_wait_on_an_empty_or_finished_broadcast_returns_at_once():
    loop = asyncio.get_running_loop()
    assert (await Broadcast(0, loop).wait()).total == 0
    bc = Broadcast(1, loop)
    bc(1, "a", None, RuntimeError("no"))
    summary = await bc.wait()
    assert (summary.failed, summary.outcomes[0].ok) == (1, False)
