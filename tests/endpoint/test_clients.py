"""paho clients on MQTT 3.1.1 and 5, bare clients for exact bytes, and
fleetrpc's own device SDK connected directly: calls both ways, delivery
acknowledgement, authentication, and isolation between devices."""

from __future__ import annotations

import asyncio
import json

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetrpc.device import DeviceClient
from fleetrpc.errors import RpcTimeoutError

from . import rawmqtt as raw
from .conftest import make_rig


class Paho:
    """A paho client on its network thread; messages land in an asyncio queue."""

    def __init__(self, port: int, token: str, version: int, client_id: str = "") -> None:
        self.loop = asyncio.get_running_loop()
        proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
        self.client.username_pw_set(token)
        self.port = port
        self.messages: asyncio.Queue = asyncio.Queue()
        self.connack: asyncio.Future = self.loop.create_future()
        self.subacks: asyncio.Queue = asyncio.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.loop.call_soon_threadsafe(
            self.subacks.put_nowait, [int(getattr(x, "value", x)) for x in codes])

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        self.loop.call_soon_threadsafe(lambda: self.connack.done() or self.connack.set_result(rc))

    def _on_message(self, client, userdata, msg) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (msg.topic, msg.payload, msg.qos))

    async def start(self) -> int:
        await asyncio.to_thread(self.client.connect, "127.0.0.1", self.port)
        self.client.loop_start()
        rc = await asyncio.wait_for(self.connack, 10)
        return rc.value

    async def subscribe(self, topic: str, qos: int) -> list[int]:
        self.client.subscribe(topic, qos=qos)
        return await asyncio.wait_for(self.subacks.get(), 10)

    async def next_message(self):
        return await asyncio.wait_for(self.messages.get(), 10)

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [0, 1])
async def test_paho_device_answers_calls_at_the_qos_it_subscribed_with(rig, version, qos):
    dev = Paho(rig.port, "token-a", version)
    assert await dev.start() == 0
    assert await dev.subscribe("v1/devices/me/rpc/request/+", qos) == [qos]
    await rig.online("dev-a")
    statuses = []
    delivered = asyncio.Event()

    def on_status(event):
        statuses.append(event.type)
        if event.type == "DELIVERED":
            delivered.set()

    rig.dispatcher.on_status(on_status)
    call = asyncio.ensure_future(rig.dispatcher.call("dev-a", "setGPIO", {"pin": 4}))
    topic, payload, got_qos = await dev.next_message()
    assert topic == "v1/devices/me/rpc/request/1"
    assert json.loads(payload) == {"method": "setGPIO", "params": {"pin": 4}}
    assert got_qos == qos
    # The device's PUBACK (QoS 1), or the write (QoS 0), is ThingsBoard's DELIVERED.
    await asyncio.wait_for(delivered.wait(), 10)
    dev.client.publish("v1/devices/me/rpc/response/1", b'{"pin": 4, "value": 1}', qos=1)
    assert await call == {"pin": 4, "value": 1}
    assert statuses == ["SENT", "DELIVERED", "SUCCESSFUL"]
    await dev.stop()
    await rig.offline("dev-a")


@pytest.mark.parametrize("version", [4, 5])
async def test_one_way_call_completes_on_the_devices_puback(rig, version):
    dev = Paho(rig.port, "token-a", version)
    await dev.start()
    await dev.subscribe("v1/devices/me/rpc/request/+", 1)
    await rig.online("dev-a")
    assert await rig.dispatcher.call("dev-a", "reboot", {}, oneway=True) is None
    topic, payload, _ = await dev.next_message()
    assert json.loads(payload)["method"] == "reboot"
    await dev.stop()


async def test_short_v2_topics(rig):
    dev = Paho(rig.port, "token-a", 5)
    await dev.start()
    await dev.subscribe("v2/r/req/+", 1)
    await dev.subscribe("v2/r/res/+", 1)
    await rig.online("dev-a")
    call = asyncio.ensure_future(rig.dispatcher.call("dev-a", "m", [1]))
    topic, payload, _ = await dev.next_message()
    assert topic == "v2/r/req/1"
    dev.client.publish("v2/r/res/1", b"[2]", qos=1)
    assert await call == [2]

    rig.dispatcher.add_handler("twice", lambda device, params: params * 2)
    dev.client.publish("v2/r/req/77", b'{"method": "twice", "params": 21}', qos=1)
    assert await dev.next_message() == ("v2/r/res/77", b"42", 1)
    await dev.stop()


