"""What keeps connections cheap, checked through real sockets: an idle
session drops its reader and makes a new one when the device speaks again
(never while a packet is half received); write coalescing under load still
delivers everything; a failing packet stops the handling of the rest of its
read."""

from __future__ import annotations

import asyncio
import json

from fleetrpc import Dispatcher, Settings
from fleetrpc.transport.endpoint import DeviceEndpoint, EndpointSettings
from fleetrpc.transport.endpoint.session import CONNECTED, IDLE_TRIM

from . import rawmqtt as raw
from .conftest import make_rig
from .test_limits import _until, assert_nothing_left, back_with_stored_session


def _session(rig, device: str):
    (session,) = rig.endpoint.sessions_of(device)
    return session


async def _online_device(rig, client_id: str = "idle"):
    """Device dev-a (token-a) connected and subscribed to its RPC requests,
    online in the dispatcher: its raw client and its session."""
    c = await raw.RawClient.open(rig.port)
    assert (await c.connect("token-a", client_id=client_id))[1] == b"\x00\x00"
    c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1)))
    await c.read_packet()
    await rig.online("dev-a")
    return c, _session(rig, "dev-a")


async def _answer_one(rig, c: raw.RawClient, device: str) -> None:
    call = asyncio.ensure_future(rig.dispatcher.call(device, "ping", {"n": 1}))
    first, body = await c.read_packet()
    topic, _, mid = raw.publish_topic(body, (first >> 1) & 3, False)
    reply = raw.publish("v1/devices/me/rpc/response/" + topic.rsplit("/", 1)[1], b'"pong"')
    c.send((raw.puback(mid) if mid else b"") + reply)
    assert await call == "pong"


async def test_idle_session_drops_its_reader_and_gets_a_new_one():
    async with make_rig() as rig:
        c, s = await _online_device(rig)
        assert s.reader is not None
        # the sweep's check, as it runs once the device has been silent long enough
        s._check(s.last_in + IDLE_TRIM + 0.5)
        assert s.reader is None and s.state == CONNECTED
        await _answer_one(rig, c, "dev-a")  # its next bytes make a new reader
        assert s.reader is not None
        # half a packet received: the reader keeps it, whatever the silence
        ping = raw.publish("v1/devices/me/rpc/request/7", b'{"method":"getSessionLimits","params":{}}')
        c.send(ping[:5])
        await _until(lambda: s.reader.buffered == 5)
        s._check(s.last_in + IDLE_TRIM + 0.5)
        assert s.reader is not None and s.reader.buffered == 5
        c.send(ping[5:])
        first, body = await c.read_packet()
        topic, payload, _ = raw.publish_topic(body, 0, False)
        assert topic == "v1/devices/me/rpc/response/7" and json.loads(payload)["maxPayloadSize"] == 65536
        c.close()
        await assert_nothing_left(rig)


async def test_an_idle_devices_keepalive_is_answered_without_a_new_reader():
    """A PINGREQ is all an idle device sends, once per keepalive: it gets its
    PINGRESP without the session making a reader, which would live on until
    the next sweep.  A PINGREQ in pieces, or with more behind it, goes
    through a reader as any other bytes."""
    async with make_rig() as rig:
        c, s = await _online_device(rig)
        s._check(s.last_in + IDLE_TRIM + 0.5)
        assert s.reader is None
        before = s.last_in
        await asyncio.sleep(0.01)
        c.send(b"\xc0\x00")
        assert await c.read_packet() == (0xD0, b"")
        assert s.reader is None and s.last_in > before and s.state == CONNECTED
        c.send(b"\xc0")  # half of one: a reader keeps it
        await _until(lambda: s.reader is not None)
        c.send(b"\x00")
        assert await c.read_packet() == (0xD0, b"")
        s._check(s.last_in + IDLE_TRIM + 0.5)
        assert s.reader is None
        await _answer_one(rig, c, "dev-a")  # and it is still reachable
        c.close()
        await assert_nothing_left(rig)


async def test_write_coalescing_under_load_delivers_every_request():
    async with make_rig(write_batch_above=1, write_batch_delay=0.002) as rig:
        c, _ = await _online_device(rig, "batched")
        calls = [asyncio.ensure_future(rig.dispatcher.call("dev-a", "echo", {"i": i})) for i in range(20)]
        out = b""
        for _ in range(20):
            first, body = await c.read_packet()
            topic, payload, mid = raw.publish_topic(body, 1, False)
            out += raw.puback(mid) + raw.publish("v1/devices/me/rpc/response/" + topic.rsplit("/", 1)[1],
                                                 json.dumps(json.loads(payload)["params"]).encode())
        c.send(out)
        assert [r["i"] for r in await asyncio.gather(*calls)] == list(range(20))
        c.close()
        await assert_nothing_left(rig)


