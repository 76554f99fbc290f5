"""Operating limits and bad input: oversized and malformed packets, rate
limits, keepalive and connect timeouts (half-open connections), the
connection cap, slow readers, session expiry.  After each, the endpoint
still serves other devices and holds nothing for the connections that went."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from fleetrpc.errors import DeviceOfflineError, RpcTimeoutError
from fleetrpc.transport.endpoint import EndpointSettings
from fleetrpc.errors import ValidationError

from . import rawmqtt as raw
from .conftest import make_rig


async def _until(predicate, timeout: float = 10.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


async def assert_nothing_left(rig) -> None:
    """Every connection gone: no session, route, call, buffer or check left."""
    await _until(lambda: rig.endpoint.connection_count == 0)
    assert rig.endpoint.tracked() == dict.fromkeys(rig.endpoint.tracked(), 0)
    assert rig.endpoint.buffered_bytes() == 0


async def assert_still_serving(rig) -> None:
    c = await raw.RawClient.open(rig.port)
    assert (await c.connect("token-b", client_id="healthy"))[1] == b"\x00\x00"
    c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 0)))
    await c.read_packet()
    await rig.online("dev-b")
    call = asyncio.ensure_future(rig.dispatcher.call("dev-b", "ping", {}))
    first, body = await c.read_packet()
    topic, _, _ = raw.publish_topic(body, 0, False)
    c.send(raw.publish("v1/devices/me/rpc/response/" + topic.rsplit("/", 1)[1], b'"pong"'))
    assert await call == "pong"
    c.close()
    await rig.offline("dev-b")


async def test_oversized_payload_closes_only_that_connection():
    async with make_rig(max_payload=1024) as rig:
        c = await raw.RawClient.open(rig.port)
        await c.connect("token-a", client_id="big", version=5)
        c.send(raw.publish("v1/devices/me/telemetry", b"x" * 2000, version=5))
        assert (await c.closed())[:3] == b"\xe0\x02\x95"  # DISCONNECT, packet too large
        # a packet announcing a huge length is not buffered without bound
        c = await raw.RawClient.open(rig.port)
        await c.connect("token-a", client_id="huge")
        c.send(b"\x30" + raw.varint(100_000_000) + b"\x00\x01t" + b"x" * 20_000)
        assert await c.closed() == b""
        assert rig.endpoint.stats.closed_too_large == 2
        await assert_nothing_left(rig)
        await assert_still_serving(rig)


@pytest.mark.parametrize("data, answer", [
    (b"\xff\xff\xff\xff\xff\x01", b""),                                 # bad remaining length
    (raw.publish("a", b"x"), b""),                                      # PUBLISH before CONNECT
    (raw.packet(0x10, raw.mstr("MQTT") + b"\x05\x02\x00\x3c\x05\x11"), b""),  # truncated properties
    (raw.packet(0x10, raw.mstr("MQIsdp") + b"\x03\x02\x00\x3c" + raw.mstr("c")), b"\x20\x02\x00\x01"),
    (raw.packet(0x10, raw.mstr("MQTT") + b"\x04\x03\x00\x3c" + raw.mstr("c")), b""),  # reserved flag
    (raw.connect("token-a", client_id="q") + b"\x34\x05\x00\x01t\x00\x01", None),  # QoS 2
    (raw.connect("token-a", client_id="s") + b"\x80\x02\x00\x01", None),           # SUBSCRIBE bad flags
    (raw.connect("token-a", client_id="c2") + raw.connect("token-a", client_id="c2"), None),
])
async def test_malformed_packets_close_only_the_offending_connection(rig, data, answer):
    c = await raw.RawClient.open(rig.port)
    c.send(data)
    got = await c.closed()
    if answer is not None:
        assert got == answer
    else:
        assert got.startswith(b"\x20\x02\x00\x00")  # accepted, then closed for the next packet
    await assert_nothing_left(rig)
    await assert_still_serving(rig)


async def test_rate_limit_in_thingsboard_format():
    async with make_rig(rate_limit="5:1,100:60") as rig:
        c = await raw.RawClient.open(rig.port)
        await c.connect("token-a", client_id="chatty", version=5)
        c.send(raw.publish("v1/devices/me/rpc/request/1", b'{"method": "getSessionLimits"}', 0, version=5))
        first, body = await c.read_packet()
        topic, payload, _ = raw.publish_topic(body, 0, True)
        assert topic == "v1/devices/me/rpc/response/1"
        limits = json.loads(payload)
        assert limits["maxPayloadSize"] == 65536
        assert limits["rateLimits"]["messages"] == "5:1,100:60"
        for i in range(10):
            c.send(raw.publish("v1/devices/me/telemetry", b"{}", version=5))
        assert (await c.closed())[:3] == b"\xe0\x02\x96"  # message rate too high
        assert rig.endpoint.stats.closed_rate_limit == 1
        await assert_nothing_left(rig)


def test_rate_limit_spec_is_checked():
    with pytest.raises(ValidationError, match="capacity:seconds"):
        EndpointSettings(rate_limit="200/1")
    assert EndpointSettings(rate_limit="0:0,").rate_limit == "0:0,"


async def test_keepalive_closes_a_silent_connection_and_the_device_goes_offline():
    async with make_rig() as rig:
        c = await raw.RawClient.open(rig.port)
        await c.connect("token-a", client_id="quiet", version=5, keepalive=1)
        c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1), version=5))
        await c.read_packet()
        await rig.online("dev-a")
        # silence, as from a device whose link died without a FIN
        assert (await c.closed())[:3] == b"\xe0\x02\x8d"  # keep alive timeout
        await rig.offline("dev-a")
        assert rig.endpoint.stats.closed_keepalive == 1
        await assert_nothing_left(rig)


async def test_pings_keep_a_connection_alive():
    async with make_rig() as rig:
        c = await raw.RawClient.open(rig.port)
        await c.connect("token-a", client_id="pinger", keepalive=1)
        for _ in range(4):  # 4 x 0.5 s: longer than 1.5 keepalives
            c.send(b"\xc0\x00")
            assert await c.read_packet() == (0xD0, b"")
            await asyncio.sleep(0.5)
        assert rig.endpoint.connection_count == 1
        c.close()


async def test_keepalive_zero_gets_the_servers_maximum():
    async with make_rig(max_keepalive=30) as rig:
        c = await raw.RawClient.open(rig.port)
        first, body = await c.connect("token-a", client_id="forever", version=5, keepalive=0)
        assert b"\x13\x00\x1e" in body  # Server Keep Alive: 30 s
        c.close()


async def test_half_open_connection_without_connect_is_closed():
    async with make_rig(connect_timeout=0.5) as rig:
        c = await raw.RawClient.open(rig.port)
        assert await c.closed() == b""
        assert rig.endpoint.stats.closed_connect_timeout == 1
        await assert_nothing_left(rig)


async def test_connection_cap():
    async with make_rig(max_connections=2) as rig:
        a = await raw.RawClient.open(rig.port)
        b = await raw.RawClient.open(rig.port)
        await a.connect("token-a", client_id="1")
        await b.connect("token-b", client_id="2")
        c = await raw.RawClient.open(rig.port)
        assert await c.closed() == b""
        assert rig.endpoint.stats.refused_max_connections == 1
        a.close()
        await _until(lambda: rig.endpoint.connection_count == 1)
        d = await raw.RawClient.open(rig.port)
        assert (await d.connect("token-a", client_id="3"))[1] == b"\x00\x00"
        b.close()
        d.close()
        await assert_nothing_left(rig)


@pytest.mark.parametrize("grace, max_buffer", [(0.3, 64 << 20), (60.0, 256 << 10)])
async def test_slow_reader_is_disconnected_not_buffered_without_bound(grace, max_buffer):
    async with make_rig(write_high_water=16 << 10, slow_reader_grace=grace, max_write_buffer=max_buffer) as rig:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        await asyncio.to_thread(sock.connect, ("127.0.0.1", rig.port))
        sock.sendall(raw.connect("token-a", client_id="slow") + raw.subscribe(1, ("v1/devices/me/rpc/request/+", 0)))
        await rig.online("dev-a")
        # the device never reads again
        big = {"blob": "x" * 32_000}
        calls = []
        for _ in range(2000):
            if not rig.dispatcher.is_online("dev-a"):
                break
            calls.append(asyncio.ensure_future(rig.dispatcher.call("dev-a", "fill", big, oneway=True, timeout=1)))
            await asyncio.sleep(0)  # let the endpoint write
        await rig.offline("dev-a")
        assert rig.endpoint.stats.closed_slow_reader == 1
        for result in await asyncio.gather(*calls, return_exceptions=True):
            assert result is None or isinstance(result, (RpcTimeoutError, DeviceOfflineError))
        await assert_nothing_left(rig)
        sock.close()
        await assert_still_serving(rig)


async def back_with_stored_session(rig, *subscriptions: tuple[str, int]) -> raw.RawClient:
    """Device dev-a (client "keeper", MQTT 5, a 30 s session) subscribes to
    each ``(filter, qos)`` in turn, goes away and comes back within the
    interval without subscribing again: its new client, session present."""
    c = await raw.RawClient.open(rig.port)
    first, body = await c.connect("token-a", client_id="keeper", version=5, clean=False, props={0x11: 30})
    assert body[:2] == b"\x00\x00"
    for packet_id, sub in enumerate(subscriptions, 1):
        c.send(raw.subscribe(packet_id, sub, version=5))
        await c.read_packet()
    await rig.online("dev-a")
    c.close()
    await rig.offline("dev-a")
    c = await raw.RawClient.open(rig.port)
    first, body = await c.connect("token-a", client_id="keeper", version=5, clean=False, props={0x11: 30})
    assert body[:2] == b"\x01\x00"  # session present
    await rig.online("dev-a")
    return c


async def test_session_expiry_keeps_subscriptions_for_a_reconnecting_device():
    async with make_rig(max_session_expiry=60) as rig:
        c = await back_with_stored_session(rig, ("v1/devices/me/rpc/request/+", 1))
        call = asyncio.ensure_future(rig.dispatcher.call("dev-a", "m", 1))
        first, body = await c.read_packet()
        topic, payload, mid = raw.publish_topic(body, 1, True)
        assert topic == "v1/devices/me/rpc/request/1"
        c.send(raw.puback(mid) + raw.publish("v1/devices/me/rpc/response/1", b"2", version=5))
        assert await call == 2
        c.close()
        await rig.offline("dev-a")
        # clean start forgets it
        c = await raw.RawClient.open(rig.port)
        first, body = await c.connect("token-a", client_id="keeper", version=5, clean=True)
        assert body[:2] == b"\x00\x00"
        c.close()
        await assert_nothing_left(rig)
        assert not rig.endpoint._stored


async def test_session_expiry_is_capped_and_reported():
    async with make_rig(max_session_expiry=10) as rig:
        c = await raw.RawClient.open(rig.port)
        first, body = await c.connect("token-a", client_id="k", version=5, clean=False, props={0x11: 3600})
        assert b"\x11\x00\x00\x00\x0a" in body  # Session Expiry Interval: 10
        c.close()


async def test_subscriptions_in_its_own_namespace_are_capped():
    """Found by fuzzing: a device could subscribe to any number of distinct
    filters under its own ``{p}/d/{id}/``, each kept, and each SUBSCRIBE
    re-reading all of them: 8,000 filters held the event loop (every
    device) for minutes.  Past the cap a new filter is refused (0x97);
    one already held can still be subscribed to again."""
    from fleetrpc.transport.endpoint.session import MAX_FLEETRPC_FILTERS

    async with make_rig() as rig:
        c = await raw.RawClient.open(rig.port)
        assert (await c.connect("token-a", version=5, client_id="many"))[1][:2] == b"\x00\x00"
        filters = [(f"fleetrpc/d/dev-a/x/{i}", 1) for i in range(MAX_FLEETRPC_FILTERS + 50)]
        c.send(raw.subscribe(1, *filters, version=5))
        first, body = await c.read_packet()
        assert first == 0x90
        codes = body[3:]
        assert codes == b"\x01" * MAX_FLEETRPC_FILTERS + b"\x97" * 50
        c.send(raw.subscribe(2, ("fleetrpc/d/dev-a/x/0", 0), ("fleetrpc/d/dev-a/req/#", 1), version=5))
        assert (await c.read_packet())[1][3:] == b"\x00\x97"
        (session,) = rig.endpoint.sessions_of("dev-a")
        assert len(session.extra.fr_subs) == MAX_FLEETRPC_FILTERS
        await assert_still_serving(rig)
        c.close()
        await assert_nothing_left(rig)


async def test_requests_waiting_for_a_device_that_never_acknowledges_are_bounded():
    """Found by fuzzing: past the session's window, requests to a device that
    never sends PUBACK (but keeps its connection) waited without bound; the
    dispatcher's window per device is larger, and each call that timed out
    made room for more.  The oldest beyond max_pending_responses is dropped
    (its call times out, as a forgotten request's does)."""
    async with make_rig(max_inflight=2, max_pending_responses=20) as rig:
        c = await raw.RawClient.open(rig.port)
        await c.connect("token-a", client_id="deaf")
        c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1)))
        await c.read_packet()
        await rig.online("dev-a")
        ep = rig.endpoint
        undeliverable = ep.stats.undeliverable
        for i in range(1, 201):
            ep.publish(f"{ep._dev_prefix}dev-a/req/n9/{i}", b'{"method":"m","params":{}}', 1, False, -1)
        (session,) = ep.sessions_of("dev-a")
        assert len(session.extra.inflight) == 2
        assert len(session.extra.waiting) == 20
        assert ep.stats.undeliverable - undeliverable == 200 - 2 - 20
        # the newest wait: acknowledging the two in flight sends the next ones
        for _ in range(2):
            first, body = await c.read_packet()
            c.send(raw.puback(raw.publish_topic(body, 1, False)[2]))
        for _ in range(2):
            first, body = await c.read_packet()
            assert body[2:].startswith(b"v1/devices/me/rpc/request/")
        assert [w[2] for w in session.extra.waiting][0] == "n9/183"
        c.close()
        await assert_nothing_left(rig)


