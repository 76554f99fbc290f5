"""Outages under persistent load: the broker killed (-9) several times for
different lengths, PostgreSQL killed (-9, every process of the cluster).
Every accepted persistent call ends terminal, none lost, none wrong;
lightweight calls made while the broker is down are refused as "broker
unavailable", not blamed on the device."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest

from .rig import answer, assert_every_call_ended_right, device_uuid, judge_persistent, wait_terminal

CONCURRENCY = 32
OUTAGE_LENGTHS = (0.3, 1.5, 0.1, 3.0, 0.8, 2.0, 0.5)


async def kill9_broker(broker) -> None:
    os.kill(broker.pid, signal.SIGKILL)
    await broker.stop()  # reaps it


async def kill9_postgres(pg) -> None:
    """SIGKILL to the postmaster and every backend (its process group): the
    next start runs crash recovery."""
    os.killpg(pg.pid, signal.SIGKILL)
    await pg.stop("immediate")  # reaps it
    # Every process of the cluster is gone: the lock file they left says
    # "ready", which the fixture's start would believe before the new
    # postmaster rewrites it.  PostgreSQL itself ignores a stale one.
    (pg.data / "postmaster.pid").unlink(missing_ok=True)


class Load:
    """Persistent calls submitted through the REST API, round-robin over the
    devices, ``CONCURRENCY`` at a time, as far as :meth:`allow` lets them
    (so that the calls are spread over the outages).  Each attempt has
    ``timeout_ms``; the call expires after ``expiration_ms`` (ThingsBoard's
    ``expirationTime``), which leaves room for retries across an outage."""

    def __init__(self, api, targets, n: int, *, timeout_ms: int = 3000, retries: int = 5,
                 expiration_ms: int = 120_000) -> None:
        self.api, self.targets, self.n = api, targets, n
        self.timeout_ms, self.retries, self.expiration_ms = timeout_ms, retries, expiration_ms
        self.accepted: dict[str, tuple] = {}
        self.refused = 0
        self.tried = 0
        self.done = 0
        self.allowed = 0
        self.progress = asyncio.Event()
        self._room = asyncio.Event()

    def allow(self, count: int) -> None:
        self.allowed = min(self.n, max(self.allowed, count))
        self._room.set()

    async def _worker(self) -> None:
        while self.tried < self.n:
            if self.tried >= self.allowed:
                self._room.clear()
                await self._room.wait()
                continue
            i = self.tried
            self.tried += 1
            device = self.targets[i % len(self.targets)]
            try:
                rpc_id = await self.api.persistent(device.id, {"i": i}, timeout_ms=self.timeout_ms,
                                                   retries=self.retries, expiration_ms=self.expiration_ms)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                rpc_id = None
            if rpc_id is None:
                self.refused += 1
            else:
                self.accepted[rpc_id] = (device, i)
            self.done += 1
            self.progress.set()

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(CONCURRENCY)))

    async def until(self, count: int) -> None:
        """Allow ``count`` calls and wait until they were answered."""
        self.allow(count)
        while self.done < min(count, self.n):
            self.progress.clear()
            await self.progress.wait()


async def answered_again(api, device, attempts: int = 60) -> bool:
    """Lightweight calls until one is answered (the server and the device
    reconnected after an outage); True if its answer is right."""
    for k in range(attempts):
        params = {"i": -10_000 - k, "nonce": "again"}
        status, body = await api.twoway(device.id, params, timeout_ms=1000)
        if status == 200:
            return body == answer(device.id, params)
    return False


@pytest.mark.timeout(0)
async def test_broker_killed_repeatedly_under_persistent_load(faults_profile, make_server, api_for, devices,
                                                              mqtt_broker, pg_server, figures):
    n, outages = faults_profile.outage_calls, faults_profile.broker_outages
    fast = [await devices.add(device_uuid(1, i)) for i in range(6)]
    slow = [await devices.add(device_uuid(2, i), latency=1.0) for i in range(2)]
    targets = fast + slow
    server = make_server([d.id for d in targets], node_id="faults-outage")
    await server.start()
    api = api_for(server)
    load = Load(api, targets, n)
    running = asyncio.ensure_future(load.run())
    during: dict[str, int] = {}
    lengths = []
    step = n // (2 * outages + 1)
    for k in range(outages):
        await load.until((2 * k + 1) * step)
        length = OUTAGE_LENGTHS[k % len(OUTAGE_LENGTHS)]
        lengths.append(length)
        await kill9_broker(mqtt_broker)
        load.allow((2 * k + 2) * step)  # more calls while the broker is down
        # A lightweight call while the broker is down.
        status, body = await api.twoway(fast[0].id, {"i": -1 - k}, timeout_ms=1000)
        message = body.get("message", "")[:40] if isinstance(body, dict) else repr(body)
        key = f"{status} {message}"
        during[key] = during.get(key, 0) + 1
        await asyncio.sleep(length)  # the outage itself
        await mqtt_broker.start()
        await answered_again(api, fast[0])
    load.allow(n)
    await running
    rows = await wait_terminal(pg_server.dsn, list(load.accepted), timeout=120 + n / 50)
    tally = judge_persistent(rows, load.accepted)
    after = await answered_again(api, fast[0])
    figures.record("broker kill -9", outages=outages, outage_lengths_s=lengths, calls=n,
                   accepted=len(load.accepted), refused=load.refused, lost=tally["lost"], wrong=tally["wrong"],
                   ok=tally["ok"], outcomes=tally.as_dict(), lightweight_during_outage=during,
                   lightweight_after=after, crashes=len(server.crashes()))
    assert_every_call_ended_right(rows, load.accepted, slow={d.id for d in slow},
                                  strict=faults_profile.name == "short")
    # A lightweight call while the broker is down blames the broker, not the device.
    assert all(k.startswith("503 The MQTT broker is unavailable") for k in during), during
    assert after
    assert server.crashes() == []
    assert await server.stop() == 0


@pytest.mark.timeout(0)
async def test_postgres_killed_under_persistent_load(faults_profile, make_server, api_for, devices, pg_server,
                                                     figures):
    n = faults_profile.pg_calls
    targets = [await devices.add(device_uuid(1, i)) for i in range(6)]
    server = make_server([d.id for d in targets], node_id="faults-pg")
    await server.start()
    api = api_for(server)
    load = Load(api, targets, n)
    running = asyncio.ensure_future(load.run())
    await load.until(n // 3)
    await kill9_postgres(pg_server)
    load.allow(n // 3 + 20)  # persistent calls arriving while it is down
    # Lightweight calls need no database: they go on while it is down.
    light = {"ok": 0, "other": 0}
    for k in range(20):
        params = {"i": -1 - k}
        status, body = await api.twoway(targets[k % 6].id, params, timeout_ms=5000)
        light["ok" if status == 200 and body == answer(targets[k % 6].id, params) else "other"] += 1
    await pg_server.start()
    load.allow(n)
    await running
    rows = await wait_terminal(pg_server.dsn, list(load.accepted), timeout=120 + n / 50)
    tally = judge_persistent(rows, load.accepted)
    figures.record("PostgreSQL kill -9", calls=n, accepted=len(load.accepted), refused_while_down=load.refused,
                   lost=tally["lost"], wrong=tally["wrong"], ok=tally["ok"], outcomes=tally.as_dict(),
                   lightweight_while_down=light, crashes=len(server.crashes()),
                   errors_logged_by_retrying_loops=server.retried_errors())
    assert tally["lost"] == 0 and tally["wrong"] == 0, tally
    assert tally["ok"] == len(load.accepted), tally
    assert light == {"ok": 20, "other": 0}
    assert server.crashes() == []
    assert await server.stop() == 0