async def test_unknown_topics_are_refused_or_ignored_never_fatal(rig):
    dev = Paho(rig.port, "token-a", 5)
    await dev.start()
    # known ThingsBoard topics are granted (the SDK subscribes to them), others refused
    assert await dev.subscribe("v1/devices/me/attributes", 1) == [1]
    assert await dev.subscribe("some/other/topic", 1) == [0x87]
    assert await dev.subscribe("fleetrpc/d/dev-b/req/#", 1) == [0x87]
    assert await dev.subscribe("v1/gateway/rpc", 1) == [0x87]  # not a gateway
    info = dev.client.publish("v1/devices/me/telemetry", b'{"t": 1}', qos=1)
    await asyncio.to_thread(info.wait_for_publish, 5)
    assert rig.endpoint.stats.ignored == 1
    # still connected and usable
    await dev.subscribe("v1/devices/me/rpc/request/+", 0)
    await rig.online("dev-a")
    await dev.stop()


@pytest.mark.parametrize("version", [4, 5])
async def test_wrong_and_missing_tokens_are_refused_with_the_thingsboard_codes(rig, version):
    for username, v3_code, v5_code in [("wrong", 5, 0x87), ("", 4, 0x86), (None, 4, 0x86)]:
        c = await raw.RawClient.open(rig.port)
        first, body = await c.connect(username, version=version, client_id="x")
        assert first == 0x20
        assert body[1] == (v5_code if version == 5 else v3_code)
        assert await c.closed() == b""
        c.close()
    assert rig.endpoint.stats.refused_auth == 3
    assert rig.dispatcher.online_devices == frozenset()
    await _until(lambda: rig.endpoint.connection_count == 0)


async def test_mqtt_basic_passes_client_id_and_password_to_authenticate():
    seen = []

    def auth(username, password, client_id):
        seen.append((username, password, client_id))
        return "dev-a" if (client_id, password) == ("pump", "secret") else None

    async with make_rig(auth=auth, mqtt_basic=True) as rig:
        c = await raw.RawClient.open(rig.port)
        first, body = await c.connect("", password="secret", client_id="pump", version=5)
        assert body[:2] == b"\x00\x00"
        c.close()
        assert seen == [("", "secret", "pump")]


async def test_async_authenticate_and_packets_sent_before_its_answer():
    gate = asyncio.Event()

    async def auth(username, password, client_id):
        await gate.wait()
        return {"token-a": "dev-a"}.get(username)

    async with make_rig(auth=auth) as rig:
        c = await raw.RawClient.open(rig.port)
        # CONNECT and SUBSCRIBE in one write, before authentication finished
        c.send(raw.connect("token-a", client_id="c") + raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1)))
        gate.set()
        assert (await c.read_packet())[0] == 0x20
        assert await c.read_packet() == (0x90, b"\x00\x01\x01")
        await rig.online("dev-a")
        c.close()


async def _subscribed(rig, token: str, client_id: str, topic_filter: str, version: int = 4) -> raw.RawClient:
    """A raw client connected with ``token`` and subscribed to ``topic_filter`` (QoS 1)."""
    c = await raw.RawClient.open(rig.port)
    await c.connect(token, client_id=client_id, version=version)
    c.send(raw.subscribe(1, (topic_filter, 1), version=version))
    await c.read_packet()
    return c


async def test_a_device_cannot_answer_or_publish_for_another_device(rig):
    a = await _subscribed(rig, "token-a", "a", "v1/devices/me/rpc/request/+")
    b = await _subscribed(rig, "token-b", "b", "v1/devices/me/rpc/request/+", version=5)
    await rig.online("dev-a")
    await rig.online("dev-b")

    call = asyncio.ensure_future(rig.dispatcher.call("dev-a", "secret", {}, timeout=0.5))
    first, body = await a.read_packet()
    topic, payload, mid = raw.publish_topic(body, 1, False)
    assert topic == "v1/devices/me/rpc/request/1"
    # b answers "request 1" on its own topic: its session has no request 1
    b.send(raw.publish("v1/devices/me/rpc/response/1", b'"forged"', 1, 5, version=5))
    # ... and on dev-a's fleetrpc topics: not its namespace
    for rid in range(1, 4):
        b.send(raw.publish(f"fleetrpc/d/dev-a/res/n1/{rid}", b'"forged"', 1, 10 + rid, version=5))
    with pytest.raises(RpcTimeoutError):
        await call
    assert rig.endpoint.stats.unknown_response == 1
    assert rig.endpoint.stats.refused_topic == 3
    assert rig.dispatcher.stats.replies == 0
    a.close()
    b.close()


