"""Several nodes, each with its own device endpoint, on one Mosquitto: a
device connected directly to one node is reached from every node
(CompositeTransport with ``node``), and its presence on the broker stays
right when it moves between nodes or a node dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from fleetrpc import Dispatcher, Settings
from fleetrpc.errors import DeviceOfflineError
from fleetrpc.transport.endpoint import CompositeTransport, DeviceEndpoint, EndpointSettings

from . import rawmqtt as raw
from .conftest import Rig, authenticate


@contextlib.asynccontextmanager
async def node(mqtt_url: str, prefix: str, node_id: str, *, endpoint: bool = True, follow: bool = True,
               auth=authenticate, **endpoint_settings):
    """A dispatcher on the broker, with an endpoint sharing its devices;
    ``endpoint=False``: without one, following the others as ``fleetrpc
    serve`` does; ``follow=False`` too: a plain dispatcher, as embedded."""
    settings = Settings(node_id=node_id, prefix=prefix, mqtt_url=mqtt_url, min_timeout_ms=0,
                        default_timeout_ms=5000)
    transport = None
    if endpoint:
        opts = {"host": "127.0.0.1", "port": 0, "prefix": prefix, **endpoint_settings}
        ep = DeviceEndpoint(EndpointSettings(**opts), authenticate=auth)
        transport = lambda d: CompositeTransport(ep, d.mqtt_transport(), node=d.node)  # noqa: E731
    elif follow:
        transport = lambda d: CompositeTransport(None, d.mqtt_transport(), node=d.node, prefix=prefix)  # noqa: E731
    d = Dispatcher(settings, transport=transport)
    await d.start()
    try:
        # the composite hands the broker's retained presence over before start returns
        assert (d.stats.presence_synced, d.stats.presence_sync_timeouts) == (1, 0)
        yield Rig(d._transport.endpoint if endpoint else _NoEndpoint(), d)
    finally:
        await d.close()


class _NoEndpoint:
    """What Rig reads of an endpoint, for a node that has none."""

    ports: dict = {}


class ThingsBoardDevice:
    """A device speaking ThingsBoard's MQTT API to one endpoint, answering
    every request with ``{"at": name, "method": ...}``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self._client: raw.RawClient | None = None
        self._task: asyncio.Task | None = None

    async def connect(self, port: int, token: str = "token-a") -> None:
        self._client = client = await raw.RawClient.open(port)
        first, body = await client.connect(token)
        assert first >> 4 == 2 and body[1] == 0, "CONNACK refused"
        client.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1)))
        first, _ = await client.read_packet()
        assert first >> 4 == 9  # SUBACK
        self._task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        client = self._client
        while True:
            try:
                first, body = await client.read_packet(timeout=60)
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the node closed the connection
            if first >> 4 != 3:
                continue
            topic, payload, mid = raw.publish_topic(body, (first >> 1) & 3, False)
            if mid:
                client.send(raw.puback(mid))
            self.requests += 1
            n = topic.rsplit("/", 1)[1]
            answer = {"at": self.name, "method": json.loads(payload)["method"]}
            client.send(raw.publish(f"v1/devices/me/rpc/response/{n}", json.dumps(answer).encode(), 1, 7))

    def drop(self) -> None:
        """Close the connection without DISCONNECT."""
        self._task.cancel()
        self._client.close()


@pytest.fixture
def prefix() -> str:
    return f"nodes{uuid.uuid4().hex[:8]}"


async def test_a_device_connected_to_one_node_answers_calls_from_every_node(mqtt_url, prefix):
    async with node(mqtt_url, prefix, "na") as a, node(mqtt_url, prefix, "nb") as b, \
            node(mqtt_url, prefix, "nc", endpoint=False) as c:
        device = ThingsBoardDevice("at-b")
        await device.connect(b.port)
        for rig in (a, b, c):
            await rig.online("dev-a")
        for rig in (a, b, c):
            assert await rig.dispatcher.call("dev-a", "where") == {"at": "at-b", "method": "where"}
        # one-way calls from another node end at the broker, as for any device there
        await a.dispatcher.call("dev-a", "note", oneway=True)
        await _until(lambda: device.requests == 4)
        # the node that has the device reaches it directly; the others through the broker
        assert b.endpoint.stats.requests == 4
        assert a.endpoint.stats.requests == 0 and a.endpoint.stats.undeliverable == 0

        device.drop()
        for rig in (a, b, c):
            await rig.offline("dev-a")
        with pytest.raises(DeviceOfflineError):
            await a.dispatcher.call("dev-a", "where")


