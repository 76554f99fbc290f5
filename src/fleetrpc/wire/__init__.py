"""The wire contract in code: MQTT topics, payloads and their msgspec types.

Everything fleetrpc puts on the broker, or accepts from it, is described here;
the envelope codec (:mod:`fleetrpc._core`) is the fast reader of this layout
and the tests check that the two agree.  This text is the first part of
``docs/protocol.md`` (``python -m fleetrpc.wire.docs`` writes it there; a
test checks that the two are the same).

Topics
======

Every topic starts with a configurable *prefix* (``fleetrpc`` by default; it
may span several levels, e.g. ``acme/prod/rpc``, but has no empty level, no
``+``, ``#`` or NUL and does not start with ``$``).  ``{p}`` below is that
prefix.

::

    kind       direction         topic                            payload (JSON)
    ---------  ----------------  -------------------------------  --------------
    REQUEST    server -> device  {p}/d/{device}/req/{node}/{rid}  {"method": str, "params": any}
    REPLY      device -> server  {p}/d/{device}/res/{node}/{rid}  any JSON (the call's result)
    ACK        device -> server  {p}/d/{device}/ack/{node}/{rid}  empty (ignored)
    CALL       device -> server  {p}/d/{device}/call/{cid}        {"method": str, "params": any}
    RETURN     server -> device  {p}/d/{device}/ret/{cid}         any JSON; errors {"error": {"code", "message"}}
    PRESENCE   device -> server  {p}/d/{device}/presence          {"status": "online"|"offline", "ts": ms, ...}
    HEARTBEAT  device -> server  {p}/d/{device}/hb                a JSON object (agent statistics)
    ELVES      app <-> server    {p}/elves/{app}/{mqt}[/{cid}]    {"mqt": "call"|"back", "mqs": str, "mqf": str, ...}

Identifiers
-----------

- ``{device}``, ``{node}`` and ``{app}`` are each exactly one topic level:
  1-128 bytes of UTF-8 without ``/``, ``+``, ``#`` or NUL
  (:func:`validate_id`).  ``{node}`` names the run of the server node that
  sent a request, so that its reply comes back to that node and no other:
  it is the node's id, a dot and a boot id new at every start
  (``node-a.18f3c2d1e4b7a9c0e``, :func:`node_level`).
- ``{rid}`` (request id, chosen by the server) and ``{cid}`` (call id, chosen
  by the device) are decimal integers in ``[0, 2**63)``; the server's request
  ids are positive and below ``2**53`` so they survive any JSON parser.
  Request ids start again at 1 when a node restarts; ``{node}`` does not
  repeat, so the pair ``({node}, {rid})`` never names two requests: a reply
  from before a restart completes nothing after it, and a device may key
  its memory of recent replies on that pair.

Server-side RPC (server calls a device)
---------------------------------------

The server publishes a REQUEST on ``req/{node}/{rid}``.  A device may
acknowledge delivery at once with an empty ACK on ``ack/{node}/{rid}``
(needed by the SEQUENTIAL_ON_ACK delivery strategy) and answers with a REPLY
on ``res/{node}/{rid}``: the same levels with ``req`` replaced by ``res``.  A
one-way call gets no reply.  The REPLY payload is the result, any JSON value;
a reply that is not JSON fails the call with ``ReplyNotJsonError``
(ThingsBoard's HTTP 406).  Under MQTT 5 the server also sets the Response
Topic (the REPLY topic) and Correlation Data (the rid); a device may use
either form.

A reply or ack is rejected, and counted, when its request is not pending,
was sent to another device, or has not been sent yet (it waits in its
device's queue): nobody can answer a request they have not received.  A
reply to a request that has ended (timed out, answered already, or
one-way: devices may answer those) is dropped as late, counted and not
logged; one to a rid the server never sent is logged as a rejection.

Client-side RPC (device calls the server)
-----------------------------------------

A device publishes a CALL on ``call/{cid}`` with an id of its choosing and
gets the answer on ``ret/{cid}``.  Under MQTT 5 it may name a Response Topic
instead, which the server honours only inside the device's own answers,
``{p}/d/{device}/ret/{anything}``: any other Response Topic (another
device's subtree, a server topic) is ignored, the answer goes to
``ret/{cid}`` as if none had been given, and the server counts it.  The
Correlation Data is returned either way.

A failed call answers ``{"error": {"code": "METHOD_NOT_FOUND", "message":
"..."}}`` (:func:`error_reply`; the codes are listed below).  A CALL that
cannot be read (empty, not JSON, no ``method``, over the payload limit)
is answered too, with ``BAD_REQUEST``, as long as its topic names a valid
device and call id; it is never dropped in silence.  Because several
server nodes may share the CALL subscription, the answer comes from
whichever node took the call.

Presence and heartbeats
-----------------------

A device publishes ``{"status": "online", "ts": <epoch ms>}`` on
``presence`` with the retain flag when it connects, and registers the same
topic as its Last Will with ``"status": "offline"``; the retained message
tells a node that starts later who is online.  Agents may add ``ip``, ``os``,
``version`` and ``started`` (:class:`Presence`).  Heartbeats on ``hb`` are a
JSON object of whatever statistics the agent reports (not retained); a node
keeps at most ``max_heartbeat_bytes`` of each (of a larger one, counted, only
the top-level fields that fit together).

A device connected to a server node's own MQTT listener (the device
endpoint, docs/endpoint.md) publishes nothing on the broker: the node does
it for the device.  It publishes the device's retained presence with
``"via": "{node}"`` (its wire level) and subscribes to
``{p}/d/{device}/req/+/+`` while the device is connected, so that a request
from any node reaches the device; the device's replies and acks go back on
the usual topics.  A node drops an ``"online"`` that names an earlier run of
itself (``{node_id}.{another boot}``) and publishes ``"offline"`` in its
place: that run ended without saying so.

Such a node also registers ``{"status": "offline", "node": "{node}"}``
(:class:`NodePresence`) on ``{p}/n/{node_id}/presence``, retained, as the
Last Will of its broker connection.  When a run's Will arrives, every node
that shares devices publishes ``"offline"`` for each device whose newest
presence is an ``"online"`` via that run, then clears the Will (an empty
retained message): a node lost without a word (killed, its machine or its
network gone) leaves no device online, and the broker keeps nothing per
dead run.  Only server nodes may publish under ``{p}/n/``.

A node that tracks presence also subscribes, at QoS 0, to
``{p}/n/{node}/sync`` (``{node}`` its wire level), and once subscribed
publishes an empty message there, to itself.  A broker hands out the
retained messages of a subscription after its SUBACK, over tens of
milliseconds for a large fleet (20,000 presences: none had arrived when the
SUBACK did); one that takes a connection's packets in order (Mosquitto)
queues them all before that message, so its return means the node knows
who is online, and only then does the node take calls or resume jobs (it
waits 5 s at most, counted in ``presence_sync_timeouts``).

Elves envelopes
---------------

Elves (an ops automation platform) speaks JSON envelopes ``{"mqt": "call" |
"back", "mqs": service, "mqf": function, ...}``.  An app sends its calls on
``{p}/elves/{app}/call[/{cid}]`` and receives the answers on
``{p}/elves/{app}/back[/{cid}]``: the level after ``{app}`` repeats the
envelope's ``mqt`` so that neither side receives its own messages, and an
optional id lets an app match answers without MQTT 5.  The codec accepts any
``{p}/elves/{app}/...`` topic and reports ``{app}`` as ``Message.device`` and
the levels after it (``"call/17"``) as ``Message.node``.

Subscriptions
-------------

A server node subscribes to :func:`server_filters`: the replies and acks
addressed to its own node level, every presence and heartbeat (each node
needs to know who is online), and the CALL and Elves topics, which several
nodes split between them through an MQTT 5 shared subscription
(``$share/{group}/...``) when a share group is configured.  A device
subscribes to :func:`device_filters`: its requests from any node and the
answers to its own calls.

Payload limits
--------------

Payloads are UTF-8 JSON of at most ``max_payload`` bytes (256 KiB by
default), in both directions: the server refuses to send a larger request
(``ValidationError`` at the call, before anything is stored or published),
and drops a larger inbound message (a CALL gets ``BAD_REQUEST``).  The device
SDK has a limit of its own and fails its own oversize call at once.  An
ACK's payload is ignored.  Unknown object fields are ignored, so that newer
peers may add fields.
"""