@pytest.mark.parametrize("version, refusal", [(4, b"\x00\x03"), (5, b"\x00\x88")])
async def test_an_authentication_that_never_answers_times_out_as_server_unavailable(version, refusal):
    """authenticate() whose answer never comes (a registry query hung): the
    CONNECT is refused with "server unavailable" after auth_timeout and the
    connection closes; nothing waits for that answer any more.  (It used to
    wait forever: the connection was dropped at its connect timeout without
    a CONNACK, and the task awaiting the answer stayed.)"""
    hung: list[asyncio.Future] = []

    def authenticate(username, password, client_id):
        if username != "token-hangs":
            return {"token-a": "dev-a", "token-b": "dev-b"}.get(username)
        hung.append(asyncio.get_running_loop().create_future())
        return hung[-1]

    async with make_rig(auth=authenticate, auth_timeout=0.2, connect_timeout=30) as rig:
        c = await raw.RawClient.open(rig.port)
        c.send(raw.connect("token-hangs", client_id="h", version=version))
        first, body = await c.read_packet(timeout=5)
        assert first == 0x20 and body[:2] == refusal
        assert await c.closed() == b""
        assert rig.endpoint.stats.refused_unavailable == 1
        assert hung and hung[0].cancelled()
        await assert_still_serving(rig)
        await assert_nothing_left(rig)