async def test_a_device_moving_to_another_node_stays_online_and_its_old_session_ending_changes_nothing(
        mqtt_url, prefix):
    async with node(mqtt_url, prefix, "na") as a, node(mqtt_url, prefix, "nb") as b:
        went_offline: list[str] = []
        a.dispatcher.on_presence(lambda dev, online: online or went_offline.append(dev))
        # the device comes back at node a, while b has not noticed that its
        # connection is gone (a half-open connection: b closes it at its keepalive)
        old, new = await _at_b_then_at_a(a, b)
        assert await b.dispatcher.call("dev-a", "where") == {"at": "at-b", "method": "where"}  # b's own, still
        assert await a.dispatcher.call("dev-a", "where") == {"at": "at-a", "method": "where"}
        old.drop()
        await _until(lambda: not b.endpoint.reaches("dev-a"))
        # b now reaches the device through the broker, at a
        assert await b.dispatcher.call("dev-a", "where") == {"at": "at-a", "method": "where"}
        assert b.dispatcher.is_online("dev-a") and went_offline == []
        # the broker's retained presence says online: a node starting now sees it
        async with node(mqtt_url, prefix, "nc", endpoint=False) as c:
            await c.online("dev-a")
            assert await c.dispatcher.call("dev-a", "where") == {"at": "at-a", "method": "where"}
        new.drop()
        await b.offline("dev-a")


async def test_a_device_connected_to_two_nodes_at_once_stays_online_while_either_has_it(mqtt_url, prefix):
    async with node(mqtt_url, prefix, "na") as a, node(mqtt_url, prefix, "nb") as b:
        at_b, at_a = await _at_b_then_at_a(a, b)
        await asyncio.sleep(0.2)  # a's "online" is the broker's newest word
        # a's session goes: a says "offline", b still has the device and says "online" again
        at_a.drop()
        await _until(lambda: not a.endpoint.reaches("dev-a"))
        await a.online("dev-a")
        assert await a.dispatcher.call("dev-a", "where") == {"at": "at-b", "method": "where"}
        async with node(mqtt_url, prefix, "nc", endpoint=False) as c:
            await c.online("dev-a")
        at_b.drop()
        await a.offline("dev-a")


async def test_a_node_lost_without_a_word_leaves_none_of_its_devices_online(mqtt_url, prefix, caplog):
    """Node b's broker connection ends without DISCONNECT while its device
    is still connected to it (its process hung, its machine or its network
    lost): the broker publishes b's Will, the other nodes say "offline" for
    b's devices, and a node that starts afterwards sees them offline."""
    async with node(mqtt_url, prefix, "na") as a, node(mqtt_url, prefix, "nc", endpoint=False) as c, \
            node(mqtt_url, prefix, "ne", endpoint=False, follow=False) as e:
        async with node(mqtt_url, prefix, "nb") as b:
            device = ThingsBoardDevice("at-b")
            await device.connect(b.port)
            for rig in (a, c, e):
                await rig.online("dev-a")
            b.dispatcher._transport.broker.abort()
            for rig in (a, c, e):  # e, which does not follow Wills, from a's or c's word on the broker
                await rig.offline("dev-a")
            assert f"node {b.dispatcher.node} is gone without a word (its Last Will): 1 of its devices" in caplog.text
            with pytest.raises(DeviceOfflineError):
                await a.dispatcher.call("dev-a", "where")
            async with node(mqtt_url, prefix, "nd") as late:
                await asyncio.sleep(0.2)
                assert not late.dispatcher.is_online("dev-a")
                # b's Will has been acted on and cleared: the broker keeps nothing of that run
                assert late.dispatcher._transport._ended == {}
            # the device finds out and connects to a: online everywhere again
            device.drop()
            device = ThingsBoardDevice("at-a")
            await device.connect(a.port)
            await c.online("dev-a")
            await e.online("dev-a")
            assert await c.dispatcher.call("dev-a", "where") == {"at": "at-a", "method": "where"}
            device.drop()


