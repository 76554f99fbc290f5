"""Lightweight RPC end to end, through a real Mosquitto, on uvloop and asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.helpers.waiting import wait_until as _wait
import uvloop

from fleetrpc import DeliveryStrategy
from fleetrpc.config import Settings
from fleetrpc.device import DeviceClient
from fleetrpc.dispatch import Dispatcher
from fleetrpc.errors import (
    DeviceOfflineError,
    DispatcherClosedError,
    QueueFullError,
    RemoteError,
    ReplyNotJsonError,
    RpcTimeoutError,
    ValidationError,
)

pytestmark = pytest.mark.mqtt


@pytest.fixture(params=["uvloop", "asyncio"])
def event_loop_policy(request):
    if request.param == "uvloop":
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


_seq = iter(range(10**9))


def _settings(url: str, **kw) -> Settings:
    kw.setdefault("min_timeout_ms", 0)
    kw.setdefault("default_timeout_ms", 3000)
    return Settings(mqtt_url=url, node_id=f"t{next(_seq)}", **kw)




def _name(prefix: str = "dev") -> str:
    return f"{prefix}-{next(_seq)}"


async def _device(url: str, name: str | None = None, **kw) -> DeviceClient:
    dev = DeviceClient(name or _name(), url, **kw)

    @dev.method("echo")
    def echo(params):
        return params

    @dev.method("slow")
    async def slow(params):
        await asyncio.sleep(params.get("s", 0.2))
        return params.get("v")

    @dev.method("boom")
    def boom(params):
        raise RuntimeError("exploded")

    await dev.connect()
    return dev


@pytest.fixture
async def rig(mqtt_url):
    """A dispatcher and a device, both connected, presence seen."""
    d = Dispatcher(_settings(mqtt_url))
    await d.start()
    dev = await _device(mqtt_url)
    await _wait(lambda: d.is_online(dev.device_id))
    yield d, dev
    await dev.close()
    await d.close()


async def test_two_way_returns_the_reply(rig):
    d, dev = rig
    assert await d.call(dev.device_id, "echo", {"pin": 4, "value": 1}) == {"pin": 4, "value": 1}
    assert await d.call(dev.device_id, "echo", [1, "x", None]) == [1, "x", None]
    assert d.stats.replies == 2


async def test_params_default_to_empty_object(rig):
    d, dev = rig
    assert await d.call(dev.device_id, "echo") == {}


async def test_one_way_returns_once_published(rig):
    d, dev = rig
    got = []
    dev.add_method("set", lambda p: got.append(p))
    assert await d.call(dev.device_id, "set", {"v": 1}, oneway=True) is None
    await _wait(lambda: got == [{"v": 1}])


async def test_device_error_reply_is_returned_as_json(rig):
    d, dev = rig
    r = await d.call(dev.device_id, "boom", {})
    assert r["error"]["code"] == "HANDLER_ERROR" and "exploded" in r["error"]["message"]
    r = await d.call(dev.device_id, "nope", {})
    assert r["error"]["code"] == "METHOD_NOT_FOUND"


async def test_timeout(rig):
    d, dev = rig
    with pytest.raises(RpcTimeoutError):
        await d.call(dev.device_id, "slow", {"s": 0.5}, timeout=0.2)
    assert d.stats.timeouts == 1
    # The late reply is dropped and counted, not crashing anything.
    await _wait(lambda: d.stats.late_replies == 1)
    assert d.stats.unknown_request == 0


async def test_timeout_is_raised_to_the_minimum(mqtt_url):
    async with Dispatcher(_settings(mqtt_url, min_timeout_ms=400)) as d:
        dev = await _device(mqtt_url)
        try:
            await _wait(lambda: d.is_online(dev.device_id))
            t0 = time.monotonic()
            with pytest.raises(RpcTimeoutError):
                await d.call(dev.device_id, "slow", {"s": 3}, timeout=0.05)
            assert time.monotonic() - t0 >= 0.4
            # and a call that needs 0.2 s succeeds despite asking for 0.05 s
            assert await d.call(dev.device_id, "slow", {"s": 0.2, "v": 7}, timeout=0.05) == 7
        finally:
            await dev.close()


async def test_default_timeout_follows_thingsboard():
    s = Settings()
    assert s.default_timeout_ms == 10_000 and s.min_timeout_ms == 5_000


async def test_expiration_time_overrides_timeout(rig):
    d, dev = rig
    t0 = time.monotonic()
    with pytest.raises(RpcTimeoutError):
        await d.call(dev.device_id, "slow", {"s": 5}, timeout=60,
                     expiration_time=int(time.time() * 1000) + 200)
    assert time.monotonic() - t0 < 5


async def test_offline_device_fails_at_once(rig):
    d, _ = rig
    with pytest.raises(DeviceOfflineError):
        await d.call("never-seen", "echo", {})
    with pytest.raises(ValidationError):
        await d.call("bad/id", "echo", {})


async def test_bad_arguments(rig):
    d, dev = rig
    with pytest.raises(ValidationError):
        await d.call(dev.device_id, "", {})
    with pytest.raises(ValidationError):
        await d.call(dev.device_id, "echo", {"x": object()})
    for bad in (-1, float("nan"), float("inf"), "10"):
        with pytest.raises(ValidationError):
            await d.call(dev.device_id, "echo", {}, timeout=bad)


@pytest.mark.parametrize("strategy", list(DeliveryStrategy))
async def test_order_under_each_strategy(mqtt_url, strategy):
    async with Dispatcher(_settings(mqtt_url)) as d:
        dev = await _device(mqtt_url, ack=True)
        seen = []
        running = []
        peak = [0]

        @dev.method("rec")
        async def rec(params):
            running.append(params)
            peak[0] = max(peak[0], len(running))
            seen.append(params)
            await asyncio.sleep(0.01)
            running.remove(params)
            return params

        try:
            await _wait(lambda: d.is_online(dev.device_id))
            d.configure_device(dev.device_id, strategy=strategy)
            results = await asyncio.gather(*(d.call(dev.device_id, "rec", i) for i in range(20)))
            assert results == list(range(20))
            assert seen == list(range(20))  # FIFO
            if strategy == DeliveryStrategy.SEQUENTIAL_ON_RESPONSE:
                assert peak[0] == 1
            if strategy == DeliveryStrategy.BURST:
                assert peak[0] > 1
        finally:
            await dev.close()


async def test_queue_cap(mqtt_url):
    async with Dispatcher(_settings(mqtt_url, queue_cap=3)) as d:
        dev = await _device(mqtt_url)
        try:
            await _wait(lambda: d.is_online(dev.device_id))
            d.configure_device(dev.device_id, strategy=DeliveryStrategy.SEQUENTIAL_ON_RESPONSE)
            calls = [asyncio.ensure_future(d.call(dev.device_id, "slow", {"s": 0.1, "v": i})) for i in range(4)]
            await asyncio.sleep(0)
            with pytest.raises(QueueFullError):
                await d.call(dev.device_id, "echo", {})
            assert await asyncio.gather(*calls) == [0, 1, 2, 3]
            assert d.stats.queue_full == 1
        finally:
            await dev.close()


async def test_stuck_head_times_out_and_unblocks_device(mqtt_url):
    async with Dispatcher(_settings(mqtt_url)) as d:
        dev = await _device(mqtt_url)
        try:
            await _wait(lambda: d.is_online(dev.device_id))
            d.configure_device(dev.device_id, strategy=DeliveryStrategy.SEQUENTIAL_ON_RESPONSE)
            stuck = asyncio.ensure_future(d.call(dev.device_id, "slow", {"s": 30}, timeout=0.3))
            after = asyncio.ensure_future(d.call(dev.device_id, "echo", "next", timeout=5))
            with pytest.raises(RpcTimeoutError):
                await stuck
            assert await after == "next"
        finally:
            await dev.close()


async def test_client_side_rpc(rig):
    d, dev = rig

    @d.handler("getCurrentTime")
    def now(device, params):
        return {"device": device, "t": 1631881236974}

    @d.handler("weather")
    async def weather(device, params):
        await asyncio.sleep(0.01)
        return {"city": params["city"], "rain": False}

    @d.handler("broken")
    def broken(device, params):
        raise ValueError("no forecast")

    assert await dev.call("getCurrentTime") == {"device": dev.device_id, "t": 1631881236974}
    assert await dev.call("weather", {"city": "Hangzhou"}) == {"city": "Hangzhou", "rain": False}
    with pytest.raises(RemoteError, match="METHOD_NOT_FOUND"):
        await dev.call("unknown")
    with pytest.raises(RemoteError, match="no forecast"):
        await dev.call("broken")
    assert d.stats.client_calls == 4 and d.stats.client_errors == 2


async def test_publish_goes_out_on_the_dispatchers_connection(mqtt_url):
    from fleetrpc.transport import MqttTransport

    d = Dispatcher(_settings(mqtt_url))
    with pytest.raises(DispatcherClosedError):
        d.publish("t/before", b"x")  # not started: refused, not queued out of sight
    await d.start()
    seen = []
    watcher = MqttTransport(mqtt_url)
    watcher.on_message = lambda topic, payload, props: seen.append((topic, payload))
    topic = f"t/{_name('pub')}"
    await watcher.start([(f"{topic}/#", 1)])
    try:
        d.publish(f"{topic}/a", b"1")
        d.publish(f"{topic}/b", b"2", qos=0)
        await _wait(lambda: len(seen) == 2)
        assert sorted(seen) == [(f"{topic}/a", b"1"), (f"{topic}/b", b"2")]
    finally:
        await watcher.close()
        await d.close()
    with pytest.raises(DispatcherClosedError):
        d.publish(f"{topic}/after", b"x")


async def test_default_handler_answers_unregistered_methods(rig):
    """``set_default_handler``: every method without a handler reaches it
    (plain or async) with its name; NotImplemented declines, an error is
    the device's error; a registered handler still wins."""
    d, dev = rig
    seen = []

    @d.handler("known")
    def known(device, params):
        return "registered"

    async def fallback(device, method, params):
        seen.append((device, method, params))
        if method == "declined":
            return NotImplemented
        if method == "fails":
            raise RemoteError("no such thing upstream")
        await asyncio.sleep(0)
        return {"method": method, "params": params}

    d.set_default_handler(fallback)
    assert await dev.call("anything", {"x": 1}) == {"method": "anything", "params": {"x": 1}}
    assert await dev.call("known") == "registered"
    with pytest.raises(RemoteError, match="METHOD_NOT_FOUND"):
        await dev.call("declined")
    with pytest.raises(RemoteError, match="APPLICATION_ERROR.*no such thing upstream"):
        await dev.call("fails")
    d.set_default_handler(lambda device, method, params: method.upper())  # a plain one
    assert await dev.call("shout") == "SHOUT"
    d.set_default_handler(None)
    with pytest.raises(RemoteError, match="METHOD_NOT_FOUND"):
        await dev.call("anything")
    assert [m for _, m, _ in seen] == ["anything", "declined", "fails"]
    assert all(device == dev.device_id for device, _, _ in seen)