class _CountingTransport:
    """A session's transport, with every write kept (the rest is the real one's)."""

    def __init__(self, transport) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name):
        return getattr(self._transport, name)


async def test_a_puback_and_the_next_request_it_woke_leave_in_one_send():
    """A device answers at QoS 1; the caller, woken by the answer, calls the
    same device again at once: the endpoint's PUBACK and that request go out
    in one write, even when another connection's output had already asked
    for this iteration's flush (the flush runs after the wakeups)."""
    async with make_rig() as rig:
        clients = {}
        for token, device in (("token-a", "dev-a"), ("token-b", "dev-b")):
            c = clients[device] = await raw.RawClient.open(rig.port)
            await c.connect(token, client_id=device)
            c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1)))
            await c.read_packet()
            await rig.online(device)
        c = clients["dev-a"]
        s = _session(rig, "dev-a")
        counting = s.transport = _CountingTransport(s.transport)

        async def two_calls() -> list:
            first = await rig.dispatcher.call("dev-a", "echo", {"i": 1})
            return [first, await rig.dispatcher.call("dev-a", "echo", {"i": 2})]

        calls = asyncio.ensure_future(two_calls())
        first, body = await c.read_packet()
        topic, payload, mid = raw.publish_topic(body, 1, False)
        c.send(raw.puback(mid))
        await _until(lambda: not s.extra or not s.extra.inflight)
        sent = len(counting.writes)
        # One iteration, as when both devices' bytes come out of one poll:
        # dev-b's output first (a PINGRESP), then dev-a's answer.
        _session(rig, "dev-b")._write(b"\xd0\x00")
        s.data_received(raw.publish("v1/devices/me/rpc/response/" + topic.rsplit("/", 1)[1], b'{"i": 1}', 1, 7))
        await _until(lambda: len(counting.writes) > sent)
        await asyncio.sleep(0.05)  # (a second send would have followed by now)
        (write,) = counting.writes[sent:]
        assert write.startswith(raw.puback(7) + b"\x32"), write  # PUBACK, then a QoS 1 PUBLISH
        assert (await c.read_packet()) == (0x40, b"\x00\x07")
        first, body = await c.read_packet()
        topic, payload, mid = raw.publish_topic(body, 1, False)
        c.send(raw.puback(mid) + raw.publish("v1/devices/me/rpc/response/" + topic.rsplit("/", 1)[1], 
                                             json.dumps(json.loads(payload)["params"]).encode()))
        assert await calls == [{"i": 1}, {"i": 2}]
        assert (await clients["dev-b"].read_packet()) == (0xD0, b"")
        for c in clients.values():
            c.close()
        await assert_nothing_left(rig)


async def test_nothing_after_a_failing_packet_is_handled():
    async with make_rig(max_payload=1024) as rig:
        c = await raw.RawClient.open(rig.port)
        await c.connect("token-a", client_id="bad", version=5)
        limits = raw.publish("v1/devices/me/rpc/request/1", b'{"method":"getSessionLimits","params":{}}',
                             version=5)
        # one read: an oversized PUBLISH, then a call the endpoint would answer
        c.send(raw.publish("v1/devices/me/telemetry", b"x" * 2000, version=5) + limits)
        assert (await c.closed())[:3] == b"\xe0\x02\x95"  # DISCONNECT, packet too large; no answer
        assert rig.endpoint.stats.session_limits == 0
        assert rig.endpoint.stats.closed_too_large == 1
        await assert_nothing_left(rig)


async def test_many_at_once_then_churn_leaves_nothing_behind():
    """A small storm (200 connections at once, asynchronous authentication)
    and churn (half dropped without DISCONNECT, then back): every device is
    online again and, once all are gone, no table holds anything."""
    async def authenticate(username, password, client_id):
        await asyncio.sleep(0)  # as a database lookup: the session waits for it
        return username if username.startswith("dev-") else None

    async def device(i: int) -> raw.RawClient:
        c = await raw.RawClient.open(rig.port)
        c.send(raw.connect(f"dev-{i}", client_id=f"c{i}") + raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1)))
        assert await c.read_packet() == (0x20, b"\x00\x00")
        assert (await c.read_packet())[0] == 0x90
        return c

    async with make_rig(auth=authenticate) as rig:
        clients = await asyncio.gather(*(device(i) for i in range(200)))
        await _until(lambda: len(rig.dispatcher.presence.online) == 200)
        for c in clients[:100]:
            c.writer.transport.abort()
        await _until(lambda: rig.endpoint.connection_count == 100)
        clients[:100] = await asyncio.gather(*(device(i) for i in range(100)))
        await _until(lambda: len(rig.dispatcher.presence.online) == 200)
        assert rig.endpoint.connection_count == 200
        for c in clients:
            c.close()
        await assert_nothing_left(rig)