async def test_the_only_node_with_an_endpoint_lost_leaves_none_of_its_devices_online(mqtt_url, prefix):
    """A fleet with one endpoint node and one without (the REST API's, say):
    the endpoint node is lost, and the other, which follows the nodes' Wills,
    sees its devices offline, and says so on the broker for every node that
    starts later."""
    async with node(mqtt_url, prefix, "nc", endpoint=False) as c:
        async with node(mqtt_url, prefix, "nb") as b:
            device = ThingsBoardDevice("at-b")
            await device.connect(b.port)
            await c.online("dev-a")
            b.dispatcher._transport.broker.abort()
            await c.offline("dev-a")
            with pytest.raises(DeviceOfflineError):
                await c.dispatcher.call("dev-a", "where")
            async with node(mqtt_url, prefix, "ne", endpoint=False, follow=False) as e:
                await asyncio.sleep(0.2)
                assert not e.dispatcher.is_online("dev-a")
            async with node(mqtt_url, prefix, "nd") as d:
                await asyncio.sleep(0.2)
                assert d.dispatcher._transport._ended == {}  # cleared by c
            device.drop()


async def test_a_node_starting_after_a_lost_node_clears_what_it_left(mqtt_url, prefix):
    """No node that follows the nodes' Wills was running when b was lost
    (only a plain dispatcher, which reads presence and nothing more): the
    next such node to start finds b's Will and b's devices "online" via b,
    both retained, and says "offline" for them."""
    async with node(mqtt_url, prefix, "ne", endpoint=False, follow=False) as e:
        async with node(mqtt_url, prefix, "nb") as b:
            device = ThingsBoardDevice("at-b")
            await device.connect(b.port)
            await e.online("dev-a")
            b.dispatcher._transport.broker.abort()
            await asyncio.sleep(0.2)
            assert e.dispatcher.is_online("dev-a")  # nobody has said otherwise yet
            async with node(mqtt_url, prefix, "nc", endpoint=False):
                await e.offline("dev-a")
            async with node(mqtt_url, prefix, "nd") as d:
                await asyncio.sleep(0.2)
                assert d.dispatcher._transport._ended == {}  # cleared by c
            device.drop()


async def test_a_node_that_tracks_no_presence_leaves_the_wills_to_the_others(mqtt_url, prefix):
    """A node without presence cannot tell which devices a Will leaves: it
    does not subscribe to the Wills, so it cannot clear one before a node
    that can act on it has seen it."""
    async with node(mqtt_url, prefix, "nb") as b:
        device = ThingsBoardDevice("at-b")
        await device.connect(b.port)
        b.dispatcher._transport.broker.abort()
        settings = Settings(node_id="nf", prefix=prefix, mqtt_url=mqtt_url, presence=False)
        blind = Dispatcher(settings, transport=lambda d: CompositeTransport(
            None, d.mqtt_transport(), node=d.node, prefix=prefix))
        await blind.start()
        try:
            await asyncio.sleep(0.2)
            assert blind._transport._ended == {}
        finally:
            await blind.close()
        # the Will is still there for the next node that can act on it
        async with node(mqtt_url, prefix, "nc", endpoint=False) as c:
            await asyncio.sleep(0.3)
            assert not c.dispatcher.is_online("dev-a")
        device.drop()


