"""Inbound fuzz through the real broker into the server process: malformed,
oversize, deeply nested, invalid UTF-8, forged replies and acks with live
request ids on other devices' topics, replies to calls never sent,
presence and heartbeat floods for new ids, malformed client-side calls and
Elves garbage.  Legitimate calls run throughout and every answer is
checked.  Counted: fuzzed messages, crashes, wrong answers, failed calls."""

from __future__ import annotations

import asyncio
import collections
import random

import pytest

from .rig import PREFIX, Attacker, answer, device_uuid

MAX_PAYLOAD = 8192
CHUNK = 2000


class Spy:
    """Learns live request ids by subscribing to every device's requests
    (what a device could do on a broker without ACLs)."""

    def __init__(self, attacker: Attacker) -> None:
        self.live: list[tuple[str, str, str]] = []  # (device, node, rid)
        attacker.client.on_message = self._wrap(attacker.client.on_message)

    def _wrap(self, inner):
        def on_message(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            parts = topic.split("/")
            if len(parts) == 6 and parts[3] == "req":
                self.live.append((parts[2], parts[4], parts[5]))
                del self.live[:-200]
            else:
                inner(topic, payload, qos, retain)
        return on_message


def fuzz_message(rng: random.Random, n: int, healthy: list[str], attacker: str, spy: Spy, node: str) -> tuple[str, bytes]:
    """The n-th hostile message (topic, payload)."""
    kind = n % 12
    dev = rng.choice(healthy)
    rid = str(rng.randrange(1, 10**6))
    if kind == 0:  # malformed JSON as a reply
        return f"{PREFIX}/d/{dev}/res/{node}/{rid}", rng.choice([b"{", b"[1,", b'{"a":}', b"\x00\x01", b"nul"])
    if kind == 1:  # oversize
        return f"{PREFIX}/d/{attacker}/res/{node}/{rid}", b'"' + b"x" * (MAX_PAYLOAD + rng.randrange(1, 4096)) + b'"'
    if kind == 2:  # deeply nested
        depth = rng.choice([200, 2000])
        return f"{PREFIX}/d/{attacker}/call/{rid}", b'{"method":"m","params":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 3:  # invalid UTF-8 in the payload
        return f"{PREFIX}/d/{dev}/res/{node}/{rid}", rng.choice([b'{"a":"\xff\xfe"}', b"\xc3\x28", b'"\xed\xa0\x80"'])
    if kind in (4, 5):  # forged reply / ack with a live id on another device's topic
        if spy.live:
            owner, rnode, rrid = rng.choice(spy.live)
            other = attacker if kind == 4 else next(d for d in healthy + [attacker] if d != owner)
            what = "res" if rng.random() < 0.7 else "ack"
            return f"{PREFIX}/d/{other}/{what}/{rnode}/{rrid}", b'{"forged":true}'
        return f"{PREFIX}/d/{attacker}/res/{node}/{rid}", b'{"forged":true}'
    if kind == 6:  # a reply to a call never sent, rids out of range
        return f"{PREFIX}/d/{dev}/res/{node}/{rng.choice([rid, '0', '-1', '99999999999999999999999'])}", b"{}"
    if kind == 7:  # presence flood for new ids
        status = rng.choice([b'{"status":"online"}', b'{"status":"offline"}', b'{"status":7}', b"[]"])
        return f"{PREFIX}/d/flood-{n}/presence", status
    if kind == 8:  # heartbeat flood for new ids, big bodies
        return f"{PREFIX}/d/flood-{n}/hb", b'{"ts":1,"pad":"' + b"p" * rng.randrange(0, 4000) + b'"}'
    if kind == 9:  # malformed client-side calls
        return f"{PREFIX}/d/{attacker}/call/{rid}", rng.choice([b"", b"null", b'{"params":1}', b'{"method":5}', b"[]"])
    if kind == 10:  # Elves garbage
        return f"{PREFIX}/elves/app{rng.randrange(9)}/call/{rid}", rng.choice(
            [b"", b"{", b'{"mqt":"call"}', b'{"mqt":"call","mqs":"scheduler","mqf":"sendSync","ins":7}', b"\xff"])
    # odd topics under the prefix
    return rng.choice([f"{PREFIX}/d/{dev}", f"{PREFIX}/d/{dev}/res", f"{PREFIX}/d//res/{node}/1",
                       f"{PREFIX}/d/{dev}/res/{node}/1/extra", f"{PREFIX}/x/{dev}/res/{node}/1"]), b"{}"


@pytest.mark.timeout(0)
async def test_inbound_fuzz_keeps_answers_right(faults_profile, make_server, api_for, devices, mqtt_broker, figures):
    total = faults_profile.fuzz_messages
    # One slow device keeps request ids live long enough to be forged.
    healthy = [await devices.add(device_uuid(1, i), latency=0.2 if i == 0 else 0.0) for i in range(3)]
    server = make_server([d.id for d in healthy], node_id="faults-fuzz", dispatch={"max_payload": MAX_PAYLOAD})
    await server.start()
    api = api_for(server)
    attacker = Attacker(mqtt_broker.url, device_uuid(9, 1))
    spy = Spy(attacker)
    await attacker.connect()
    await attacker.client.subscribe((f"{PREFIX}/d/+/req/#", 0))
    rss_start = server.rss_kb()
    started = asyncio.get_running_loop().time()

    calls = {"ok": 0, "wrong": 0, "failed": 0}
    failures: collections.Counter = collections.Counter()  # status and message of each failed call
    stop = asyncio.Event()

    async def legitimate(worker: int) -> None:
        i = 0
        while not stop.is_set():
            dev = healthy[(worker + i) % len(healthy)]
            params = {"i": worker * 10**7 + i}
            status, body = await api.twoway(dev.id, params, timeout_ms=30_000)
            if status != 200:
                calls["failed"] += 1
                failures[f"{status} {body.get('message', '')[:60] if isinstance(body, dict) else body!r:.60}"] += 1
            elif body != answer(dev.id, params):
                calls["wrong"] += 1
            else:
                calls["ok"] += 1
            i += 1

    workers = [asyncio.ensure_future(legitimate(w)) for w in range(6)]
    rng = random.Random(9)
    ids = [d.id for d in healthy]
    sent = 0
    try:
        while sent < total:
            for _ in range(min(CHUNK, total - sent)):
                topic, payload = fuzz_message(rng, sent, ids, attacker.device_id, spy, server.node_id)
                attacker.publish(topic, payload)
                sent += 1
            await attacker.barrier()
            assert server.alive, server.log_tail()
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
    loop_seconds = int(asyncio.get_running_loop().time() - started) + 1
    events = await api.dispatcher_events()
    rss_end = server.rss_kb()
    crashes = server.crashes() + ([] if server.alive else ["the server process died"])
    figures.record("inbound fuzz", messages=sent, crashes=len(crashes), legitimate_ok=calls["ok"],
                   legitimate_wrong=calls["wrong"], legitimate_failed=calls["failed"],
                   rss_start_mb=round(rss_start / 1024, 1), rss_end_mb=round(rss_end / 1024, 1),
                   warning_lines=server.warnings(), dispatcher_events=events)
    await attacker.close()
    assert crashes == []
    assert calls["wrong"] == 0 and calls["failed"] == 0, (calls, failures)
    # Readable logs under attack: a line for the first rejection, then a
    # summary per interval (10 s), not one line per message.
    assert server.warnings() <= 3 + 2 * loop_seconds // 10, server.warnings()
    assert calls["ok"] > 0
    assert await server.stop() == 0