async def test_a_registry_outage_refuses_connections_without_a_traceback_each(caplog):
    """The device registry's database is down during a reconnect storm: every
    device is told "server unavailable" (and retries), the refusals are
    counted, and the log gets one line at once and a summary later, not a
    traceback per device; a bug in authenticate() still logs its traceback."""
    import logging

    from fleetrpc.errors import StoreUnavailableError

    async def authenticate(username, password, client_id):
        await asyncio.sleep(0)
        if username == "buggy":
            raise KeyError("a bug")
        raise StoreUnavailableError("PostgreSQL at db:5432 is unavailable (connecting)")

    async def device(name: str) -> bytes:
        c = await raw.RawClient.open(rig.port)
        try:
            return (await c.connect(name, client_id=name))[1]
        finally:
            c.close()

    caplog.set_level(logging.WARNING, logger="fleetrpc.endpoint")
    async with make_rig(auth=authenticate) as rig:
        answers = await asyncio.gather(*(device(f"dev-{i}") for i in range(50)))
        assert answers == [b"\x00\x03"] * 50  # 3: server unavailable
        assert rig.endpoint.stats.refused_unavailable == 50 and rig.endpoint.stats.refused_auth == 0
        assert await device("buggy") == b"\x00\x03"
    lines = [r for r in caplog.records if r.name == "fleetrpc.endpoint"]
    assert len([r for r in lines if "registry" in r.getMessage()]) == 1
    assert [r.exc_info is not None for r in lines if "buggy" in r.getMessage() or r.exc_info] == [True]


async def test_idle_session_drops_its_extra_and_numbers_requests_on():
    """What only some sessions use is made on first use (a request's tables)
    and dropped once the connection is idle and it is back to its defaults;
    the request numbers go on from where they were.  An MQTT 5 session with
    a smaller Receive Maximum keeps it (in its extra) however idle."""
    async with make_rig() as rig:
        c, s = await _online_device(rig)
        assert s.extra is None
        await _answer_one(rig, c, "dev-a")
        assert s.extra is not None and s.extra.requests == {} and s.extra.inflight == {}
        s._check(s.last_in + IDLE_TRIM + 0.5)
        assert s.reader is None and s.extra is None
        call = asyncio.ensure_future(rig.dispatcher.call("dev-a", "ping", {"n": 2}))
        first, body = await c.read_packet()
        topic, _, mid = raw.publish_topic(body, 1, False)
        assert topic == "v1/devices/me/rpc/request/2"
        c.send(raw.puback(mid) + raw.publish("v1/devices/me/rpc/response/2", b'"pong"'))
        assert await call == "pong"

        c5 = await raw.RawClient.open(rig.port)
        assert (await c5.connect("token-b", client_id="small", version=5, props={0x21: 1}))[1][:2] == b"\x00\x00"
        c5.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1), version=5))
        await c5.read_packet()
        await rig.online("dev-b")
        s5 = _session(rig, "dev-b")
        s5._check(s5.last_in + IDLE_TRIM + 0.5)
        assert s5.extra is not None and s5.extra.window == 1
        c.close()
        c5.close()
        await assert_nothing_left(rig)


async def test_a_persistent_session_comes_back_in_the_form_it_chose_last():
    """Subscribed to ThingsBoard's v2 then v1 RPC topics, a device with a
    stored session gets its requests on v1 (at v1's QoS) when it is back."""
    async with make_rig(max_session_expiry=60) as rig:
        c = await back_with_stored_session(rig, ("v2/r/req/+", 1), ("v1/devices/me/rpc/request/+", 0))
        call = asyncio.ensure_future(rig.dispatcher.call("dev-a", "m", 1))
        first, body = await c.read_packet()
        assert (first >> 1) & 3 == 0  # QoS 0, as v1's subscription
        topic, payload, _ = raw.publish_topic(body, 0, True)
        assert topic == "v1/devices/me/rpc/request/1"
        c.send(raw.publish("v1/devices/me/rpc/response/1", b"2", version=5))
        assert await call == 2
        c.close()
        await assert_nothing_left(rig)