async def test_a_node_restarted_clears_the_presence_its_earlier_run_left(mqtt_url, prefix):
    """An "online" via an earlier run of a node, which left no Will (it was
    killed while the broker was down, and the broker kept its retained
    messages): the node, restarted, says "offline" for it, unless the device
    is connected to it again."""
    topic = f"{prefix}/d/dev-a/presence"
    stale = json.dumps({"status": "online", "via": "nb.0000000000000000000"}).encode()
    async with node(mqtt_url, prefix, "na") as a:
        a.dispatcher._transport.broker.publish(topic, stale, 1, retain=True)
        await a.online("dev-a")
        async with node(mqtt_url, prefix, "nb") as b:
            await a.offline("dev-a")
            assert not b.dispatcher.is_online("dev-a")
        a.dispatcher._transport.broker.publish(topic, stale, 1, retain=True)
        await a.online("dev-a")
        async with node(mqtt_url, prefix, "nb") as b:
            device = ThingsBoardDevice("at-b")
            await device.connect(b.port)
            await b.online("dev-a")
            await asyncio.sleep(0.3)  # the earlier run's "online" has come and gone
            assert a.dispatcher.is_online("dev-a") and b.dispatcher.is_online("dev-a")
            assert await a.dispatcher.call("dev-a", "where") == {"at": "at-b", "method": "where"}
            device.drop()


async def test_a_will_that_lands_after_its_node_reconnected_is_cleared_and_the_devices_come_back(
        mqtt_url, prefix):
    async with node(mqtt_url, prefix, "na") as a, node(mqtt_url, prefix, "nb") as b:
        device = ThingsBoardDevice("at-b")
        await device.connect(b.port)
        await a.online("dev-a")
        will = json.dumps({"status": "offline", "node": b.dispatcher.node}).encode()
        a.dispatcher._transport.broker.publish(f"{prefix}/n/nb/presence", will, 1, retain=True)
        await a.offline("dev-a")  # a believes the Will ...
        await a.online("dev-a")  # ... until b, still there, says otherwise
        assert await a.dispatcher.call("dev-a", "where") == {"at": "at-b", "method": "where"}
        # and the Will is gone from the broker: a node starting now does not act on it
        async with node(mqtt_url, prefix, "nc") as c:
            await c.online("dev-a")
            await asyncio.sleep(0.2)
            assert "nb" not in c.dispatcher._transport._ended and c.dispatcher.is_online("dev-a")
        device.drop()


async def test_a_node_stopping_says_its_devices_are_offline(mqtt_url, prefix):
    async with node(mqtt_url, prefix, "na", endpoint=False) as a:
        async with node(mqtt_url, prefix, "nb") as b:
            devices = []
            for token in ("token-a", "token-b"):
                device = ThingsBoardDevice(token)
                await device.connect(b.port, token)
                devices.append(device)
            await a.online("dev-a")
            await a.online("dev-b")
        await a.offline("dev-a")
        await a.offline("dev-b")
        for device in devices:
            device.drop()


async def test_subscriptions_follow_the_devices_and_survive_a_broker_reconnect(mqtt_url, prefix):
    async with node(mqtt_url, prefix, "na") as a, node(mqtt_url, prefix, "nb") as b:
        broker = b.dispatcher._transport.broker
        before = len(broker._client.subscriptions)
        device = ThingsBoardDevice("at-b")
        await device.connect(b.port)
        await a.online("dev-a")
        assert len(broker._client.subscriptions) == before + 1
        # the broker connection drops and comes back: the device's
        # subscription is made again
        broker._proto.socket.abort()
        await _until(lambda: broker.reconnects == 1 and broker.connected)
        await asyncio.sleep(0.2)
        assert await a.dispatcher.call("dev-a", "where") == {"at": "at-b", "method": "where"}
        # a broker restarted without persistence forgets the retained
        # presence (here: cleared by hand); b says it again when it reconnects
        topic = f"{prefix}/d/dev-a/presence"
        a.dispatcher._transport.broker.publish(topic, b"", 1, retain=True)
        await asyncio.sleep(0.2)
        broker._proto.socket.abort()
        await _until(lambda: broker.reconnects == 2 and broker.connected)
        async with node(mqtt_url, prefix, "nc", endpoint=False) as c:
            await c.online("dev-a")
        device.drop()
        await a.offline("dev-a")
        await _until(lambda: len(broker._client.subscriptions) == before)


