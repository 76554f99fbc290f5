"""Memory is bounded by configuration, not by what devices send: a flood of
presence and heartbeats for new device ids, and a soak of mixed load whose
resident memory must stay flat."""

from __future__ import annotations

import asyncio
import random

import pytest

from fleetrpc.device import DeviceClient
from fleetrpc.runner import SERVER_GC_THRESHOLD

from .rig import PREFIX, Attacker, answer, device_uuid
from .test_fuzz import fuzz_message

MAX_DEVICES = 5_000
MAX_HEARTBEAT = 1024
CHUNK = 5_000


@pytest.mark.timeout(0)
async def test_heartbeat_and_presence_flood_of_new_ids(faults_profile, make_server, api_for, devices, mqtt_broker,
                                                       figures):
    n = faults_profile.flood_ids
    dev = await devices.add(device_uuid(1, 0))
    server = make_server([dev.id], node_id="faults-flood",
                         dispatch={"presence_max_devices": MAX_DEVICES, "max_heartbeat_bytes": MAX_HEARTBEAT})
    await server.start()
    # a server's live set churns; the young generation may grow (runner.raise_gc_threshold)
    assert server.gc_threshold == SERVER_GC_THRESHOLD
    api = api_for(server)
    attacker = Attacker(mqtt_broker.url, device_uuid(9, 2))
    await attacker.connect()
    # Warm up (imports, first allocations), then measure from here.
    params = {"i": 1}
    assert await api.twoway(dev.id, params) == (200, answer(dev.id, params))
    rss_start = server.rss_kb()
    body = b'{"ts":1,"pad":"' + b"p" * 3000 + b'"}'  # over max_heartbeat_bytes: its time and "ts" kept
    sent = 0
    peak_devices = 0
    while sent < n:
        for _ in range(min(CHUNK, n - sent)):
            device = f"flood-{sent}"
            if sent % 2:
                attacker.publish(f"{PREFIX}/d/{device}/hb", body)
            else:
                attacker.publish(f"{PREFIX}/d/{device}/presence", b'{"status":"online"}')
            sent += 1
        await attacker.barrier()
        m = await api.metrics()
        peak_devices = max(peak_devices, int(m["fleetrpc_presence_devices"]))
    rss_end = server.rss_kb()
    # The registered device is still served, and answered right.
    params = {"i": 2}
    still = await api.twoway(dev.id, params) == (200, answer(dev.id, params))
    # What the configuration allows: every kept device with a full heartbeat
    # and 1 KiB of bookkeeping, plus 16 MiB for buffers and the allocator.
    # The flood is many times larger than the registry: memory that grew
    # with it would be far past this.
    bound_kb = MAX_DEVICES * (MAX_HEARTBEAT + 1024) // 1024 + 16 * 1024
    figures.record("heartbeat/presence flood", new_ids=n, presence_max_devices=MAX_DEVICES,
                   max_heartbeat_bytes=MAX_HEARTBEAT, peak_devices_kept=peak_devices,
                   rss_start_mb=round(rss_start / 1024, 1), rss_end_mb=round(rss_end / 1024, 1),
                   rss_growth_mb=round((rss_end - rss_start) / 1024, 1), bound_mb=round(bound_kb / 1024, 1),
                   registered_device_served=still, crashes=len(server.crashes()))
    await attacker.close()
    assert peak_devices <= MAX_DEVICES
    assert rss_end - rss_start < bound_kb
    # Presence keeps state for registered devices only: the flood cannot
    # push the registered device that is online out.
    assert still
    assert server.crashes() == []
    assert await server.stop() == 0


@pytest.mark.timeout(0)
async def test_soak_of_mixed_load_keeps_memory_flat(faults_profile, make_server, api_for, devices, mqtt_broker,
                                                    figures):
    duration = faults_profile.soak_s
    fast = [await devices.add(device_uuid(1, i)) for i in range(4)]
    slow = await devices.add(device_uuid(2, 0), latency=0.3)
    churn_id = device_uuid(3, 0)
    targets = fast + [slow]
    server = make_server([d.id for d in targets] + [churn_id], node_id="faults-soak",
                         dispatch={"presence_max_devices": 2_000, "max_heartbeat_bytes": 512})
    await server.start()
    api = api_for(server)
    attacker = Attacker(mqtt_broker.url, device_uuid(9, 3))
    await attacker.connect()
    loop = asyncio.get_running_loop()
    end = loop.time() + duration
    tally = {"ok": 0, "wrong": 0, "other": 0, "persistent": 0}
    others: dict[str, int] = {}

    async def lightweight(w: int) -> None:
        i = 0
        while loop.time() < end:
            dev = targets[(w + i) % len(targets)]
            params = {"i": w * 10**8 + i}
            status, body = await api.twoway(dev.id, params, timeout_ms=5000)
            key = "ok" if status == 200 and body == answer(dev.id, params) else ("wrong" if status == 200 else "other")
            tally[key] += 1
            if key == "other":
                others[f"{status} {body}"[:120]] = others.get(f"{status} {body}"[:120], 0) + 1
            i += 1

    async def persistent() -> None:
        i = 0
        while loop.time() < end:
            if await api.persistent(fast[i % 4].id, {"i": i}, timeout_ms=5000, retries=1):
                tally["persistent"] += 1
            i += 1
            await asyncio.sleep(0.02)  # a steady trickle, not a flood

    async def hostile() -> None:
        rng = random.Random(3)
        n = 0
        while loop.time() < end:
            for _ in range(200):
                if n % 12 not in (7, 8):
                    # Presence and heartbeats for new ids are the flood
                    # probe's: here they would evict the soak's own devices
                    # from presence (see the flood probe).
                    topic, payload = fuzz_message(rng, n, [d.id for d in targets], attacker.device_id, _NoSpy,
                                                  server.node_id)
                    attacker.publish(topic, payload)
                n += 1
            await attacker.barrier()

    async def churning() -> None:
        # A device that keeps connecting and leaving (presence online/offline).
        while loop.time() < end:
            client = DeviceClient(churn_id, mqtt_broker.url, keepalive=5)
            await client.connect()
            await client.close()

    samples: list[int] = []

    async def sample() -> None:
        while loop.time() < end:
            samples.append(server.rss_kb())
            await asyncio.sleep(max(0.5, duration / 60))

    await asyncio.gather(*(lightweight(w) for w in range(4)), persistent(), hostile(), churning(), sample())
    await attacker.close()
    warm = samples[len(samples) // 4]  # after a quarter of the run: caches and pools are warm
    last = max(samples[-3:])
    growth = (last - warm) / warm * 100
    figures.record("soak", seconds=duration, lightweight_ok=tally["ok"], lightweight_wrong=tally["wrong"],
                   lightweight_other=tally["other"], persistent_accepted=tally["persistent"],
                   rss_warm_mb=round(warm / 1024, 1), rss_end_mb=round(last / 1024, 1),
                   rss_growth_percent=round(growth, 2), warning_lines=server.warnings(),
                   crashes=len(server.crashes()))
    assert tally["wrong"] == 0 and tally["other"] == 0, (tally, others)
    assert growth < 5.0, samples
    assert server.crashes() == []
    assert await server.stop() == 0


class _NoSpy:
    live: list = []