async def test_close_reaches_every_open_connection(monkeypatch, caplog):
    """The endpoint finds its open connections in the sweep's buckets: one
    connected over MQTT 5 (told "server shutting down"), one over 3.1.1,
    one that has not sent CONNECT yet, and one whose check raised (it stays
    in a bucket) are all closed by close(), and none is counted after."""
    from fleetrpc.transport.endpoint.session import Session

    async with make_rig() as rig:
        ep = rig.endpoint
        c5 = await raw.RawClient.open(rig.port)
        await c5.connect("token-a", client_id="five", version=5)
        c4 = await raw.RawClient.open(rig.port)
        await c4.connect("token-b", client_id="four")
        silent = await raw.RawClient.open(rig.port)
        await _until(lambda: ep.connection_count == 3)
        s4 = ep.sessions_of("dev-b")[0]
        real_check = Session._check
        raised = []

        def check(self, now):
            if self is s4 and not raised:
                raised.append(now)
                raise RuntimeError("a bug in a check")
            real_check(self, now)

        monkeypatch.setattr(Session, "_check", check)
        ep._check_at(s4, 0)  # due at the next sweep
        await _until(lambda: raised)
        assert s4.check_bucket is not None and ep.connection_count == 3
        await ep.close()
        assert await c5.closed() == b"\xe0\x02\x8b\x00"  # DISCONNECT, server shutting down
        assert await c4.closed() == b""
        assert await silent.closed() == b""
        await _until(lambda: ep.connection_count == 0)
        assert ep.tracked() == dict.fromkeys(ep.tracked(), 0)


class _Discard:
    """A transport that takes what the session writes and keeps nothing."""

    __slots__ = ()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    abort = close

    def get_extra_info(self, name, default=None):
        return default

    def get_write_buffer_size(self) -> int:
        return 0


class _FrozenClock:
    """The endpoint's loop, with a time that stands still: every session
    falls in the same sweep bucket, so the count does not depend on when a
    second began."""

    def __init__(self, loop) -> None:
        self._loop = loop
        self._now = 1000.0

    def time(self) -> float:
        return self._now + 0.0  # (a float object per call, as a loop's clock gives)

    def __getattr__(self, name):
        return getattr(self._loop, name)


IDLE_CONNECTIONS = 2000
#: Bytes of Python objects per idle ThingsBoard-style connection that are
#: fleetrpc's (issue 13: <= 2 KiB for the whole process, of which uvloop's
#: transport and its fd map take ~1.2 KiB).  Measured 646 B on both cores
#: at 2000: the session 160, its client id 58, its time 24, its place in
#: the sweep's bucket (a set's table) 64 and in the two device tables 52;
#: presence's state with its table 138, its online set 64, its key (the id
#: decoded from the presence topic) 56 and its time 24.  Was 1,460 B.
IDLE_CONNECTION_BUDGET = 672


async def test_idle_connection_memory_budget():
    """What fleetrpc holds for an idle device connection, by tracemalloc in
    this process: sessions fed a CONNECT and a SUBSCRIBE to the RPC topic,
    online in the dispatcher's presence, then idle (reader and extra
    dropped) and through a keepalive round (a PINGREQ each).  Not counted:
    the transports (uvloop's, in a server) and the device ids
    authenticate() returns (a registry's cache holds them)."""
    import gc
    import tracemalloc

    from fleetrpc.transport.endpoint.session import Session

    n = IDLE_CONNECTIONS
    ids = {f"tok-{i}": f"dev-{i}" for i in range(n)}
    # (not make_rig: its presence hook keeps two Events per device)
    ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0), authenticate=lambda u, p, c: ids.get(u))
    dispatcher = Dispatcher(Settings(node_id="n1"), transport=ep)
    await dispatcher.start()
    try:
        ep._loop = _FrozenClock(ep._loop)
        transports = [_Discard() for _ in range(n)]
        hello = [raw.connect(f"tok-{i}", client_id=f"client-{i}") + raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1))
                 for i in range(n)]
        sessions: list = [None] * n
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                s = sessions[i] = Session(ep)
                s.connection_made(transports[i])
                s.data_received(hello[i])
            del s
            for _ in range(2):  # the endpoint's flush (one hop after the wakeups): CONNACK and SUBACK written
                await asyncio.sleep(0)
            assert len(dispatcher.presence.online) == n
            for s in sessions:
                s._check(s.last_in + IDLE_TRIM + 0.5)
            del s
            for key in [k for k, bucket in ep._checks.items() if not bucket]:
                del ep._checks[key]  # (as the sweep pops a bucket that fell due)
            for s in sessions:  # a keepalive round, as every idle device sends one a minute
                s.data_received(b"\xc0\x00")
            del s
            for _ in range(2):
                await asyncio.sleep(0)
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert all(s.state == CONNECTED and s.reader is None and s.extra is None for s in sessions)
        per_connection = used / n
        assert per_connection <= IDLE_CONNECTION_BUDGET, f"{per_connection:.0f} B per idle connection"
        for s in sessions:
            s.connection_lost(None)
        assert ep.tracked() == dict.fromkeys(ep.tracked(), 0)
    finally:
        await dispatcher.close()