async def test_nodes_sharing_one_port_each_take_some_devices_and_reach_them_all(mqtt_url, prefix):
    """``reuse_port``: several nodes on one machine listen on one port, the
    kernel spreads the connections, and every node reaches every device."""
    def by_token(username, password, client_id):
        return username  # the token is the device id

    async with node(mqtt_url, prefix, "na", auth=by_token, reuse_port=True) as a:
        port = a.endpoint.ports["tcp"]
        async with node(mqtt_url, prefix, "nb", auth=by_token, port=port, reuse_port=True) as b:
            assert b.endpoint.ports["tcp"] == port
            devices = [ThingsBoardDevice(f"d{i}") for i in range(30)]
            for i, device in enumerate(devices):
                await device.connect(port, f"dev-{i}")
            for i in range(30):
                await a.online(f"dev-{i}")
                await b.online(f"dev-{i}")
            on_a, on_b = len(a.endpoint.connected_devices), len(b.endpoint.connected_devices)
            assert on_a + on_b == 30 and on_a and on_b, (on_a, on_b)
            for rig in (a, b):
                answers = await asyncio.gather(*(rig.dispatcher.call(f"dev-{i}", "who") for i in range(30)))
                assert [x["at"] for x in answers] == [f"d{i}" for i in range(30)]
            for device in devices:
                device.drop()


async def _at_b_then_at_a(a: Rig, b: Rig) -> tuple[ThingsBoardDevice, ThingsBoardDevice]:
    """dev-a connects to node b, then to node a too (a second session)."""
    at_b = ThingsBoardDevice("at-b")
    await at_b.connect(b.port)
    await a.online("dev-a")
    at_a = ThingsBoardDevice("at-a")
    await at_a.connect(a.port)
    await _until(lambda: a.endpoint.reaches("dev-a"))
    return at_b, at_a


