"""kill -9 of the server under persistent load, then a restart with the
same node id and with a new one: every accepted call ends in a terminal
status, none is lost, none is answered with another call's answer;
duplicates are counted and reported.  After the restart, new lightweight
calls are answered by the device's handler, never from the reply memory of
the previous process."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from .rig import answer, assert_every_call_ended_right, device_uuid, judge_persistent, wait_terminal

FAST, SLOW, OFFLINE = 8, 4, 4
CONCURRENCY = 64


@pytest.mark.timeout(0)
@pytest.mark.parametrize("restart", ["same-node", "new-node"])
async def test_kill9_under_persistent_load(restart, faults_profile, make_server, api_for, devices, pg_server, figures):
    n = faults_profile.crash_calls
    fast = [await devices.add(device_uuid(1, i)) for i in range(FAST)]
    slow = [await devices.add(device_uuid(2, i), latency=0.3) for i in range(SLOW)]
    offline = [await devices.add(device_uuid(3, i), connect=False) for i in range(OFFLINE)]
    targets = fast + slow + offline
    server = make_server([d.id for d in targets], node_id="faults-a", rpc={"offline_fail_fast": False})
    await server.start()
    api = api_for(server)

    # Lightweight calls before the crash fill the device SDK's reply memory
    # with this process's request ids.
    for k in range(15):
        params = {"i": -1 - k, "nonce": f"before-{k}"}
        status, body = await api.twoway(fast[0].id, params)
        assert status == 200 and body == answer(fast[0].id, params)

    # Long enough for the devices that keep up to work off the backlog a
    # restart leaves (10 s at the short run's 1,000 calls, 60 s at 10,000).
    timeout_ms = max(10_000, n * 6)
    accepted: dict[str, tuple] = {}
    refused = 0
    killed = asyncio.Event()
    sem = asyncio.Semaphore(CONCURRENCY)

    async def submit(i: int) -> None:
        nonlocal refused
        device = targets[i % len(targets)]
        async with sem:
            if killed.is_set() and not server.alive:
                refused += 1
                return
            try:
                rpc_id = await api.persistent(device.id, {"i": i}, timeout_ms=timeout_ms, retries=5)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                rpc_id = None
            if rpc_id is None:
                refused += 1
            else:
                accepted[rpc_id] = (device, i)
            if len(accepted) >= n // 3 and not killed.is_set():
                killed.set()
                server.kill9()

    half = n // 2
    await asyncio.gather(*(submit(i) for i in range(half)))
    assert killed.is_set() and not server.alive
    in_flight_at_kill = len(accepted)

    await server.start(node_id="faults-a" if restart == "same-node" else "faults-b")
    for d in offline:
        await d.connect()
    await asyncio.gather(*(submit(i) for i in range(half, n)))

    rows = await wait_terminal(pg_server.dsn, list(accepted), timeout=120 + n / 50)
    tally = judge_persistent(rows, accepted)

    # New calls after the restart: the handler answers each (its nonce is new).
    stale = 0
    for k in range(15):
        params = {"i": -100 - k, "nonce": f"after-{uuid.uuid4().hex}"}
        status, body = await api.twoway(fast[0].id, params)
        if status != 200 or body != answer(fast[0].id, params):
            stale += 1

    duplicate_runs = sum(d.duplicate_runs for d in targets)
    duplicate_deliveries = sum(d.client.duplicates for d in targets)
    figures.record(
        f"server kill -9 ({restart})",
        calls=n, accepted=len(accepted), refused_during_crash=refused, accepted_before_kill=in_flight_at_kill,
        lost=tally["lost"], wrong=tally["wrong"], ok=tally["ok"], outcomes=tally.as_dict(),
        duplicate_deliveries=duplicate_deliveries, duplicate_runs=duplicate_runs,
        stale_replies_after_restart=stale, crashes=len(server.crashes()),
    )
    assert_every_call_ended_right(rows, accepted, slow={d.id for d in slow},
                                  strict=faults_profile.name == "short")
    assert stale == 0, f"{stale} of 15 new calls were answered with an old reply"
    # A retry carries the call's id: the device answers it from memory.
    assert duplicate_runs == 0
    assert server.crashes() == [], server.crashes()
    assert await server.stop() == 0


@pytest.mark.parametrize("restart", ["kill-9", "sigterm"])
async def test_new_calls_after_a_restart_with_the_same_node_id_never_get_old_replies(
        restart, make_server, api_for, devices, figures):
    """The issue's case: 15 calls, a restart with the same node id, 15 new
    calls; each new one is run by the device's handler."""
    dev = await devices.add(device_uuid(1, 0))
    server = make_server([dev.id], node_id="faults-same")
    await server.start()
    api = api_for(server)
    for k in range(15):
        params = {"i": k, "nonce": f"old-{k}"}
        assert await api.twoway(dev.id, params) == (200, answer(dev.id, params))
    if restart == "kill-9":
        server.kill9()
    else:
        assert await server.stop() == 0
    await server.start()
    stale = 0
    for k in range(15):
        params = {"i": 100 + k, "nonce": f"new-{k}"}
        status, body = await api.twoway(dev.id, params)
        stale += status != 200 or body != answer(dev.id, params)
    figures.record(f"restart with the same node id ({restart})", new_calls=15, answered_from_old_memory=stale,
                   handler_runs=sum(dev.runs[100 + k] for k in range(15)))
    assert stale == 0
    assert all(dev.runs[100 + k] == 1 for k in range(15))