async def test_a_fleetrpc_form_device_cannot_answer_for_a_device_whose_id_extends_its_own(rig):
    """The FLEETRPC form's replies are matched by the session's topic base
    (``fleetrpc/d/dev-a``): ``fleetrpc/d/dev-ab/...`` and ``fleetrpc/d/dev/...``
    are other devices' topics, not dev-a's."""
    b = await _subscribed(rig, "token-b", "b", "fleetrpc/d/dev-b/req/#", version=5)
    a = await _subscribed(rig, "token-a", "a", "fleetrpc/d/dev-a/req/#", version=5)  # a session with its extra
    await rig.online("dev-a")
    await rig.online("dev-b")
    call = asyncio.ensure_future(rig.dispatcher.call("dev-b", "secret", {}, timeout=0.5))
    _, body = await b.read_packet()
    topic, _, _ = raw.publish_topic(body, 1, True)
    node_rid = topic.split("/req/", 1)[1]
    for forged in ("fleetrpc/d/dev-ab/res/", "fleetrpc/d/dev/res/", "fleetrpc/d/dev-b/res/", "fleetrpc/d/dev-a/res"):
        a.send(raw.publish(forged + node_rid, b'"forged"', 0, 0, version=5))
    with pytest.raises(RpcTimeoutError):
        await call
    assert rig.endpoint.stats.refused_topic == 4
    assert rig.dispatcher.stats.replies == 0
    a.close()
    b.close()


async def test_fleetrpc_sdk_device_connects_directly(rig):
    for version in (5, 4):
        dev = DeviceClient("dev-a", f"mqtt://127.0.0.1:{rig.port}", username="token-a", version=version)
        dev.add_method("add", lambda p: p["a"] + p["b"])
        rig.dispatcher.add_handler("whoami", lambda device, params: device)
        await dev.connect()
        await rig.online("dev-a")
        assert await rig.dispatcher.call("dev-a", "add", {"a": 2, "b": 3}) == 5
        assert await dev.call("whoami") == "dev-a"
        await dev.close()
        await rig.offline("dev-a")
    assert rig.endpoint.stats.refused_topic == 0


async def test_a_second_connection_with_the_same_client_id_takes_over(rig):
    first = await raw.RawClient.open(rig.port)
    await first.connect("token-a", client_id="same", version=5)
    second = await raw.RawClient.open(rig.port)
    await second.connect("token-a", client_id="same", version=5)
    # the first hears why (DISCONNECT, session taken over) and is closed
    assert (await first.closed())[:3] == b"\xe0\x02\x8e"
    # the same client id of another device is another session
    other = await raw.RawClient.open(rig.port)
    await other.connect("token-b", client_id="same", version=5)
    assert rig.endpoint.stats.takeovers == 1
    assert rig.endpoint.connected_devices == {"dev-a", "dev-b"}
    second.close()
    other.close()
    await _until(lambda: rig.endpoint.connection_count == 0)
    assert not any(rig.endpoint.tracked().values())


async def _until(predicate, timeout: float = 10.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


async def test_tls_listener(tmp_path):
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    async with make_rig(port=None, tls_port=0, tls_cert=str(cert), tls_key=str(key)) as rig:
        ctx = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.endpoint.ports["tls"], ssl=ctx)
        c = raw.RawClient(reader, writer)
        assert (await c.connect("token-a", client_id="tls", version=5))[1][:2] == b"\x00\x00"
        c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1), version=5))
        await c.read_packet()
        await rig.online("dev-a")
        call = asyncio.ensure_future(rig.dispatcher.call("dev-a", "m", {}))
        first, body = await c.read_packet()
        topic, payload, mid = raw.publish_topic(body, 1, True)
        c.send(raw.puback(mid) + raw.publish("v1/devices/me/rpc/response/" + topic.rsplit("/", 1)[1], b"true",
                                             version=5))
        assert await call is True
        c.close()


async def test_the_simulators_thingsboard_firmware_answers_and_calls(rig):
    """sim.thingsboard.ThingsBoardDevice (the demo's thermostats): answers
    what it knows, an error for what it does not or what fails, and its
    client-side calls come back on its own response topic."""
    from fleetrpc.sim.thingsboard import ThingsBoardDevice

    def broken(params):
        raise ValueError("no sensor")

    dev = ThingsBoardDevice("token-a", {"getTemperature": lambda p: {"celsius": 21.5}, "broken": broken})
    await dev.connect("127.0.0.1", rig.port)
    try:
        await rig.online("dev-a")
        d = rig.dispatcher
        assert await d.call("dev-a", "getTemperature", {}) == {"celsius": 21.5}
        assert await d.call("dev-a", "nothing") == {"error": "unknown method 'nothing'"}
        assert await d.call("dev-a", "broken") == {"error": "ValueError: no sensor"}
        assert dev.received == ["getTemperature", "nothing", "broken"]
        limits = await dev.call("getSessionLimits")  # answered by the endpoint itself
        assert limits["maxPayloadSize"] == rig.endpoint.settings.max_payload
    finally:
        await dev.close()