async def _until(predicate, timeout: float = 10.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


# -- any sequence of moves, kills and restarts -------------------------------------

NODES = ("na", "nb", "nc")
MOVES = st.lists(st.tuples(st.sampled_from(("connect", "drop", "kill", "restart", "lose")), st.sampled_from(NODES)),
                 min_size=1, max_size=8)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(MOVES)
# one for each rule of CompositeTransport's presence (each fails without it):
@example([("connect", "nb"), ("kill", "nb")])  # a restarted node clears its killed run's "online"
@example([("connect", "nb"), ("connect", "na"), ("drop", "na")])  # "offline" from elsewhere: say "online" again
@example([("connect", "nb"), ("connect", "na"), ("drop", "nb"), ("drop", "na")])  # our own echo: ours is newest
@example([("connect", "nb"), ("restart", "nb")])  # a clean restart (test_a_node_stopping_... checks the stop alone)
@example([("connect", "nb"), ("lose", "nb")])  # a lost node's Will: its devices are offline
@example([("connect", "nb"), ("lose", "na"), ("lose", "nc"), ("lose", "nb")])  # the node without an endpoint clears them
def test_every_node_agrees_with_the_truth_after_any_moves(mqtt_url, moves):
    """dev-a connects to and drops from three nodes' endpoints, and nodes are
    killed (restarted at once, as a supervisor does), restarted cleanly or
    lost (cut off from the broker without a word, the device's connection
    to it left open), in any order: afterwards every node that is not lost,
    and nodes that start only then, see dev-a online exactly when one of its
    sessions to such a node is open, and a call from any of them reaches it
    then."""
    asyncio.run(_moves(mqtt_url, f"moves{uuid.uuid4().hex[:8]}", moves))


async def _moves(mqtt_url: str, prefix: str, moves: list[tuple[str, str]]) -> None:
    stacks: dict[str, contextlib.AsyncExitStack] = {}
    rigs: dict[str, Rig] = {}
    sessions: dict[str, ThingsBoardDevice] = {}
    lost: set[str] = set()  # nodes cut off from the broker (not in rigs)

    async def start(name: str) -> None:
        stacks[name] = stack = contextlib.AsyncExitStack()
        rigs[name] = await stack.enter_async_context(node(mqtt_url, prefix, name))

    async def stop(name: str, kill: bool) -> None:
        rig = rigs.pop(name, None) or stacks[name].lost_rig
        if kill:  # nothing more reaches the broker, the device's connection is reset
            rig.dispatcher._transport.broker.abort()
        await stacks.pop(name).aclose()
        lost.discard(name)
        device = sessions.pop(name, None)
        if device is not None:
            device.drop()

    def lose(name: str) -> None:
        rig = stacks[name].lost_rig = rigs.pop(name)
        rig.dispatcher._transport.broker.abort()
        lost.add(name)

    async def agreed() -> None:
        # each endpoint has seen its own session come or go (a dropped
        # connection takes it a moment), then the views must converge
        await _until(lambda: all(rigs[n].endpoint.reaches("dev-a") == (n in sessions) for n in NODES if n in rigs))
        truth = bool(set(sessions) - lost)
        views = lambda: {name: r.dispatcher.is_online("dev-a") for name, r in rigs.items()}  # noqa: E731
        agree = lambda: all(view == truth for view in views().values())  # noqa: E731
        with contextlib.suppress(TimeoutError):
            await _until(agree)
        await asyncio.sleep(0.05)  # and it stays so: no late message turns a node's view
        assert agree(), (moves, truth, views())

    for name in NODES:
        await start(name)
    # a node without an endpoint, following the others, throughout
    watch = stacks["watch"] = contextlib.AsyncExitStack()
    rigs["watch"] = await watch.enter_async_context(node(mqtt_url, prefix, "watch", endpoint=False))
    try:
        for move, name in moves:
            if move == "connect" and name not in sessions and name not in lost:
                sessions[name] = device = ThingsBoardDevice(name)
                await device.connect(rigs[name].port)
            elif move == "drop" and name in sessions:
                sessions.pop(name).drop()
            elif move in ("kill", "restart"):
                await stop(name, kill=move == "kill")
                await start(name)
            elif move == "lose" and name not in lost:
                lose(name)
            await agreed()
        # a node that shares devices, then a plain dispatcher that only reads the broker
        async with node(mqtt_url, prefix, "late") as late, \
                node(mqtt_url, prefix, "later", endpoint=False, follow=False) as later:
            rigs["late"], rigs["later"] = late, later
            await agreed()
            if set(sessions) - lost:
                for rig in rigs.values():
                    assert (await rig.dispatcher.call("dev-a", "where"))["at"] in set(sessions) - lost
    finally:
        rigs.pop("late", None)
        rigs.pop("later", None)
        for name in list(stacks):
            await stop(name, kill=False)


# -- whatever arrives from the broker or the endpoint ---------------------------------

class _Broker:
    """Records what the composite publishes and subscribes to."""

    def __init__(self) -> None:
        self.published: list[tuple] = []
        self.subscriptions: set[str] = set()

    def publish(self, topic, payload, qos=1, retain=False, token=-1, properties=None) -> None:
        self.published.append((topic, payload, qos, retain))

    def subscribe(self, filters) -> None:
        self.subscriptions.update(f for f, _ in filters)

    def unsubscribe(self, topics) -> None:
        self.subscriptions.difference_update(topics)


_LEVEL = st.sampled_from(["dev-a", "dev-b", "+", "#", "", "na.1", "nb.2", "x" * 300, "\u00e9", "1"])
_TOPIC = st.one_of(
    st.builds(lambda *levels: "/".join(levels), st.just("fleetrpc"), st.just("d"), _LEVEL,
              st.sampled_from(["presence", "req", "res", "ack", "call", "ret", "hb", ""]), _LEVEL, _LEVEL),
    st.builds(lambda *levels: "/".join(levels), st.just("fleetrpc"), st.just("d"), _LEVEL, st.just("presence")),
    st.builds(lambda node_id: f"fleetrpc/n/{node_id}/presence", st.sampled_from(["na", "nb", "", "+", "x/y"])),
    st.text(max_size=40),
)
_PAYLOAD = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda status, via: json.dumps({"status": status, "via": via}).encode(),
              st.sampled_from(["online", "offline", "gone", 7]),
              st.one_of(st.none(), st.sampled_from(["na.1", "na.0", "nb.2", "", 5]))),
    st.builds(lambda status, run: json.dumps({"status": status, "node": run}).encode(),
              st.sampled_from(["online", "offline", "gone"]), st.sampled_from(["na.1", "na.0", "nb.2", "nb", "", 5])),
    st.just(b""),
)
_PROPS = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "response_topic": st.lists(st.text(max_size=20), max_size=2),
    "correlation_data": st.lists(st.binary(max_size=8), max_size=2)}))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), _TOPIC, _PAYLOAD, _PROPS), max_size=12))
