"""Hostile and broken devices against the server process: one that never
answers among healthy ones, one slow device under every delivery strategy,
one whose replies the database refuses."""

from __future__ import annotations

import asyncio
import collections

import pytest

from .rig import answer, device_uuid, judge_persistent, poisoned, wait_terminal


@pytest.mark.timeout(0)
async def test_one_silent_device_among_healthy_ones(faults_profile, make_server, api_for, devices, figures):
    n = faults_profile.silent_calls
    # The short run scales the node's window down with the calls; the long
    # one uses the default window (20,000), as in the issue.
    window = 200 if faults_profile.name == "short" else 20_000
    silent = await devices.add(device_uuid(4, 0), silent=True)
    healthy = [await devices.add(device_uuid(1, i)) for i in range(3)]
    server = make_server([silent.id] + [d.id for d in healthy], node_id="faults-silent",
                         dispatch={"inflight_window": window})
    await server.start()
    api = api_for(server)
    dw = window // 10  # the device's share of the window
    cap = dw + 100  # what the silent device may hold: its window and its queue
    # Enough requests at once to press past that cap (at the long run's
    # default window, 500 at a time never reached it: nothing was refused).
    concurrency = max(500, cap + 500)
    sem = asyncio.Semaphore(concurrency)
    statuses: collections.Counter = collections.Counter()

    async def to_silent(i: int) -> None:
        async with sem:
            status, body = await api.twoway(silent.id, {"i": i}, timeout_ms=4000)
        statuses[f"{status} {body['message'][:40] if isinstance(body, dict) else ''}".strip()] += 1

    flood = [asyncio.ensure_future(to_silent(i)) for i in range(n)]
    # Once every call to the silent device was taken (sent, queued or
    # refused), healthy devices must still be answered, and correctly.
    while (await api.dispatcher_events()).get("calls", 0) < n:
        await asyncio.sleep(0.1)  # another process: its counters are the only signal
    healthy_ok = 0
    for k in range(20):
        dev = healthy[k % 3]
        params = {"i": -1 - k}
        status, body = await api.twoway(dev.id, params, timeout_ms=3000)
        healthy_ok += status == 200 and body == answer(dev.id, params)
    await asyncio.gather(*flood)
    figures.record("one silent device", calls_to_silent=n, window=window, device_window=dw,
                   silent_outcomes=dict(statuses), healthy_calls=20, healthy_ok=healthy_ok,
                   crashes=len(server.crashes()))
    assert healthy_ok == 20
    refused = sum(v for k, v in statuses.items() if k.startswith("429"))
    timed_out = sum(v for k, v in statuses.items() if k.startswith("408"))
    assert refused + timed_out == n, statuses  # every call refused as "queue full" or timed out
    assert all(k.startswith(("429 Too many requests for the device", "408")) for k in statuses), statuses
    if faults_profile.name == "short":
        # Every call arrives within the first call's timeout: all but the
        # cap are refused.  (In the long run calls keep arriving after the
        # first ones timed out, and those are taken again: fewer refusals.)
        assert refused == max(0, n - cap), statuses
    else:
        assert refused > 0, statuses
    assert server.crashes() == []
    assert await server.stop() == 0


@pytest.mark.timeout(0)
@pytest.mark.parametrize("strategy", ["BURST", "SEQUENTIAL_ON_ACK", "SEQUENTIAL_ON_RESPONSE"])
async def test_one_slow_device_under_every_strategy(strategy, faults_profile, make_server, api_for, devices, figures):
    n = faults_profile.slow_calls
    slow = await devices.add(device_uuid(2, 0), latency=0.5)
    fast = [await devices.add(device_uuid(1, i)) for i in range(3)]
    targets = [slow] + fast
    server = make_server([d.id for d in targets], node_id="faults-slow", dispatch={"strategy": strategy})
    await server.start()
    api = api_for(server)
    outcome = {d.id: collections.Counter() for d in targets}
    # At most 50 calls outstanding per device: under the default per-device
    # queue cap (100), which would otherwise refuse the long run's 150 calls
    # per device at once as "queue full", fast devices included -- the cap
    # working as documented, not the slow device's harm this probe looks for.
    per_device = {d.id: asyncio.Semaphore(50) for d in targets}

    async def one(i: int) -> None:
        dev = targets[i % 4]
        params = {"i": i}
        async with per_device[dev.id]:
            status, body = await api.twoway(dev.id, params, timeout_ms=3000)
        if status == 200:
            outcome[dev.id]["ok" if body == answer(dev.id, params) else "wrong"] += 1
        else:
            outcome[dev.id][str(status)] += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    fast_total = collections.Counter()
    for d in fast:
        fast_total.update(outcome[d.id])
    figures.record(f"one slow device ({strategy})", calls=n, slow=dict(outcome[slow.id]), fast=dict(fast_total),
                   crashes=len(server.crashes()))
    assert fast_total == {"ok": n - n // 4}, fast_total
    assert outcome[slow.id]["wrong"] == 0
    assert set(outcome[slow.id]) <= {"ok", "408"}
    assert server.crashes() == []
    assert await server.stop() == 0


@pytest.mark.timeout(0)
async def test_poison_replies_fail_only_their_own_calls(faults_profile, make_server, api_for, devices, pg_server,
                                                       figures):
    n = faults_profile.slow_calls * 4
    poison = await devices.add(device_uuid(5, 0), poison=True)
    healthy = [await devices.add(device_uuid(1, i)) for i in range(3)]
    targets = [poison] + healthy
    server = make_server([d.id for d in targets], node_id="faults-poison")
    await server.start()
    api = api_for(server)
    accepted = {}
    for start in range(0, n, 50):
        ids = await asyncio.gather(*(api.persistent(targets[i % 4].id, {"i": i}, timeout_ms=5000, retries=2)
                                     for i in range(start, min(n, start + 50))))
        for i, rpc_id in zip(range(start, n), ids):
            assert rpc_id is not None
            accepted[rpc_id] = (targets[i % 4], i)
    rows = await wait_terminal(pg_server.dsn, list(accepted), timeout=120)
    tally = judge_persistent(rows, accepted)
    errors = {rows[r]["error"] for r, (d, i) in accepted.items() if d is poison and poisoned(i)}
    figures.record("poison replies", calls=n, outcomes=tally.as_dict(), lost=tally["lost"], wrong=tally["wrong"],
                   error_of_refused=sorted(errors)[:1], crashes=len(server.crashes()))
    assert tally["lost"] == 0 and tally["wrong"] == 0, tally
    refused = sum(1 for d, i in accepted.values() if d is poison and poisoned(i))
    assert refused > 0
    assert tally["refused_reply_failed"] == refused
    assert tally["ok"] == n - refused
    assert server.crashes() == []
    assert await server.stop() == 0
