"""Topics: every topic fleetrpc publishes or subscribes to is built here.

Builders do not validate: they run once per message on the hot path.  Ids
are validated where they enter the system (:func:`validate_id`), once.
:class:`ServerTopics` and :class:`DeviceTopics` hold one side's fixed parts,
computed once; the dispatcher's send path concatenates
``request_head + device + request_tail + rid`` from them inline (a method
call there would cost ~1 % of a round trip).
"""

from __future__ import annotations

import os
import time

from .constants import ELVES_CALL
from .ids import is_valid_level, validate_id, validate_prefix

__all__ = [
    "request_topic", "reply_topic", "ack_topic", "call_topic", "return_topic",
    "presence_topic", "requests_filter", "heartbeat_topic", "elves_topic",
    "node_presence_topic", "node_presence_filter", "parse_node_presence_topic", "node_sync_topic",
    "ServerTopics", "DeviceTopics", "node_level", "new_boot_id",
    "own_answer_target", "parse_call_topic", "server_filters", "device_filters", "topic_matches",
    "levels_match",
    "devices_root", "device_permissions",
]


def request_topic(prefix: str, device: str, node: str, rid: int) -> str:
    """REQUEST, server -> device: ``{p}/d/{device}/req/{node}/{rid}``."""
    return f"{prefix}/d/{device}/req/{node}/{rid}"


def reply_topic(prefix: str, device: str, node: str, rid: int) -> str:
    """REPLY, device -> server: ``{p}/d/{device}/res/{node}/{rid}``."""
    return f"{prefix}/d/{device}/res/{node}/{rid}"


def ack_topic(prefix: str, device: str, node: str, rid: int) -> str:
    """ACK, device -> server: ``{p}/d/{device}/ack/{node}/{rid}``."""
    return f"{prefix}/d/{device}/ack/{node}/{rid}"


def call_topic(prefix: str, device: str, cid: int) -> str:
    """CALL (client-side RPC), device -> server: ``{p}/d/{device}/call/{cid}``."""
    return f"{prefix}/d/{device}/call/{cid}"


def return_topic(prefix: str, device: str, cid: int | str) -> str:
    """RETURN (answer to a CALL), server -> device: ``{p}/d/{device}/ret/{cid}``."""
    return f"{prefix}/d/{device}/ret/{cid}"


def presence_topic(prefix: str, device: str) -> str:
    """PRESENCE (retained, and the Last Will): ``{p}/d/{device}/presence``."""
    return f"{prefix}/d/{device}/presence"


def requests_filter(prefix: str, device: str) -> str:
    """Every REQUEST for ``device``, from any node: ``{p}/d/{device}/req/+/+``
    (what a server node subscribes to for a device connected to its
    endpoint)."""
    return f"{prefix}/d/{device}/req/+/+"


def node_presence_topic(prefix: str, node_id: str) -> str:
    """A server node's presence (retained, and its Last Will):
    ``{p}/n/{node_id}/presence``; keyed on the node's id, not on its run, so
    that the broker keeps one per node."""
    return f"{prefix}/n/{node_id}/presence"


def node_presence_filter(prefix: str) -> str:
    """Every server node's presence: ``{p}/n/+/presence``."""
    return f"{prefix}/n/+/presence"


def parse_node_presence_topic(prefix: str, topic: str) -> str | None:
    """The node id of a node presence topic, or None for any other topic."""
    head = f"{prefix}/n/"
    if topic.startswith(head) and topic.endswith("/presence"):
        node_id = topic[len(head):-9]
        if node_id and "/" not in node_id:
            return node_id
    return None


def node_sync_topic(prefix: str, node: str) -> str:
    """A node run's own marker, which it publishes to itself once subscribed
    (``{p}/n/{node}/sync``, ``node`` its wire level): a broker that takes a
    connection's packets in order hands out the retained messages of the
    subscriptions before it (see ``Dispatcher.start``)."""
    return f"{prefix}/n/{node}/sync"


def heartbeat_topic(prefix: str, device: str) -> str:
    """HEARTBEAT, device -> server: ``{p}/d/{device}/hb``."""
    return f"{prefix}/d/{device}/hb"