async def test_presence_from_last_will(rig):
    d, dev = rig
    assert d.is_online(dev.device_id)
    await dev.close(offline=False)  # clean disconnect does not fire the Will ...
    # ... so kill the socket instead, like a device losing power.
    dev2 = await _device(d.settings.mqtt_url)
    await _wait(lambda: d.is_online(dev2.device_id))
    dev2.kill()
    await _wait(lambda: not d.is_online(dev2.device_id), timeout=10)
    with pytest.raises(DeviceOfflineError):
        await d.call(dev2.device_id, "echo", {})


async def test_broadcast(mqtt_url):
    async with Dispatcher(_settings(mqtt_url)) as d:
        fleet = [await _device(mqtt_url) for _ in range(20)]
        try:
            await _wait(lambda: all(d.is_online(x.device_id) for x in fleet))
            names = [x.device_id for x in fleet] + ["ghost"]
            bc = d.broadcast(names, "echo", {"v": 1})
            outcomes = [o async for o in bc]
            assert len(outcomes) == 21
            summary = await bc.wait()
            assert summary.succeeded == 20 and summary.offline == 1 and summary.failed == 1
            assert summary.results[fleet[0].device_id] == {"v": 1}
        finally:
            await asyncio.gather(*(x.close() for x in fleet))


