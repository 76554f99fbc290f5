"""One dispatcher, two ways to its devices: connected directly to the
device endpoint, or through the MQTT broker.

Which wins when both know a device id: **the direct connection**.  A
request goes to the endpoint while a session of that device (or its
gateway) has subscribed to its RPC topic there; otherwise to the broker.
Answers to client-side calls go back the way the call came.  The device is
online while it is online on either path: an "offline" from one path is
held back while the other still reaches it, so a device that moves from the
broker to a direct connection (or back) never looks offline in between.

**Several nodes** (``node`` given: the dispatcher's wire level).  A device
is connected to one node's endpoint, and a call for it may start on any
node (a REST call, the persistent engine of its partition's owner, a job).
So the node stands in for its directly connected devices on the broker, as
each would if it were connected there (docs/protocol.md):

- it publishes the device's retained presence, with ``"via": node``, and
  subscribes to ``{p}/d/{device}/req/+/+`` while the device is reachable
  here; a request from another node arrives on that subscription and goes
  to the device;
- the device's replies and acks addressed to another node go to the broker,
  those for this node stay here;
- the broker's retained presence is last writer wins, so the node keeps
  who wrote the newest "online" it saw (``_brokered``: the device itself,
  or another node).  Its own, back from the broker, makes it the writer
  again.  When the device leaves this node while someone else's "online"
  is the newest (it moved, and its old connection here closed late), the
  node neither delivers nor publishes "offline"; when an "offline" comes
  from elsewhere while the device is connected here, the node publishes
  its "online" again;
- after every reconnection to the broker it publishes the presence of its
  devices again: a broker restarted without persistence has lost it;
- an "online" that names an earlier run of this node (same node id,
  another boot: it was killed, or stopped before the broker had its
  "offline") is stale: the node publishes "offline" for that device unless
  the device is connected here again;
- the node registers ``{"status": "offline", "node": level}`` on
  ``{p}/n/{node_id}/presence``, retained, as the Last Will of its broker
  connection.  When a node's run ends without saying "offline" for its
  devices (its process was killed, its machine lost, or its broker
  connection cut), the broker publishes that Will, and every node that
  shares devices publishes "offline" for each device whose newest word is
  that run's "online" (unless the device is connected to it: then
  "online"), then clears the Will (an empty retained message): a node that
  starts later finds the devices offline.  A node that starts while the
  Will is still there (no node that shares devices was running) does the
  same, for each device "online" via that run as it arrives.  A node that
  sees its own run's Will (it landed after the node had reconnected) clears
  it; its devices' presence comes back by the rule above.

**A node without an endpoint** (``endpoint`` None, ``node`` given) runs
the same rules with no device of its own: it follows who said each
device's newest "online", and acts on a lost node's Will like the others
(its dispatcher sees the devices go offline, the broker's presence is
corrected and the Will cleared), so a fleet whose only sharing node is lost
shows none of its devices online.  A node that does not track presence
(no presence filter among its subscriptions) registers its Will but
follows no other node's: it could not tell which devices a Will leaves.

**Memory.**  ``_brokered`` holds a word per device that is online on the
broker, which is the fleet, not this node's devices; anyone who may
publish a presence (a broker without ACLs) could make ids up.  So it keeps
at most ``max_brokered`` of them (the server passes
``dispatch.presence_max_devices``: set it above the fleet's size), the
least recently heard of leaving first, counted in ``brokered_evicted``.  A
device forgotten this way is treated as if the broker had said nothing of
it: should it connect here and leave again, this node says "offline" for
it, and a lost node's Will no longer names it here (the other nodes that
still remember it act on that Will as well).

What is left open: a fleetrpc-SDK device
connected to the broker and to an endpoint at once gets another node's
requests twice (its own subscription and the node's); the SDK runs the
method once and answers the second copy from its memory of replies, as it
does a resent request, and the caller counts that answer as late.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Callable

import msgspec

from ...wire import (
    NODE_PRESENCE_DECODER,
    PRESENCE_DECODER,
    NodePresence,
    Presence,
    devices_root,
    is_presence_filter,
    node_id_of,
    node_presence_filter,
    node_presence_topic,
    parse_node_presence_topic,
    presence_topic,
    requests_filter,
)
from .server import DeviceEndpoint

log = logging.getLogger("fleetrpc.endpoint")

_encode = msgspec.json.Encoder().encode
#: ended runs a node remembers (other nodes' ids; the oldest is forgotten first)
_MAX_ENDED = 1024
_NOBODY = object()


class CompositeTransport:
    """A dispatcher transport over a :class:`DeviceEndpoint` and a broker
    transport (:class:`~fleetrpc.transport.MqttTransport` or anything with
    its interface); ``endpoint`` None with ``node`` and ``prefix``: a node
    without an endpoint, following the others (see above)."""

    def __init__(self, endpoint: DeviceEndpoint | None, broker: Any, *, node: str | None = None,
                 prefix: str | None = None, max_brokered: int = 100_000) -> None:
        if endpoint is None and (node is None or prefix is None):
            raise ValueError("a CompositeTransport without an endpoint needs node and prefix")
        if max_brokered < 1:
            raise ValueError("max_brokered must be at least 1")
        if endpoint is not None and prefix not in (None, endpoint.settings.prefix):
            raise ValueError(f"prefix {prefix!r} is not the endpoint's ({endpoint.settings.prefix!r})")
        self.endpoint = endpoint
        self.broker = broker
        #: this node's wire level (``Dispatcher.node``): with it, the
        #: endpoint's devices are shared with the other nodes (see above)
        self.node = node
        self.on_message: Callable[[str, bytes, "dict | None"], None] = lambda t, p, props: None
        self.on_published: Callable[[int], None] = lambda token: None
        self.on_connection: Callable[[bool], None] = lambda up: None
        self.awaiting: Callable[[], int] = lambda: 0
        self._prefix = endpoint.settings.prefix if endpoint is not None else prefix
        #: other nodes' requests for the devices connected here come from the broker
        self._relays_requests = endpoint is not None and node is not None
        self._dev_prefix = devices_root(self._prefix)
        #: devices online through the endpoint
        self._direct: set[str] = set()
        #: devices whose newest presence on the broker is "online", said by
        #: someone other than this node -> who: the device itself (None) or
        #: another node (its level); least recently heard of first, at most
        #: ``max_brokered`` (see "Memory" above)
        self._brokered: OrderedDict[str, str | None] = OrderedDict()
        self.max_brokered = max_brokered
        #: words forgotten to stay within ``max_brokered``
        self.brokered_evicted = 0
        self._evicted_logged = 0.0
        if node is not None:
            #: ``{node}/``: where a reply or ack topic names its node
            self._node_slash = node + "/"
            self._node_id = node.rsplit(".", 1)[0]
            self._node_topic = node_presence_topic(self._prefix, self._node_id)
            #: another node's id -> its newest run known to have ended (its Will)
            self._ended: dict[str, str] = {}
            #: subscriptions to make / to drop at the end of this loop iteration
            self._subscribe: set[str] = set()
            self._unsubscribe: set[str] = set()
            self._sync_scheduled = False

    async def start(self, filters: list[tuple[str, int]] = ()) -> None:
        """Start the endpoint, then connect to the broker with ``filters``."""
        ep, broker = self.endpoint, self.broker
        broker.on_message = self._from_broker
        broker.on_published = self._published
        broker.on_connection = self._broker_connection
        broker.awaiting = self._awaiting
        if self.node is not None:
            broker.will = (self._node_topic, _encode(NodePresence("offline", self.node)), 1, True)
            if any(is_presence_filter(f) for f, _ in filters):
                filters = [*filters, (node_presence_filter(self._prefix), 1)]
        if ep is None:
            await broker.start(filters)
            return
        ep.on_message = self._from_endpoint
        ep.on_published = self._published
        ep.on_connection = self._endpoint_connection
        ep.awaiting = self._awaiting
        await ep.start(filters)
        try:
            await broker.start(filters)
        except BaseException:
            await ep.close()
            raise

    async def close(self) -> None:
        """Close the endpoint, then the broker connection; with ``node``,
        the devices that were connected here are "offline" on the broker
        first (at QoS 0: written before the DISCONNECT, with no window to
        wait for)."""
        try:
            if self.endpoint is not None:
                await self.endpoint.close()  # (which reports no presence while closing)
            if self.node is not None:
                self._say_all(False, qos=0)
                self._direct.clear()
        finally:
            await self.broker.close()

    @property
    def connected(self) -> bool:
        """Connected to the broker (``/readyz``; the endpoint has no such state)."""
        return bool(getattr(self.broker, "connected", True))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                token: int = -1, properties: dict | None = None) -> None:
        if self.endpoint is None or not self.endpoint.try_publish(topic, payload, qos, retain, token, properties):
            self.broker.publish(topic, payload, qos, retain, token, properties)

    @property
    def request_head(self) -> str:
        """``{prefix}/d/``, as :attr:`DeviceEndpoint.request_head`."""
        return self._dev_prefix

    def publish_request(self, device: str, topic: str, payload: bytes, qos: int = 1, token: int = -1,
                        properties: dict | None = None) -> None:
        """A REQUEST for ``device``: to it directly if it is connected here,
        else through the broker (see :meth:`DeviceEndpoint.publish_request`)."""
        ep = self.endpoint
        if ep is None or not ep.try_publish_request(device, topic, payload, qos, token, properties):
            self.broker.publish(topic, payload, qos, False, token, properties)

    # -- callbacks -----------------------------------------------------------------

    def _published(self, token: int) -> None:
        self.on_published(token)

    def _awaiting(self) -> int:
        return self.awaiting()

    def _endpoint_connection(self, up: bool) -> None:
        log.info("device endpoint %s", "listening" if up else "closed")

    def _broker_connection(self, up: bool) -> None:
        if up and self.node is not None:
            # A broker that restarted without persistence lost the retained
            # presence of the devices connected here: say it again.
            self._say_all(True)
        self.on_connection(up)

    def _presence_device(self, topic: str) -> str | None:
        if topic.endswith("/presence") and topic.startswith(self._dev_prefix):
            device = topic[len(self._dev_prefix):-9]
            if device and "/" not in device:
                return device
        return None

    def _from_endpoint(self, topic: str, payload: bytes, props: dict | None) -> None:
        device = self._presence_device(topic)
        if device is not None:
            online = _status(payload) == "online"
            if online:
                self._direct.add(device)
            else:
                self._direct.discard(device)
            if self.node is not None:
                self._share(device, online)
            if not online and device in self._brokered:
                return  # still reachable through the broker
        elif self.node is not None and self._elsewhere(topic):
            self.broker.publish(topic, payload, 1)
            return
        self.on_message(topic, payload, props)

    def _from_broker(self, topic: str, payload: bytes, props: dict | None) -> None:
        # replies and acks, most of what arrives, cost one suffix check
        if topic.endswith("/presence"):
            payload = self._presence_from_broker(topic, payload)
            if payload is None:
                return
        elif self._relays_requests and self._is_request(topic):
            # another node's request for a device connected here: the
            # dispatcher subscribes to no request, _share does
            self.endpoint.publish(topic, payload, 1, False, -1, _publish_props(props))
            return
        self.on_message(topic, payload, props)

    def _presence_from_broker(self, topic: str, payload: bytes) -> bytes | None:
        """A device's or a node's presence from the broker: what the
        dispatcher is to see of it, or None (see the module's doc)."""
        device = self._presence_device(topic)
        if device is None:
            node_id = parse_node_presence_topic(self._prefix, topic) if self.node is not None else None
            if node_id is None:
                return payload
            self._node_will(node_id, payload)
            return None
        status, via = _status_via(payload)
        if self.node is not None and via is not None:
            if via == self.node:
                if status == "online":  # ours, back: the broker's newest word on the device
                    self._brokered.pop(device, None)
                return None
            if status == "online" and self._run_ended(via):
                # stale (see above)
                if device in self._direct:
                    return None  # ours replaces it
                status, payload = "offline", self._say(device, False)
        if status == "online":
            self._hold(device, via)
        elif status == "offline":
            self._brokered.pop(device, None)
            if device in self._direct:
                if self.node is not None:  # the broker's word is now wrong: ours again
                    self._say(device, True)
                return None  # still connected directly
        return payload

    def _hold(self, device: str, via: str | None) -> None:
        """Remember that the broker's newest word on ``device`` is an
        "online" said by ``via`` (the device itself: None), within
        ``max_brokered``."""
        brokered = self._brokered
        brokered[device] = via
        brokered.move_to_end(device)
        if len(brokered) > self.max_brokered:
            forgotten, _ = brokered.popitem(last=False)
            self.brokered_evicted += 1
            now = time.monotonic()
            if now - self._evicted_logged >= 60.0:
                self._evicted_logged = now
                log.warning("more than %d devices are online on the broker: the presence of the least recently "
                            "heard of (%r) is forgotten here (%d so far); raise dispatch.presence_max_devices "
                            "above the fleet's size", self.max_brokered, forgotten, self.brokered_evicted)

    # -- sharing the endpoint's devices with the other nodes --------------------------

    def _is_request(self, topic: str) -> bool:
        """Whether ``topic`` is a REQUEST ``{p}/d/{device}/req/...``."""
        dp = self._dev_prefix
        if not topic.startswith(dp):
            return False
        j = topic.find("/", len(dp))
        return j > 0 and topic.startswith("/req/", j)

    def _elsewhere(self, topic: str) -> bool:
        """Whether ``topic`` (from the endpoint) is a reply or ack addressed
        to another node: ``{p}/d/{device}/res|ack/{node}/{rid}``."""
        j = topic.find("/", len(self._dev_prefix))
        kind = topic[j + 1:j + 5]
        return (kind == "res/" or kind == "ack/") and not topic.startswith(self._node_slash, j + 5)

    def _say(self, device: str, online: bool, qos: int = 1) -> bytes:
        """Publish ``device``'s retained presence as this node's word;
        returns the body."""
        body = _encode(Presence("online" if online else "offline", int(time.time() * 1000), via=self.node))
        self.broker.publish(presence_topic(self._prefix, device), body, qos, retain=True)
        return body

    def _run_ended(self, via: str) -> bool:
        """Whether the run ``via`` (another than this one) is known to have
        ended: an earlier run of this node, or one whose Will came."""
        node_id = node_id_of(via)
        return node_id == self._node_id or self._ended.get(node_id) == via

    def _node_will(self, node_id: str, payload: bytes) -> None:
        """A node's Will on ``{p}/n/{node_id}/presence`` (see above)."""
        if not payload:
            # cleared: acted on, or the node itself is back (its Will landed
            # after it reconnected): its run's "online" counts again
            self._ended.pop(node_id, None)
            return
        try:
            run = NODE_PRESENCE_DECODER.decode(payload)
        except msgspec.DecodeError:
            return
        if node_id_of(run.node) != node_id:
            return  # not a run of this node id
        if node_id != self._node_id:
            self._ended[node_id] = run.node
            if len(self._ended) > _MAX_ENDED:
                del self._ended[next(iter(self._ended))]
            left = [d for d, via in self._brokered.items() if via == run.node]
            if left:
                log.warning("node %s is gone without a word (its Last Will): %d of its devices are offline now",
                            run.node, len(left))
            for device in left:
                del self._brokered[device]
                if device in self._direct:
                    self._say(device, True)
                else:
                    self.on_message(presence_topic(self._prefix, device), self._say(device, False), None)
        # acted on (or this node's own, which is wrong or stale): nobody
        # needs it any more, and the broker keeps no message per dead run
        self.broker.publish(node_presence_topic(self._prefix, node_id), b"", 1, retain=True)

    def _say_all(self, online: bool, qos: int = 1) -> None:
        """:meth:`_say` for every device connected here whose newest word
        on the broker is not someone else's "online"."""
        for device in sorted(self._direct.difference(self._brokered)):
            self._say(device, online, qos)

    def _share(self, device: str, online: bool) -> None:
        """``device`` became reachable here, or stopped being: take its
        requests from the broker or stop, and say so on its presence topic
        unless the broker's newest word on it is someone else's "online"
        (the device's own, or another node's)."""
        request_filter = requests_filter(self._prefix, device)
        if online:
            if request_filter in self._unsubscribe:
                self._unsubscribe.discard(request_filter)
            else:
                self._subscribe.add(request_filter)
        elif request_filter in self._subscribe:
            self._subscribe.discard(request_filter)
        else:
            self._unsubscribe.add(request_filter)
        if not self._sync_scheduled:
            self._sync_scheduled = True
            asyncio.get_running_loop().call_soon(self._sync_subscriptions)
        held = self._brokered.get(device, _NOBODY)
        if online and held is None or not online and held is not _NOBODY:
            return
        self._say(device, online)

    def _sync_subscriptions(self) -> None:
        """Many devices connect or go at once (a storm, a restart): their
        subscriptions go in a few packets, not one each."""
        self._sync_scheduled = False
        if self._unsubscribe:
            gone, self._unsubscribe = self._unsubscribe, set()
            self.broker.unsubscribe(sorted(gone))
        if self._subscribe:
            new, self._subscribe = self._subscribe, set()
            self.broker.subscribe([(f, 1) for f in sorted(new)])


def _status(payload: bytes) -> str | None:
    return _status_via(payload)[0]


def _status_via(payload: bytes) -> tuple[str | None, str | None]:
    try:
        presence = PRESENCE_DECODER.decode(payload)
    except msgspec.DecodeError:
        return None, None  # the dispatcher counts it as malformed
    return presence.status, presence.via


def _publish_props(props: dict | None) -> dict | None:
    """gmqtt's inbound properties (lists) as publish() takes them."""
    if not props:
        return None
    out = {}
    for key in ("response_topic", "correlation_data"):
        value = props.get(key)
        if value:
            out[key] = value[0]
    return out or None