from __future__ import annotations

from .constants import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_PREFIX,
    ELVES_BACK,
    ELVES_CALL,
    MAX_ID_LENGTH,
    Kind,
)
from .ids import is_valid_level, validate_id, validate_ids, validate_prefix
from .messages import (
    ANY_DECODER,
    BAD_JSON,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    JSON_ENCODER,
    MAX_JSON_DEPTH,
    METHOD_NOT_FOUND,
    OBJECT_DECODER,
    NODE_PRESENCE_DECODER,
    PRESENCE_DECODER,
    REQUEST_DECODER,
    ErrorBody,
    ErrorCode,
    ErrorReply,
    JsonTooDeep,
    NodePresence,
    Presence,
    RpcRequest,
    as_error,
    check_json_depth,
    error_reply,
    error_value,
)
from .topics import (
    DeviceTopics,
    device_permissions,
    devices_root,
    ServerTopics,
    ack_topic,
    call_topic,
    device_filters,
    elves_topic,
    heartbeat_topic,
    is_presence_filter,
    new_boot_id,
    node_id_of,
    node_level,
    node_presence_filter,
    node_presence_topic,
    node_sync_topic,
    own_answer_target,
    parse_node_presence_topic,
    parse_call_topic,
    presence_topic,
    reply_topic,
    requests_filter,
    request_topic,
    return_topic,
    server_filters,
    topic_matches,
)

__all__ = [
    "Kind", "DEFAULT_PREFIX", "DEFAULT_MAX_PAYLOAD", "MAX_ID_LENGTH", "ELVES_CALL", "ELVES_BACK",
    "RpcRequest", "Presence", "NodePresence", "ErrorBody", "ErrorReply", "ErrorCode",
    "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "error_reply", "error_value", "as_error",
    "JSON_ENCODER", "ANY_DECODER", "REQUEST_DECODER", "PRESENCE_DECODER", "NODE_PRESENCE_DECODER",
    "OBJECT_DECODER", "BAD_JSON", "MAX_JSON_DEPTH", "JsonTooDeep", "check_json_depth",
    "request_topic", "reply_topic", "ack_topic", "call_topic", "return_topic",
    "presence_topic", "requests_filter", "heartbeat_topic", "elves_topic",
    "node_presence_topic", "node_presence_filter", "parse_node_presence_topic", "node_sync_topic",
    "ServerTopics", "DeviceTopics", "node_level", "node_id_of", "new_boot_id",
    "own_answer_target", "parse_call_topic", "server_filters", "device_filters", "topic_matches", "devices_root", "device_permissions",
    "is_presence_filter", "validate_id", "validate_ids", "validate_prefix", "is_valid_level",
]
