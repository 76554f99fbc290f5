"""The in-process hub: a dispatcher and devices without a network, the
transport interface, and the dispatcher's promise that an observer never
runs inside submit()."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleetrpc import DeviceClient, Dispatcher, MemoryHub, PersistentRpc, Settings, open_store
from fleetrpc.dispatch import CallObserver
from fleetrpc.errors import DeviceOfflineError, ValidationError
from fleetrpc.transport.base import DeviceTransport, Transport
from fleetrpc.transport.memory import MemoryTransport
from fleetrpc.transport.mqtt import MqttTransport
from tests.helpers.waiting import wait_until


def _settings(**kw: Any) -> Settings:
    kw.setdefault("min_timeout_ms", 0)
    kw.setdefault("node_id", "mem")
    return Settings(**kw)


async def _device(hub: MemoryHub, name: str = "pump-7") -> DeviceClient:
    dev = DeviceClient(name, hub)
    dev.add_method("echo", lambda params: params)
    await dev.connect()
    return dev


def test_both_transports_implement_the_interface():
    hub = MemoryHub()
    assert isinstance(hub.transport("x"), DeviceTransport)
    assert isinstance(MqttTransport("mqtt://127.0.0.1:1"), DeviceTransport)
    assert isinstance(hub.transport("x"), Transport)


async def test_the_transport_may_be_made_from_the_new_dispatcher():
    """A transport factory gets the dispatcher, with its wire level and
    settings, and what it returns is the dispatcher's transport."""
    hub = MemoryHub()
    seen = []

    def make(d: Dispatcher) -> MemoryTransport:
        seen.append((d.node, d.settings.node_id))
        return hub.transport(f"server-{d.node}")

    dev = await _device(hub)
    async with Dispatcher(_settings(), transport=make) as d:
        assert seen == [(d.node, "mem")] and d.node.startswith("mem.")
        await wait_until(lambda: d.is_online("pump-7"))
        assert await d.call("pump-7", "echo", [1]) == [1]
    assert isinstance(Dispatcher(_settings()).mqtt_transport(), MqttTransport)
    await dev.close()


async def test_call_and_client_side_call_without_a_network():
    hub = MemoryHub()
    dev = await _device(hub)  # before the dispatcher: its retained presence tells
    async with Dispatcher(_settings(), transport=hub.transport("server")) as d:
        await wait_until(lambda: d.is_online("pump-7"))
        assert await d.call("pump-7", "echo", {"a": 1}) == {"a": 1}
        d.add_handler("time", lambda device, params: [device, 42])
        assert await dev.call("time") == ["pump-7", 42]
        bc = d.broadcast(["pump-7", "ghost"], "echo", 5)
        summary = await bc.wait()
        assert summary.succeeded == 1 and summary.offline == 1
    await dev.close()


async def test_last_will_on_vanishing_not_on_close():
    hub = MemoryHub()
    async with Dispatcher(_settings(), transport=hub.transport("server")) as d:
        dev = await _device(hub)
        await wait_until(lambda: d.is_online("pump-7"))
        dev.kill()  # vanishes: the hub publishes its Last Will
        await wait_until(lambda: not d.is_online("pump-7"))
        with pytest.raises(DeviceOfflineError):
            await d.call("pump-7", "echo", 1)
        assert hub.retained["fleetrpc/d/pump-7/presence"] == b'{"status":"offline"}'


async def test_shared_subscription_hands_each_call_to_one_node():
    hub = MemoryHub()
    s1 = _settings(node_id="a", share_group="g")
    s2 = _settings(node_id="b", share_group="g")
    async with Dispatcher(s1, transport=hub.transport("a")) as a, Dispatcher(s2, transport=hub.transport("b")) as b:
        for d in (a, b):
            d.add_handler("who", lambda device, params, d=d: d.node_id)
        dev = await _device(hub)
        answers = [await dev.call("who") for _ in range(6)]
        assert sorted(set(answers)) == ["a", "b"]
        assert a.stats.client_calls + b.stats.client_calls == 6
        await dev.close()


class _Recorder(CallObserver):
    def __init__(self) -> None:
        self.inside_submit = False
        self.events: list[str] = []

    def sent(self, rid: int, device: str) -> None:
        self.events.append("sent" + ("-inside" if self.inside_submit else ""))

    def acked(self, rid: int, device: str) -> bool:
        self.events.append("acked")
        return False

    def __call__(self, rid, device, result, error) -> None:
        self.events.append(f"done:{result}")


async def test_observer_never_runs_inside_submit_and_hears_sent_first():
    hub = MemoryHub()
    dev = await _device(hub)
    async with Dispatcher(_settings(), transport=hub.transport("server")) as d:
        await wait_until(lambda: d.is_online("pump-7"))
        obs = _Recorder()
        loop = asyncio.get_running_loop()
        obs.inside_submit = True
        d.submit("pump-7", "echo", "x", obs, deadline=loop.time() + 5, attempt_timeout=1.0)
        obs.inside_submit = False
        await wait_until(lambda: obs.events and obs.events[-1].startswith("done"))
        assert obs.events == ["sent", "acked", "done:x"]
    await dev.close()


async def test_the_dispatcher_arms_each_attempt_deadline():
    hub = MemoryHub()
    dev = DeviceClient("mute", hub)
    dev.add_method("hang", lambda params: asyncio.sleep(30))
    await dev.connect()
    async with Dispatcher(_settings(), transport=hub.transport("server")) as d:
        await wait_until(lambda: d.is_online("mute"))
        obs = _Recorder()
        loop = asyncio.get_running_loop()
        start = loop.time()
        d.submit("mute", "hang", None, obs, deadline=start + 60, attempt_timeout=0.2)
        await wait_until(lambda: any(e.startswith("done") for e in obs.events))
        assert d.stats.timeouts == 1  # the attempt's deadline, not the call's 60 s
        with pytest.raises(ValidationError):
            d.submit("mute", "hang", None, obs, deadline=start + 60, attempt_timeout=float("nan"))
    dev.kill()


async def test_persistent_engine_refuses_an_oversize_call_before_storing(tmp_path):
    hub = MemoryHub()
    store = await open_store(f"sqlite:///{tmp_path}/rpc.db")
    async with Dispatcher(_settings(max_payload=1000), transport=hub.transport("server")) as d:
        engine = PersistentRpc(d, store)
        await engine.start()
        with pytest.raises(ValidationError, match="over the limit of 1000"):
            await engine.call("pump-7", "echo", "z" * 2000)
        assert engine.stats.queued == 0
        assert await store.load_unfinished() == []
        await engine.close()
    await store.close()