def test_a_connect_in_many_small_pieces_is_gathered_in_place_and_still_bounded():
    """Bytes before CONNACK wait in the session until the CONNECT is whole.
    They used to be joined anew with every piece (``early + data``): a
    CONNECT of ~73 KB sent a byte at a time cost ~2.7 GB of copying.  Now
    they are appended in place; the bound (max_payload + 8 KiB) holds."""
    from fleetrpc.transport.endpoint import DeviceEndpoint
    from fleetrpc.transport.endpoint.session import CONNECTED, Session

    from .test_session_hypothesis import FakeTransport

    loop = asyncio.new_event_loop()
    try:
        ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0),
                            authenticate=lambda u, p, c: "dev-a" if u == "tok" else None)
        ep._loop = loop
        session = Session(ep)
        session.connection_made(FakeTransport())
        big = raw.connect("tok", password=b"p" * 65_000, client_id="slow" * 1000)
        assert ep._max_packet - 8192 < len(big) <= ep._max_packet
        held = []  # every buffer seen, kept alive so that no id is reused
        for i in range(len(big)):
            session.data_received(big[i:i + 1])
            if i < 2000:
                held.append(session.extra.early)
        assert len({id(b) for b in held}) == 1  # one buffer, grown in place
        assert session.state == CONNECTED and session.device == "dev-a"

        # still bounded: a CONNECT announcing more than the bound is refused at once
        session = Session(ep)
        transport = FakeTransport()
        session.connection_made(transport)
        too_big = b"\x10" + raw.varint(ep._max_packet + 1) + b"\x00\x04MQTT"
        for i in range(len(too_big)):
            session.data_received(too_big[i:i + 1])
        assert transport.closed
    finally:
        loop.close()