def elves_topic(prefix: str, app: str, mqt: str = ELVES_CALL, cid: int | None = None) -> str:
    """ELVES: ``{p}/elves/{app}/{mqt}`` or ``{p}/elves/{app}/{mqt}/{cid}``;
    ``mqt`` is ``"call"`` towards the server, ``"back"`` towards the app."""
    if cid is None:
        return f"{prefix}/elves/{app}/{mqt}"
    return f"{prefix}/elves/{app}/{mqt}/{cid}"


# -- node identity on the wire ------------------------------------------------


def new_boot_id() -> str:
    """A new id for one run of a node: the start time in ms (hex) and 32
    random bits, so that two runs of a node never share one, even when they
    start in the same millisecond or the clock was set back."""
    return f"{int(time.time() * 1000):x}{os.urandom(4).hex()}"


def node_level(node_id: str, boot: str) -> str:
    """The ``{node}`` level of a node's requests and replies:
    ``{node_id}.{boot}``.  Request ids start at 1 in every run; the boot id
    makes a request of this run differ from every earlier one on the wire,
    so a late reply of an earlier run never completes a call of this one,
    and a device's memory of replies (keyed on node and rid) never answers
    a new call with an old reply.  Raises ValidationError if too long."""
    return validate_id("node", f"{node_id}.{boot}")


def node_id_of(level: str) -> str:
    """The node id in a ``{node_id}.{boot}`` level (see :func:`node_level`)."""
    return level.rpartition(".")[0]


# -- one side's topics ----------------------------------------------------------


class ServerTopics:
    """The topics of server node ``node`` (its wire level, see
    :func:`node_level`) under ``prefix``."""

    __slots__ = ("prefix", "node", "request_head", "request_tail", "reply_tail")

    def __init__(self, prefix: str, node: str) -> None:
        self.prefix = validate_prefix(prefix)
        self.node = validate_id("node", node)
        #: ``{p}/d/``: a request topic is request_head + device + request_tail + rid.
        self.request_head = f"{prefix}/d/"
        #: ``/req/{node}/``
        self.request_tail = f"/req/{node}/"
        #: ``/res/{node}/``: the MQTT 5 Response Topic is request_head + device + reply_tail + rid.
        self.reply_tail = f"/res/{node}/"

    def request(self, device: str, rid: int) -> str:
        return self.request_head + device + self.request_tail + str(rid)

    def reply(self, device: str, rid: int) -> str:
        return self.request_head + device + self.reply_tail + str(rid)

    def return_(self, device: str, cid: int | str) -> str:
        return return_topic(self.prefix, device, cid)

    def return_head(self, device: str) -> str:
        """``{p}/d/{device}/ret/``: where every answer to ``device``'s calls lies."""
        return f"{self.prefix}/d/{device}/ret/"


class DeviceTopics:
    """The topics of device ``device`` under ``prefix``."""

    __slots__ = ("prefix", "device", "base", "presence", "heartbeat", "request_head", "reply_head", "ack_head")

    def __init__(self, prefix: str, device: str) -> None:
        self.prefix = validate_prefix(prefix)
        self.device = validate_id("device", device)
        self.base = f"{prefix}/d/{device}"
        self.presence = f"{self.base}/presence"
        self.heartbeat = f"{self.base}/hb"
        #: ``{p}/d/{device}/req/``: a request is request_head + ``{node}/{rid}``.
        self.request_head = f"{self.base}/req/"
        #: ``{p}/d/{device}/res/``: where every reply of this device lies.
        self.reply_head = f"{self.base}/res/"
        #: ``{p}/d/{device}/ack/``
        self.ack_head = f"{self.base}/ack/"

    def call(self, cid: int) -> str:
        return f"{self.base}/call/{cid}"

    def ack(self, node: str, rid: int) -> str:
        return f"{self.base}/ack/{node}/{rid}"

    def reply(self, node: str, rid: int) -> str:
        return f"{self.base}/res/{node}/{rid}"

    def filters(self) -> list[str]:
        return device_filters(self.prefix, self.device)


# -- answering ----------------------------------------------------------------