def test_nothing_that_arrives_breaks_the_composite(messages):
    """Any topic, payload and properties, from the broker or from the
    endpoint, in any order: no exception, and the composite publishes only
    presence and the replies and acks of devices."""
    async def run() -> None:
        ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0), authenticate=authenticate)
        broker = _Broker()
        composite = CompositeTransport(ep, broker, node="na.1", max_brokered=2)
        composite.on_message = lambda topic, payload, props: None
        for from_broker, topic, payload, props in messages:
            if from_broker:
                composite._from_broker(topic, payload, props)
            elif topic.startswith(ep._dev_prefix):  # the endpoint delivers its devices' topics only
                composite._from_endpoint(topic, payload, None)
        await asyncio.sleep(0)  # the subscription batch
        for topic, _, _, retain in broker.published:
            kind = topic.split("/")[3] if topic.count("/") >= 3 else ""
            assert kind in ("presence", "res", "ack"), topic
            assert retain == (kind == "presence"), topic
        assert all(f.endswith("/req/+/+") for f in broker.subscriptions)
        assert len(composite._brokered) <= 2

    asyncio.run(run())


def test_the_devices_online_on_the_broker_that_a_node_follows_are_bounded(caplog):
    """Presence for ids made up on a broker without ACLs: a node keeps at
    most ``max_brokered`` words, the least recently heard of leaving first,
    and what it keeps still works (a device held online by another node is
    not said "offline" when it leaves this node)."""
    async def run() -> None:
        ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0), authenticate=authenticate)
        broker = _Broker()
        composite = CompositeTransport(ep, broker, node="na.1", max_brokered=3)
        seen = []
        composite.on_message = lambda topic, payload, props: seen.append(topic)
        online = json.dumps({"status": "online", "via": "nb.2"}).encode()
        for i in range(10):
            composite._from_broker(f"fleetrpc/d/made-up-{i}/presence", online, None)
        # the device moved from nb.2 to here and its old connection here closed late
        composite._from_broker("fleetrpc/d/dev-a/presence", online, None)
        assert list(composite._brokered) == ["made-up-8", "made-up-9", "dev-a"]
        assert composite.brokered_evicted == 8
        assert sum("forgotten here" in r.getMessage() for r in caplog.records) == 1  # once a minute
        composite._from_endpoint("fleetrpc/d/dev-a/presence", json.dumps({"status": "online"}).encode(), None)
        composite._from_endpoint("fleetrpc/d/dev-a/presence", json.dumps({"status": "offline"}).encode(), None)
        said = [json.loads(p)["status"] for t, p, _, _ in broker.published if t == "fleetrpc/d/dev-a/presence"]
        assert "offline" not in said  # nb.2's "online" is the newest word: this node says nothing
        await asyncio.sleep(0)

    asyncio.run(run())
    with pytest.raises(ValueError):
        CompositeTransport(None, _Broker(), node="na.1", prefix="fleetrpc", max_brokered=0)