@pytest.mark.parametrize("resolver", ["default", "async"])
async def test_a_gateways_sub_devices_are_bounded(resolver, caplog):
    """A gateway session binds at most max_subdevices names; further
    announcements (connect or attribute request) are refused, counted and
    logged in summaries, and the resolver is not even asked.  With the
    library's default resolver (the name is the id) a gateway could bind
    any number of names, each kept with a route, for as long as it stayed
    connected."""
    import logging

    asked: list[str] = []

    async def resolve(gateway, name):
        asked.append(name)
        await asyncio.sleep(0)
        return name

    caplog.set_level(logging.INFO, logger="fleetrpc.endpoint")
    async with make_rig(max_subdevices=3, resolve_subdevice=resolve if resolver == "async" else None) as rig:
        gw = await raw.RawClient.open(rig.port)
        assert (await gw.connect("token-gw", client_id="gw"))[1] == b"\x00\x00"
        gw.send(raw.subscribe(1, ("v1/gateway/rpc", 1)))
        await gw.read_packet()
        for i in range(50):
            gw.send(raw.publish("v1/gateway/connect", json.dumps({"device": f"sub-{i}"}).encode()))
            if i < 3:
                await rig.online(f"sub-{i}")
        gw.send(raw.publish("v1/gateway/attributes/request",
                            b'{"id": 1, "device": "sub-99", "client": false, "key": "k"}'))
        gw.send(b"\xc0\x00")  # PINGREQ: its PINGRESP comes after all of the above was read
        assert await gw.read_packet() == (0xD0, b"")
        await asyncio.sleep(0)  # (the async resolver's bindings)
        (session,) = rig.endpoint.sessions_of("gw-1")
        assert sorted(session.subdevices) == ["sub-0", "sub-1", "sub-2"]
        assert rig.endpoint.stats.refused_subdevices == 48
        assert all(not rig.endpoint.reaches(f"sub-{i}") for i in range(3, 50))
        if resolver == "async":
            assert asked == ["sub-0", "sub-1", "sub-2"]
        lines = [r.getMessage() for r in caplog.records if "max_subdevices" in r.getMessage()]
        assert len(lines) == 1 and "gw-1" in lines[0] and "sub-3" in lines[0], lines
        # one announced again is no new one; one gone makes room
        gw.send(raw.publish("v1/gateway/connect", b'{"device": "sub-1"}'))
        gw.send(raw.publish("v1/gateway/disconnect", b'{"device": "sub-0"}'))
        gw.send(raw.publish("v1/gateway/connect", b'{"device": "sub-7"}'))
        await rig.online("sub-7")
        assert rig.endpoint.stats.refused_subdevices == 48
        gw.close()
        await assert_nothing_left(rig)