async def test_malformed_unknown_and_foreign_replies_are_rejected(rig, mqtt_url):
    d, dev = rig
    other = await _device(mqtt_url)
    try:
        await _wait(lambda: d.is_online(other.device_id))
        node = d.node  # the wire level: node id and boot id
        p = d.settings.prefix
        # a reply for a request id that is not pending
        other.publish_raw(f"{p}/d/{other.device_id}/res/{node}/999999", b"{}")
        # garbage on our topics
        other.publish_raw(f"{p}/d/{other.device_id}/res/{node}/notanumber", b"{}")
        other.publish_raw(f"{p}/d/{other.device_id}/call/1", b"\xff\xfe not json")
        # a device answering another device's request
        slow = asyncio.ensure_future(d.call(dev.device_id, "slow", {"s": 0.5, "v": "mine"}))
        await asyncio.sleep(0.1)
        (rid,) = [r for r in range(1, 10**6) if d._pending.peek(r) is not None][:1]
        other.publish_raw(f"{p}/d/{other.device_id}/res/{node}/{rid}", b'"forged"')
        await _wait(lambda: d.stats.wrong_device == 1 and d.stats.unknown_request >= 1 and d.stats.malformed >= 2)
        assert await slow == "mine"  # the real reply still wins
        # a reply that is not JSON fails the call with ReplyNotJsonError
        dev.add_method("raw", lambda p: None)
        dev._send_reply = lambda key, topic, props, result: dev._transport.publish(topic, b"not json", 1)
        with pytest.raises(ReplyNotJsonError):
            await d.call(dev.device_id, "raw", {})
        assert await d.call(other.device_id, "echo", 1) == 1  # still serving
    finally:
        await other.close()