async def test_a_client_call_nested_too_deeply_is_answered_invalid_not_fatal(rig):
    """A device's own call (``v1/devices/me/rpc/request/N``) whose params
    nest deeper than MAX_JSON_DEPTH (one level past it, which msgspec alone
    decodes, or past the interpreter's recursion limit, where msgspec raises
    RecursionError) is answered INVALID_REQUEST on every Python; the session
    stays up."""
    c = await raw.RawClient.open(rig.port)
    try:
        assert (await c.connect("token-a"))[1] == b"\x00\x00"
        c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1), ("v1/devices/me/rpc/response/+", 1)))
        await c.read_packet()  # SUBACK
        await rig.online("dev-a")
        for n, depth in enumerate((500, 20_000), 1):
            deep = b'{"method":"m","params":' + b"[" * depth + b"]" * depth + b"}"
            c.send(raw.publish(f"v1/devices/me/rpc/request/{n}", deep, qos=1, mid=5))
            answers = {}
            while len(answers) < 2:
                first, body = await c.read_packet()
                answers[first & 0xF0] = body
            assert answers[0x40] == b"\x00\x05"  # PUBACK
            topic, payload, _ = raw.publish_topic(answers[0x30], 1, False)
            assert topic == f"v1/devices/me/rpc/response/{n}"
            assert json.loads(payload)["error"]["code"] == "INVALID_REQUEST"
        assert rig.dispatcher.is_online("dev-a")
    finally:
        c.close()


@pytest.mark.parametrize("topic", ["v1/gateway/connect", "v1/gateway/disconnect", "v1/gateway/rpc",
                                   "v1/gateway/attributes/request"])
async def test_a_gateway_message_nested_too_deeply_is_ignored_not_fatal(rig, topic):
    """A gateway's message with a field nested deeper than msgspec recurses
    (even an unknown one: skipping it recurses too) is ignored; the session
    stays up."""
    c = await raw.RawClient.open(rig.port)
    try:
        assert (await c.connect("token-gw"))[1] == b"\x00\x00"
        deep = b'{"device":"s1","id":1,"junk":' + b"[" * 2000 + b"]" * 2000 + b"}"
        c.send(raw.publish(topic, deep, qos=1, mid=5))
        assert await c.read_packet() == (0x40, b"\x00\x05")  # PUBACK
        c.send(b"\xc0\x00")  # PINGREQ
        assert await c.read_packet() == (0xD0, b"")  # PINGRESP: still connected
    finally:
        c.close()


async def test_a_disconnect_from_an_mqtt5_client_is_not_answered_with_a_disconnect(rig):
    """MQTT 5, 4.13 and 3.14: the server must not send DISCONNECT after the
    client's own; it just closes.  (It used to answer with one, reason 0.)"""
    c = await raw.RawClient.open(rig.port)
    assert (await c.connect("token-a", client_id="bye", version=5))[1][:2] == b"\x00\x00"
    c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1), version=5))
    await c.read_packet()  # SUBACK
    await rig.online("dev-a")
    c.send(b"\xe0\x00")  # DISCONNECT, normal disconnection
    assert await c.closed() == b""
    await rig.offline("dev-a")
    assert rig.endpoint.stats.closed_other == 0
    c.close()


def unsubscribe(mid: int, *filters: str) -> bytes:
    return raw.packet(0xA2, mid.to_bytes(2, "big") + b"".join(raw.mstr(f) for f in filters))


async def _call_arrives_on(rig, c: raw.RawClient, prefix: str) -> None:
    """A one-way call to dev-a reaches ``c`` on a topic starting ``prefix``."""
    call = asyncio.ensure_future(rig.dispatcher.call("dev-a", "m", {}, oneway=True))
    first, body = await c.read_packet()
    topic, payload, mid = raw.publish_topic(body, 1, False)
    assert topic.startswith(prefix), topic
    c.send(raw.puback(mid))
    await call