async def test_stored_sessions_are_bounded_the_one_stored_longest_ago_goes():
    """With max_session_expiry above 0, every disconnected persistent
    session was kept for its interval, without bound (a device choosing a
    new client id per connection made one each).  Past max_stored_sessions
    the one stored longest ago is forgotten: that device reconnects without
    its session (session present 0) and subscribes again."""
    async with make_rig(max_session_expiry=60, max_stored_sessions=2) as rig:
        for cid in ("k1", "k2", "k3", "k2"):  # k2 stored again: now the newest
            c = await raw.RawClient.open(rig.port)
            await c.connect("token-a", client_id=cid, version=5, clean=False, props={0x11: 60})
            c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1), version=5))
            await c.read_packet()
            c.close()
            await _until(lambda: not rig.endpoint.sessions_of("dev-a"))
            assert len(rig.endpoint._stored) <= 2
        assert [key[1] for key in rig.endpoint._stored] == ["k3", "k2"]
        for cid, present in (("k3", 1), ("k2", 1), ("k1", 0)):  # (each stored again as it goes)
            c = await raw.RawClient.open(rig.port)
            first, body = await c.connect("token-a", client_id=cid, version=5, clean=False, props={0x11: 60})
            assert body[:2] == bytes((present, 0)), cid
            c.close()
            await _until(lambda: not rig.endpoint.sessions_of("dev-a"))
        assert [key[1] for key in rig.endpoint._stored] == ["k2", "k1"]
        assert rig.endpoint.stats.stored_sessions_dropped == 2
        # what was forgotten is not kept alive by the sweep's buckets either
        stored = [obj for bucket in rig.endpoint._checks.values() for obj in bucket
                  if obj.__class__.__name__ == "_StoredSession"]
        assert len(stored) == 2