@pytest.mark.parametrize("version", [4, 5])
async def test_mqtt311_and_mqtt5_devices(mqtt_url, version):
    async with Dispatcher(_settings(mqtt_url)) as d:
        dev = await _device(mqtt_url, version=version, ack=True)
        try:
            await _wait(lambda: d.is_online(dev.device_id))
            assert await d.call(dev.device_id, "echo", {"v": version}) == {"v": version}
            assert d.stats.acks == 1

            @d.handler("ping")
            def ping(device, params):
                return "pong"

            assert await dev.call("ping") == "pong"
        finally:
            await dev.close()


async def test_close_fails_pending_calls(mqtt_url):
    d = Dispatcher(_settings(mqtt_url))
    await d.start()
    dev = await _device(mqtt_url)
    try:
        await _wait(lambda: d.is_online(dev.device_id))
        pending = asyncio.ensure_future(d.call(dev.device_id, "slow", {"s": 10}))
        await asyncio.sleep(0.05)
        await d.close()
        with pytest.raises(DispatcherClosedError):
            await pending
        with pytest.raises(DispatcherClosedError):
            await d.call(dev.device_id, "echo", {})
    finally:
        await dev.close()


@pytest.mark.parametrize("read_batch_above", [256, 1])  # 1: reading pauses after every read
async def test_broker_restart_mid_run(mqtt_broker, read_batch_above):
    url = mqtt_broker.url
    d = Dispatcher(_settings(url, reconnect_delay=0.2, reconnect_max=0.5, read_batch_above=read_batch_above))
    await d.start()
    dev = await _device(url, reconnect_delay=0.2, reconnect_max=0.5)
    try:
        await _wait(lambda: d.is_online(dev.device_id))
        assert await d.call(dev.device_id, "echo", 1) == 1
        inflight = asyncio.ensure_future(d.call(dev.device_id, "slow", {"s": 0.5, "v": 2}, timeout=1))
        await asyncio.sleep(0.05)
        await mqtt_broker.stop()
        await asyncio.sleep(0.3)
        await mqtt_broker.start()
        # the in-flight call completes or fails cleanly, never hangs
        try:
            assert await inflight == 2
        except RpcTimeoutError:
            pass
        # both sides reconnect and resubscribe: calls work again
        await _wait(lambda: d._transport.connected and dev.connected, timeout=15)
        await _wait(lambda: d.is_online(dev.device_id), timeout=5)
        for _ in range(50):
            try:
                assert await d.call(dev.device_id, "echo", 3, timeout=1) == 3
                break
            except RpcTimeoutError:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError("no call succeeded after the broker restart")
        assert d._transport.reconnects >= 1
        if read_batch_above == 1:
            assert d._transport.batched_reads > 0  # on the new connection too
    finally:
        await dev.close()
        await d.close()