async def test_a_device_stays_reachable_while_any_request_subscription_remains(rig):
    """Unsubscribing one RPC form's request topic while another's is held
    used to make the device offline (the v1 topic dropped while holding
    ``{p}/d/{id}/req/#``), or left it "reachable" with no request
    subscription at all (only ``ret/+`` left): requests went nowhere."""
    v1, fr = "v1/devices/me/rpc/request/+", "fleetrpc/d/dev-a/req/#"
    c = await raw.RawClient.open(rig.port)
    assert (await c.connect("token-a", client_id="both"))[1] == b"\x00\x00"
    offline = []
    rig.dispatcher.on_presence(lambda device, online: online or offline.append(device))
    for first_sub, second_sub in ((fr, v1), (v1, fr)):
        # both held; the last subscribed chose the form; drop it: the other takes over
        c.send(raw.subscribe(1, (first_sub, 1)) + raw.subscribe(2, (second_sub, 1)))
        await c.read_packet(), await c.read_packet()
        await rig.online("dev-a")
        await _call_arrives_on(rig, c, "v1/" if second_sub == v1 else "fleetrpc/")
        c.send(unsubscribe(3, second_sub))
        assert (await c.read_packet())[0] == 0xB0
        assert rig.endpoint.reaches("dev-a") and offline == []
        await _call_arrives_on(rig, c, "v1/" if first_sub == v1 else "fleetrpc/")
        c.send(unsubscribe(4, first_sub))
        assert (await c.read_packet())[0] == 0xB0
        await rig.offline("dev-a")
        offline.clear()
    # a fleetrpc filter that matches no request does not keep the device reachable
    c.send(raw.subscribe(5, (fr, 1), ("fleetrpc/d/dev-a/ret/+", 1)))
    await c.read_packet()
    await rig.online("dev-a")
    c.send(unsubscribe(6, fr))
    assert (await c.read_packet())[0] == 0xB0
    await rig.offline("dev-a")
    assert not rig.endpoint.reaches("dev-a")
    c.close()


@pytest.mark.parametrize("prefix", ["v1/devices/me/attributes/request/", "v2/a/req/", "v2/a/req/j/"])
@pytest.mark.parametrize("suffix", ["x" * (65535 - 33), "abc", "", "12345678901"])
async def test_an_attribute_request_without_an_integer_id_is_ignored_not_fatal(rig, prefix, suffix):
    """ThingsBoard reads the request id as an integer; a topic whose id is
    none is ignored (counted), as a client-side call's is.  An id of 65,000
    characters used to close the connection as malformed: its answer topic
    was longer than MQTT allows."""
    c = await raw.RawClient.open(rig.port)
    assert (await c.connect("token-a", client_id="attrs"))[1] == b"\x00\x00"
    c.send(raw.subscribe(1, (prefix.replace("request", "response").replace("req", "res") + "+", 0)))
    await c.read_packet()  # SUBACK
    topic = (prefix + suffix)[:65535]
    c.send(raw.publish(topic, b'{"sharedKeys": "a"}', 1, 7))
    assert await c.read_packet() == (0x40, b"\x00\x07")  # PUBACK, and no answer before it
    c.send(raw.publish(prefix + "8", b'{"sharedKeys": "a"}', 0))  # a barrier: this one is answered
    first, body = await c.read_packet()
    assert raw.publish_topic(body, 0, False) == (prefix.replace("request", "response").replace("req", "res") + "8",
                                                 b"{}", 0)
    assert rig.endpoint.stats.ignored == 1 and rig.endpoint.stats.attribute_requests == 1
    assert rig.endpoint.stats.closed_protocol == 0
    c.close()


async def test_publishes_on_another_devices_topics_are_counted_and_logged_in_summaries(rig, caplog):
    """A device publishing on another device's fleetrpc topics is refused
    each time (``refused_topic``), but the log gets one line at once and
    then summaries, not a WARNING per message: one device could bury the
    log (it used to get a line each)."""
    import logging

    caplog.set_level(logging.INFO, logger="fleetrpc.endpoint")
    b = await raw.RawClient.open(rig.port)
    assert (await b.connect("token-b", client_id="b"))[1] == b"\x00\x00"
    for i in range(1, 201):
        b.send(raw.publish(f"fleetrpc/d/dev-a/res/n1/{i}", b'"forged"', 1, i))
    for i in range(1, 201):
        assert await b.read_packet() == (0x40, i.to_bytes(2, "big"))  # each acknowledged, none fatal
    assert rig.endpoint.stats.refused_topic == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "fleetrpc.endpoint" and "dev-a" in r.getMessage()]
    assert len(lines) == 1 and "dev-b" in lines[0] and "fleetrpc/d/dev-a/res/n1/1" in lines[0], lines
    b.close()
