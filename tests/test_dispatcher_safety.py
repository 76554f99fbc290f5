"""Defects found by trying fleetrpc as a hostile device and a careless caller,
each through a real Mosquitto: the server answers only inside the caller's own
topics, replies to unsent or earlier-run requests complete nothing, limits
hold both ways, arguments are checked at the edge, nothing is dropped in
silence."""

from __future__ import annotations

import asyncio
import math

import pytest

from fleetrpc import DeliveryStrategy
from fleetrpc.config import Settings
from fleetrpc.device import DeviceClient
from fleetrpc.dispatch import Dispatcher
from fleetrpc.errors import DeviceOfflineError, RemoteError, RpcTimeoutError, ValidationError
from fleetrpc.wire import DeviceTopics
from tests.helpers.waiting import wait_until as _wait

pytestmark = pytest.mark.mqtt

_seq = iter(range(10**9))


def _settings(url: str, **kw) -> Settings:
    kw.setdefault("min_timeout_ms", 0)
    kw.setdefault("default_timeout_ms", 3000)
    kw.setdefault("node_id", f"safety{next(_seq)}")
    return Settings(mqtt_url=url, **kw)


async def _device(url: str, name: str | None = None, **kw) -> DeviceClient:
    dev = DeviceClient(name or f"sdev-{next(_seq)}", url, **kw)
    dev.runs = 0

    @dev.method("echo")
    def echo(params):
        dev.runs += 1
        return params

    @dev.method("slow")
    async def slow(params):
        await asyncio.sleep(params.get("s", 0.3))
        return params.get("v")

    await dev.connect()
    return dev


def _wire_node(d: Dispatcher) -> str:
    # The node level of this run's requests (before the boot id: the node id).
    return getattr(d, "node", d.node_id)


@pytest.fixture
async def rig(mqtt_url):
    d = Dispatcher(_settings(mqtt_url))
    await d.start()
    dev = await _device(mqtt_url)
    await _wait(lambda: d.is_online(dev.device_id))
    yield d, dev
    await dev.close()
    await d.close()


# -- answers stay inside the caller's topics -------------------------------------


async def test_foreign_response_topic_cannot_complete_another_devices_call(rig, mqtt_url):
    d, victim = rig
    attacker = await _device(mqtt_url)
    try:
        await _wait(lambda: d.is_online(attacker.device_id))
        d.add_handler("whoami", lambda device, params: "server-answer")
        pending = asyncio.ensure_future(d.call(victim.device_id, "slow", {"s": 0.5, "v": "mine"}))
        await _wait(lambda: d.stats.sent == 1)
        (rid,) = [r for r in range(1, 100) if d._pending.peek(r) is not None]
        victim_reply = DeviceTopics(d.settings.prefix, victim.device_id).reply(_wire_node(d), rid)
        answer = asyncio.get_running_loop().create_future()
        attacker._calls[77] = answer
        attacker._transport.publish(
            DeviceTopics(d.settings.prefix, attacker.device_id).call(77),
            b'{"method":"whoami"}', 1, False, -1,
            {"response_topic": victim_reply, "correlation_data": b"c-77"},
        )
        # The attacker gets its answer on its own RETURN topic ...
        assert await asyncio.wait_for(answer, 5) == "server-answer"
        # ... and the victim's call is completed by the victim only.
        assert await pending == "mine"
        assert d.stats.foreign_response_topic == 1
    finally:
        await attacker.close()


async def test_own_response_topic_is_honoured(rig):
    d, dev = rig
    d.add_handler("whoami", lambda device, params: device)
    answer = asyncio.get_running_loop().create_future()
    dev._calls[5] = answer
    topics = DeviceTopics(d.settings.prefix, dev.device_id)
    dev._transport.publish(topics.call(99), b'{"method":"whoami"}', 1, False, -1,
                           {"response_topic": topics.base + "/ret/5"})
    assert await asyncio.wait_for(answer, 5) == dev.device_id
    assert d.stats.foreign_response_topic == 0


async def test_reply_for_a_call_not_yet_sent_is_rejected(mqtt_url):
    d = Dispatcher(_settings(mqtt_url, strategy=DeliveryStrategy.SEQUENTIAL_ON_RESPONSE))
    await d.start()
    dev = await _device(mqtt_url)
    try:
        await _wait(lambda: d.is_online(dev.device_id))
        first = asyncio.ensure_future(d.call(dev.device_id, "slow", {"s": 0.5, "v": 1}))
        second = asyncio.ensure_future(d.call(dev.device_id, "echo", "real"))
        await _wait(lambda: d.stats.calls == 2)
        held = max(r for r in range(1, 100) if d._pending.peek(r) is not None)
        topics = DeviceTopics(d.settings.prefix, dev.device_id)
        dev.publish_raw(topics.reply(_wire_node(d), held), b'"guessed"')
        dev.publish_raw(topics.ack(_wire_node(d), held), b"")
        assert await first == 1
        assert await second == "real"
        assert d.stats.not_sent == 2
    finally:
        await dev.close()
        await d.close()


# -- identities never collide across restarts --------------------------------------