async def test_qos0_calls_and_one_way_confirmed_once_written(mqtt_url):
    async with Dispatcher(_settings(mqtt_url, qos=0)) as d:
        dev = await _device(mqtt_url, qos=0)
        got = []
        dev.add_method("set", lambda p: got.append(p))
        try:
            await _wait(lambda: d.is_online(dev.device_id))
            assert await d.call(dev.device_id, "echo", {"q": 0}) == {"q": 0}
            await asyncio.gather(*(d.call(dev.device_id, "set", i, oneway=True) for i in range(50)))
            await _wait(lambda: len(got) == 50)
            # a burst larger than the early-flush threshold (64 KiB)
            big = "x" * 1024
            await asyncio.gather(*(d.call(dev.device_id, "set", big, oneway=True) for i in range(200)))
            await _wait(lambda: len(got) == 250)
            assert len(d._pending) == 0
        finally:
            await dev.close()


@contextlib.asynccontextmanager
async def _fleet(url: str, n: int, qos: int = 1, **settings):
    """A dispatcher and ``n`` devices, every one seen online."""
    async with Dispatcher(_settings(url, qos=qos, **settings)) as d:
        devs = [await _device(url, qos=qos) for _ in range(n)]
        try:
            await _wait(lambda: all(d.is_online(x.device_id) for x in devs))
            yield d, [x.device_id for x in devs]
        finally:
            await asyncio.gather(*(x.close() for x in devs))


@pytest.mark.parametrize("qos", [0, 1])
async def test_reads_are_batched_only_while_many_replies_are_outstanding(mqtt_url, qos):
    """Read batching engages at ``read_batch_above`` outstanding calls, loses
    and reorders nothing, and never strands a lone reply."""
    async with _fleet(mqtt_url, 4, qos, read_batch_above=50) as (d, names):
        t = d._transport
        for i in range(20):  # one outstanding at a time: never batched
            assert await d.call(names[i % 4], "echo", {"i": i}) == {"i": i}
        assert t.batched_reads == 0
        # The answers come in 40 waves over 200 ms: all 400 in one read (a
        # dispatcher descheduled on a busy machine while the devices answer
        # at once) would rightly need no batching, and failed this check.
        burst = [d.call(names[i % 4], "slow", {"s": 0.005 * (i % 40), "v": i}) for i in range(400)]
        assert await asyncio.gather(*burst) == list(range(400))
        assert t.batched_reads > 0
        before = t.batched_reads
        assert await d.call(names[0], "echo", {"last": 1}) == {"last": 1}
        assert t.batched_reads == before
        assert len(d._pending) == 0