async def test_one_device_cycling_client_ids_cannot_push_out_the_others_stored_sessions():
    """A device with a good token and a new client id per connection: it
    keeps at most MAX_STORED_PER_DEVICE stored sessions, so the endpoint's
    bound (here 20) never forgets another device's session for it; when
    they expire, nothing is left of them."""
    from fleetrpc.transport.endpoint.server import MAX_STORED_PER_DEVICE

    async def persistent(token: str, cid: str, expiry: int = 60) -> int:
        c = await raw.RawClient.open(rig.port)
        _, body = await c.connect(token, client_id=cid, version=5, clean=False, props={0x11: expiry})
        c.close()
        await _until(lambda: not rig.endpoint.sessions_of("dev-a") and not rig.endpoint.sessions_of("dev-b"))
        return body[0]  # session present

    async with make_rig(max_session_expiry=60, max_stored_sessions=20) as rig:
        await persistent("token-b", "b-1")
        for i in range(30):
            await persistent("token-a", f"a-{i}", expiry=1)
        ours = [cid for device, cid in rig.endpoint._stored if device == "dev-a"]
        assert ours == [f"a-{i}" for i in range(MAX_STORED_PER_DEVICE)]
        assert rig.endpoint.stats.stored_sessions_dropped == 30 - MAX_STORED_PER_DEVICE
        assert await persistent("token-b", "b-1") == 1  # still there
        await _until(lambda: all(device != "dev-a" for device, _ in rig.endpoint._stored), timeout=5)
        assert rig.endpoint._stored_per_device == {"dev-b": 1}


async def test_sub_device_lookups_in_flight_are_bounded_and_time_out(caplog):
    """A registry that does not answer: each name is looked up once however
    often the gateway announces it, lookups in flight count against
    max_subdevices, and each ends after auth_timeout (logged in a summary,
    not a traceback per name).  Before, a gateway could start a lookup per
    message and every one waited for ever."""
    import logging

    asked: list[str] = []
    hang = asyncio.Event()

    async def resolve(gateway, name):
        asked.append(name)
        await hang.wait()
        return name

    caplog.set_level(logging.INFO, logger="fleetrpc.endpoint")
    async with make_rig(max_subdevices=3, auth_timeout=0.5, resolve_subdevice=resolve) as rig:
        gw = await raw.RawClient.open(rig.port)
        assert (await gw.connect("token-gw", client_id="gw"))[1] == b"\x00\x00"
        gw.send(raw.subscribe(1, ("v1/gateway/rpc", 1)))
        await gw.read_packet()
        for _ in range(20):
            for i in range(10):
                gw.send(raw.publish("v1/gateway/connect", json.dumps({"device": f"sub-{i}"}).encode()))
        gw.send(b"\xc0\x00")  # PINGREQ: its PINGRESP comes after all of the above was read
        assert await gw.read_packet() == (0xD0, b"")
        await asyncio.sleep(0)
        assert asked == ["sub-0", "sub-1", "sub-2"]
        assert rig.endpoint.stats.refused_subdevices == 20 * 10 - 20 * 3
        await _until(lambda: not rig.endpoint._resolving)  # auth_timeout has passed
        assert rig.endpoint.stats.ignored >= 3
        assert not any(r.exc_info for r in caplog.records), "a traceback per failed lookup"
        assert any("sub-device" in r.getMessage() and "auth_timeout" in r.getMessage() for r in caplog.records)
        # the places are free again: the registry answers now
        hang.set()
        gw.send(raw.publish("v1/gateway/connect", b'{"device": "sub-5"}'))
        await rig.online("sub-5")
        assert asked[-1] == "sub-5"
        gw.close()
        await assert_nothing_left(rig)