def own_answer_target(
    topic: str, own_head: str, properties: dict | None, levels: int = 1
) -> tuple[str, dict | None, bool]:
    """Where to answer a request: ``(topic, properties, honoured)``.

    The request's MQTT 5 Response Topic is used only when it lies inside the
    asker's own answer subtree ``own_head`` (``{p}/d/{device}/ret/`` for a
    device's CALL), followed by ``levels`` valid topic levels; any other
    Response Topic -- another device's subtree, a server topic -- is ignored
    (``honoured`` is then False) and the answer goes to ``topic``, the
    layout's own.  The Correlation Data is kept either way.  ``properties``
    is gmqtt's shape: a dict of lists."""
    if not properties:
        return topic, None, True
    cd = properties.get("correlation_data")
    props = {"correlation_data": cd[0]} if cd else None
    rt = properties.get("response_topic")
    if not rt:
        return topic, props, True
    target = rt[0]
    if type(target) is str and target.startswith(own_head):
        rest = target[len(own_head):].split("/")
        if len(rest) == levels and all(is_valid_level(level) for level in rest):
            return target, props, True
    return topic, props, False


def parse_call_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """``(device, cid)`` of a CALL topic ``{p}/d/{device}/call/{cid}`` whose
    levels are valid, else ``None``.  Used to answer a CALL whose payload
    could not be decoded (the codec rejects the whole message)."""
    head = prefix + "/d/"
    if type(topic) is not str or not topic.startswith(head):
        return None
    parts = topic[len(head):].split("/")
    if len(parts) != 3 or parts[1] != "call":
        return None
    device, _, cid = parts
    if not is_valid_level(device) or not (cid.isascii() and cid.isdigit() and len(cid) <= 19):
        return None
    if int(cid) >= 1 << 63:
        return None
    return device, cid


# -- subscriptions --------------------------------------------------------------


def server_filters(prefix: str, node: str, share_group: str | None = None) -> list[str]:
    """The subscriptions of server node ``node`` (its wire level).

    Replies and acks addressed to this node; client-side calls; every presence
    and heartbeat; Elves calls.  With ``share_group`` the calls and Elves
    filters become MQTT 5 shared subscriptions (``$share/{group}/...``) so that
    the nodes of the group split them; presence and heartbeats are never
    shared (every node tracks who is online).
    """
    validate_prefix(prefix)
    validate_id("node", node)
    share = ""
    if share_group is not None:
        validate_id("share group", share_group)
        share = f"$share/{share_group}/"
    return [
        f"{prefix}/d/+/res/{node}/+",
        f"{prefix}/d/+/ack/{node}/+",
        f"{share}{prefix}/d/+/call/+",
        f"{prefix}/d/+/presence",
        f"{prefix}/d/+/hb",
        f"{share}{prefix}/elves/+/{ELVES_CALL}/#",
    ]


def devices_root(prefix: str) -> str:
    """``{p}/d/``: what every device topic starts with."""
    return f"{prefix}/d/"


def device_permissions(prefix: str, device: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(publish, subscribe)`` filters that confine a device to its own
    topics (the broker ACL of docs/protocol.md): it publishes replies, acks,
    its calls, presence and heartbeats, and subscribes to its requests and
    the answers to its calls; nothing of any other device's."""
    base = f"{validate_prefix(prefix)}/d/{validate_id('device', device)}"
    return (
        (f"{base}/res/#", f"{base}/ack/#", f"{base}/call/+", f"{base}/presence", f"{base}/hb"),
        (f"{base}/req/#", f"{base}/ret/#"),
    )


def device_filters(prefix: str, device: str) -> list[str]:
    """The subscriptions of device ``device``: requests from any node
    (``{p}/d/{device}/req/#``) and answers to its calls (``{p}/d/{device}/ret/+``)."""
    validate_prefix(prefix)
    validate_id("device", device)
    return [f"{prefix}/d/{device}/req/#", f"{prefix}/d/{device}/ret/+"]


def is_presence_filter(filter_: str) -> bool:
    """Presence or heartbeat subscriptions (a node without presence drops them)."""
    return filter_.endswith(("/presence", "/hb"))


def levels_match(f: list[str], t: list[str]) -> bool:
    """MQTT filter matching on levels already split: ``+`` one level, ``#``
    the rest (the parent level included).  No ``$`` rule: the callers that
    need it check it first."""
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT topic matching: ``+`` one level, ``#`` the rest; a shared
    subscription (``$share/{group}/...``) matches its inner filter; a
    wildcard at the first level does not match a ``$`` topic."""
    if filter_.startswith("$share/"):
        filter_ = filter_.split("/", 2)[2]
    f = filter_.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    return levels_match(f, topic.split("/"))