async def test_calls_held_for_offline_devices_do_not_batch_reads(mqtt_url):
    """Only calls sent and awaiting replies count: 300 calls held for an
    offline device (persistent RPC does this) await nothing from the broker."""
    async with _fleet(mqtt_url, 1, read_batch_above=50) as (d, (name,)):
        deadline = asyncio.get_running_loop().time() + 30
        for i in range(300):
            d.submit(f"sleeping-{i % 3}", "echo", {"i": i}, lambda *a: None, deadline=deadline)
        assert len(d._pending) == 300
        for i in range(20):
            assert await d.call(name, "echo", {"i": i}) == {"i": i}
        assert d._transport.batched_reads == 0


async def test_read_batching_can_be_turned_off(mqtt_url):
    async with _fleet(mqtt_url, 1, read_batch_above=0) as (d, (name,)):
        calls = [d.call(name, "echo", {"i": i}) for i in range(300)]
        assert await asyncio.gather(*calls) == [{"i": i} for i in range(300)]
        assert d._transport.batched_reads == 0


@pytest.mark.parametrize("kw", [{"read_batch_above": -1}, {"read_batch_ms": 0}, {"read_batch_ms": 5000}])
def test_read_batching_settings_are_checked(kw):
    with pytest.raises(ValidationError, match="read_batch"):
        Settings(**kw)


@pytest.mark.parametrize("kw", [{"read_batch_above": -1}, {"read_batch_delay": 0}])
def test_read_batching_transport_arguments_are_checked(kw):
    from fleetrpc.transport.mqtt import MqttTransport

    with pytest.raises(ValidationError, match="read_batch"):
        MqttTransport("mqtt://127.0.0.1:1883", **kw)


async def test_call_is_submitted_at_once_and_refusals_raise_at_the_await(rig):
    d, dev = rig
    fut = d.call(dev.device_id, "slow", {"s": 0.1, "v": "eager"})
    # Pending (and published) before anything awaited it.
    assert len(d._pending) == 1 and d.stats.sent == 1
    assert await fut == "eager"
    refused = d.call("nobody-here", "echo", {})  # offline, FAIL: refused...
    bad = d.call(dev.device_id, "echo", {}, timeout=float("nan"))
    with pytest.raises(DeviceOfflineError):  # ...but raised at the await
        await refused
    with pytest.raises(ValidationError):
        await bad
    # gather(return_exceptions=True) sees a refusal as an outcome, as before.
    out = await asyncio.gather(d.call("nobody-here", "echo"), d.call(dev.device_id, "echo", 5),
                               return_exceptions=True)
    assert isinstance(out[0], DeviceOfflineError) and out[1] == 5
    assert len(d._pending) == 0


async def test_a_cancelled_call_leaves_nothing_pending(rig):
    d, dev = rig
    loop = asyncio.get_running_loop()

    async def user():
        return await d.call(dev.device_id, "slow", {"s": 30})

    tasks = [loop.create_task(user()) for _ in range(3)]
    tasks.append(loop.create_task(d.call(dev.device_id, "slow", {"s": 30})))
    futs = [d.call(dev.device_id, "slow", {"s": 30}) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert len(d._pending) == 6 and d._inflight == 6
    for t in tasks:
        t.cancel()
    futs[0].cancel()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(futs[1], 0.05)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await d.call(dev.device_id, "slow", {"s": 30})
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert all(f.cancelled() for f in futs)
    # Every entry and every in-flight slot is given back: calls go on.
    assert len(d._pending) == 0 and d._inflight == 0
    assert await d.call(dev.device_id, "echo", "after") == "after"