async def test_restart_with_the_same_node_id_never_reuses_a_reply(mqtt_url):
    dev = await _device(mqtt_url)
    try:
        d1 = Dispatcher(_settings(mqtt_url, node_id="same-node"))
        await d1.start()
        await _wait(lambda: d1.is_online(dev.device_id))
        assert await d1.call(dev.device_id, "echo", "before") == "before"
        old_node = _wire_node(d1)
        await d1.close()

        d2 = Dispatcher(_settings(mqtt_url, node_id="same-node"))
        await d2.start()
        await _wait(lambda: d2.is_online(dev.device_id))
        # The same request id in the new run: the device runs it, fresh.
        assert await d2.call(dev.device_id, "echo", "after") == "after"
        assert dev.runs == 2 and dev.duplicates == 0
        # A late reply of the earlier run completes nothing in this one.
        pending = asyncio.ensure_future(d2.call(dev.device_id, "slow", {"s": 0.5, "v": "fresh"}))
        await _wait(lambda: d2.stats.sent == 2)
        dev.publish_raw(DeviceTopics(d2.settings.prefix, dev.device_id).reply(old_node, 2), b'"stale"')
        assert await pending == "fresh"
        await d2.close()
    finally:
        await dev.close()


# -- limits both ways ----------------------------------------------------------


async def test_oversize_request_is_refused_before_it_is_sent(mqtt_url):
    d = Dispatcher(_settings(mqtt_url, max_payload=1000))
    await d.start()
    dev = await _device(mqtt_url)
    try:
        await _wait(lambda: d.is_online(dev.device_id))
        with pytest.raises(ValidationError, match="over the limit of 1000"):
            await d.call(dev.device_id, "echo", "x" * 2000)
        with pytest.raises(ValidationError, match="over the limit"):
            d.check_request("echo", "x" * 2000)
        bc = None
        with pytest.raises(ValidationError):
            bc = d.broadcast([dev.device_id], "echo", "x" * 2000)
        assert bc is None and d.stats.sent == 0 and d.stats.oversize == 3
        assert await d.call(dev.device_id, "echo", "small") == "small"
    finally:
        await dev.close()
        await d.close()


async def test_device_sdk_limit_fails_its_call_at_once(rig, mqtt_url):
    d, _ = rig
    d.add_handler("echo", lambda device, params: params)
    small = await _device(mqtt_url, max_payload=500)
    try:
        with pytest.raises(ValidationError, match="over the limit of 500"):
            await small.call("echo", "y" * 1000, timeout=30)  # at once, not after 30 s
        assert await small.call("echo", "ok") == "ok"
    finally:
        await small.close()


# -- arguments checked at the edge ------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "false", 0, 1, math.nan])
async def test_oneway_must_be_a_bool(rig, value):
    d, dev = rig
    with pytest.raises(ValidationError, match="oneway"):
        await d.call(dev.device_id, "echo", 1, oneway=value)
    assert d.stats.calls == 0


@pytest.mark.parametrize("value", ["", "false", "5", math.nan, math.inf, -1, True])
async def test_timeout_must_be_seconds(rig, value):
    d, dev = rig
    with pytest.raises(ValidationError, match="timeout"):
        await d.call(dev.device_id, "echo", 1, timeout=value)
    assert d.stats.calls == 0


# -- nothing dropped in silence ---------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"not json", b"[1,2]", b'{"params":{}}', b'{"method":""}'])
async def test_malformed_client_call_gets_an_error_reply(rig, payload):
    d, dev = rig
    answer = asyncio.get_running_loop().create_future()
    dev._calls[41] = answer
    dev.publish_raw(DeviceTopics(d.settings.prefix, dev.device_id).call(41), payload)
    reply = await asyncio.wait_for(answer, 5)
    assert reply["error"]["code"] == "BAD_REQUEST"
    assert d.stats.bad_calls == 1


async def test_elves_envelope_without_a_service_is_not_malformed(rig):
    d, dev = rig
    dev.publish_raw(f"{d.settings.prefix}/elves/app1/call/1", b'{"mqt":"call","mqs":"nobody","mqf":"f"}')
    await _wait(lambda: d.stats.elves_unrouted == 1)
    assert d.stats.malformed == 0


# -- ThingsBoard's offline behaviour, as an option --------------------------------


async def test_offline_wait_delivers_to_a_device_that_connects_meanwhile(mqtt_url):
    d = Dispatcher(_settings(mqtt_url))
    await d.start()
    name = f"late-{next(_seq)}"
    try:
        with pytest.raises(DeviceOfflineError):
            await d.call(name, "echo", 1)  # the default: fail at once
        call = asyncio.ensure_future(d.call(name, "echo", "waited", timeout=10, offline="wait"))
        await asyncio.sleep(0)
        dev = await _device(mqtt_url, name)
        try:
            assert await call == "waited"
        finally:
            await dev.close()
    finally:
        await d.close()


async def test_offline_wait_ends_with_device_offline_not_timeout(mqtt_url):
    d = Dispatcher(_settings(mqtt_url, offline="wait"))
    await d.start()
    try:
        with pytest.raises(DeviceOfflineError, match="did not connect"):
            await d.call(f"never-{next(_seq)}", "echo", 1, timeout=0.3)
        assert d.stats.offline_expired == 1 and d.stats.timeouts == 0
        with pytest.raises(ValidationError, match="offline"):
            await d.call("x", "echo", 1, offline="sometimes")
    finally:
        await d.close()


async def test_sent_call_that_gets_no_answer_is_still_a_timeout(rig):
    d, dev = rig
    with pytest.raises(RpcTimeoutError):
        await d.call(dev.device_id, "slow", {"s": 2}, timeout=0.3, offline="wait")


async def test_remote_error_reaches_the_device(rig):
    d, dev = rig
    with pytest.raises(RemoteError, match="METHOD_NOT_FOUND"):
        await dev.call("nothing-here", timeout=5)
