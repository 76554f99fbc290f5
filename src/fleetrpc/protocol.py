"""The wire contract in code: MQTT topics, payloads and their msgspec types.

Everything fleetrpc puts on the broker, or accepts from it, is described here;
the envelope codec (:mod:`fleetrpc._core`) is the fast reader of this layout
and the tests check that the two agree.

Topics
======

Every topic starts with a configurable *prefix* (``fleetrpc`` by default; it
may span several levels, e.g. ``acme/prod/rpc``, but has no empty level, no
``+``, ``#`` or NUL and does not start with ``$``).  ``{p}`` below is that
prefix.

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
  (:func:`validate_id`).  ``{node}`` names the server node that sent a
  request, so that its reply comes back to that node and no other.
- ``{rid}`` (request id, chosen by the server) and ``{cid}`` (call id, chosen
  by the device) are decimal integers in ``[0, 2**63)``; the server's request
  ids are positive and below ``2**53`` so they survive any JSON parser.

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

Client-side RPC (device calls the server)
-----------------------------------------

A device publishes a CALL on ``call/{cid}`` with an id of its choosing and
gets the answer on ``ret/{cid}`` (or on its MQTT 5 Response Topic).  A
failed call answers ``{"error": {"code": "METHOD_NOT_FOUND", "message":
"..."}}`` (:func:`error_reply`).  Because several server nodes may share the
CALL subscription, the answer comes from whichever node took the call.

Presence and heartbeats
-----------------------

A device publishes ``{"status": "online", "ts": <epoch ms>}`` on
``presence`` with the retain flag when it connects, and registers the same
topic as its Last Will with ``"status": "offline"``; the retained message
tells a node that starts later who is online.  Agents may add ``ip``, ``os``,
``version`` and ``started`` (:class:`Presence`).  Heartbeats on ``hb`` are a
JSON object of whatever statistics the agent reports (not retained).

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
addressed to its own node id, every presence and heartbeat (each node needs
to know who is online), and the CALL and Elves topics, which several nodes
split between them through an MQTT 5 shared subscription
(``$share/{group}/...``) when a share group is configured.  A device
subscribes to :func:`device_filters`: its requests from any node and the
answers to its own calls.

Payload limits
--------------

Payloads are UTF-8 JSON of at most ``max_payload`` bytes (256 KiB by
default); an ACK's payload is ignored.  Unknown object fields are ignored, so
that newer peers may add fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ._core.constants import DEFAULT_PREFIX, MAX_ID_LENGTH
from .errors import ValidationError

__all__ = [
    "DEFAULT_PREFIX",
    "RpcRequest",
    "Presence",
    "ErrorBody",
    "ErrorReply",
    "ELVES_CALL",
    "ELVES_BACK",
    "METHOD_NOT_FOUND",
    "INVALID_PARAMS",
    "INTERNAL_ERROR",
    "error_reply",
    "as_error",
    "request_topic",
    "reply_topic",
    "ack_topic",
    "call_topic",
    "return_topic",
    "presence_topic",
    "heartbeat_topic",
    "elves_topic",
    "answer_target",
    "server_filters",
    "device_filters",
    "validate_id",
    "validate_prefix",
    "JSON_ENCODER",
    "ANY_DECODER",
    "REQUEST_DECODER",
    "PRESENCE_DECODER",
    "OBJECT_DECODER",
]

# -- payloads ----------------------------------------------------------------

Method = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]


class RpcRequest(msgspec.Struct, gc=False):
    """A call: the payload of REQUEST (server -> device) and CALL (device ->
    server).  ``params`` defaults to an empty object, as in ThingsBoard."""

    #: The procedure to run: 1-128 characters.
    method: Method
    #: Its arguments: any JSON value (usually an object).
    params: Any = {}
    #: Persistent calls only: the RPC's id, the same on every retry, so a
    #: device can answer a duplicate from memory.  Absent (not null) otherwise.
    id: str | msgspec.UnsetType = msgspec.UNSET


class Presence(msgspec.Struct, gc=False, omit_defaults=True):
    """A device's online state, published retained on its presence topic and
    registered as its Last Will (with ``status="offline"``)."""

    status: Literal["online", "offline"]
    #: When the state changed, epoch milliseconds.
    ts: int | None = None
    #: Optional facts an agent may report with its presence.
    ip: str | None = None
    os: str | None = None
    version: str | None = None
    #: When the agent process started, epoch milliseconds.
    started: int | None = None


class ErrorBody(msgspec.Struct, gc=False):
    """What went wrong, machine-readable (``code``) and human-readable."""

    code: str
    message: str


class ErrorReply(msgspec.Struct, gc=False):
    """``{"error": {"code": ..., "message": ...}}``: a failed call's answer."""

    error: ErrorBody


#: The ``mqt`` of an Elves envelope: a call, or the answer to one.
ELVES_CALL = "call"
ELVES_BACK = "back"

#: Error codes fleetrpc itself puts in :func:`error_reply` (applications may
#: use their own).
METHOD_NOT_FOUND = "METHOD_NOT_FOUND"
INVALID_PARAMS = "INVALID_PARAMS"
INTERNAL_ERROR = "INTERNAL_ERROR"

# Shared encoder and decoders, created once: msgspec's fast path is a reused
# Decoder per type.  They hold no per-call state, so sharing them is safe.
#: Encodes any supported value (Structs included) to JSON bytes.
JSON_ENCODER = msgspec.json.Encoder()
#: Any JSON value (REPLY, RETURN).
ANY_DECODER = msgspec.json.Decoder()
#: :class:`RpcRequest` (REQUEST, CALL).
REQUEST_DECODER = msgspec.json.Decoder(RpcRequest)
#: :class:`Presence` (PRESENCE).
PRESENCE_DECODER = msgspec.json.Decoder(Presence)
#: A JSON object with string keys (HEARTBEAT, ELVES).
OBJECT_DECODER = msgspec.json.Decoder(dict[str, Any])

_encode = JSON_ENCODER.encode


def error_reply(code: str, message: str) -> bytes:
    """The JSON answer of a failed call:
    ``{"error": {"code": code, "message": message}}``."""
    return _encode(ErrorReply(ErrorBody(code, message)))


def as_error(body: Any) -> ErrorBody | None:
    """The :class:`ErrorBody` if ``body`` (a decoded REPLY or RETURN) is an
    error answer -- exactly ``{"error": {"code": str, "message": str}}`` --
    else ``None``."""
    if type(body) is ErrorReply:
        return body.error
    if type(body) is not dict or len(body) != 1:
        return None
    err = body.get("error")
    if type(err) is not dict:
        return None
    code = err.get("code")
    message = err.get("message")
    if type(code) is not str or type(message) is not str:
        return None
    return ErrorBody(code, message)


# -- topics ------------------------------------------------------------------
#
# Builders do not validate: they run once per message on the hot path.  Ids
# are validated where they enter the system (validate_id), once.


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


def return_topic(prefix: str, device: str, cid: int) -> str:
    """RETURN (answer to a CALL), server -> device: ``{p}/d/{device}/ret/{cid}``."""
    return f"{prefix}/d/{device}/ret/{cid}"


def presence_topic(prefix: str, device: str) -> str:
    """PRESENCE (retained, and the Last Will): ``{p}/d/{device}/presence``."""
    return f"{prefix}/d/{device}/presence"


def heartbeat_topic(prefix: str, device: str) -> str:
    """HEARTBEAT, device -> server: ``{p}/d/{device}/hb``."""
    return f"{prefix}/d/{device}/hb"


def elves_topic(prefix: str, app: str, mqt: str = ELVES_CALL, cid: int | None = None) -> str:
    """ELVES: ``{p}/elves/{app}/{mqt}`` or ``{p}/elves/{app}/{mqt}/{cid}``;
    ``mqt`` is ``"call"`` towards the server, ``"back"`` towards the app."""
    if cid is None:
        return f"{prefix}/elves/{app}/{mqt}"
    return f"{prefix}/elves/{app}/{mqt}/{cid}"


def answer_target(topic: str, properties: dict | None) -> tuple[str, dict | None]:
    """Where to answer a request: its MQTT 5 Response Topic (with its
    Correlation Data) when it has one, else ``topic`` from the layout.
    ``properties`` is gmqtt's shape: a dict of lists."""
    if properties:
        rt = properties.get("response_topic")
        if rt and isinstance(rt[0], str) and rt[0]:
            cd = properties.get("correlation_data")
            return rt[0], ({"correlation_data": cd[0]} if cd else None)
    return topic, None


def server_filters(prefix: str, node: str, share_group: str | None = None) -> list[str]:
    """The subscriptions of server node ``node``.

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


def device_filters(prefix: str, device: str) -> list[str]:
    """The subscriptions of device ``device``: requests from any node
    (``{p}/d/{device}/req/#``) and answers to its calls (``{p}/d/{device}/ret/+``)."""
    validate_prefix(prefix)
    validate_id("device", device)
    return [f"{prefix}/d/{device}/req/#", f"{prefix}/d/{device}/ret/+"]


# -- validation --------------------------------------------------------------

_FORBIDDEN = ("/", "+", "#", "\x00")


def _show(value: str) -> str:
    # str.__repr__: a str subclass's own __repr__ must not change the text
    return str.__repr__(value if len(value) <= 80 else value[:77] + "...")


def validate_id(kind: str, value: object) -> str:
    """Check that ``value`` is a valid ``kind`` id ("device", "node", ...):
    exactly one topic level of 1-128 UTF-8 bytes without ``/``, ``+``, ``#``
    or NUL.  Returns ``value``; raises :class:`ValidationError` otherwise."""
    if not isinstance(value, str):
        raise ValidationError(f"{kind} id must be a string, not {type(value).__name__}")
    if not value:
        raise ValidationError(f"{kind} id is empty")
    for ch in _FORBIDDEN:
        if ch in value:
            raise ValidationError(
                f"{kind} id {_show(value)} contains {ch!r}, which cannot appear in a topic level"
            )
    if len(value) > MAX_ID_LENGTH // 4:  # shorter ones fit whatever their characters
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValidationError(f"{kind} id {_show(value)} is not valid UTF-8") from None
        if size > MAX_ID_LENGTH:
            raise ValidationError(
                f"{kind} id {_show(value)} is {size} bytes long in UTF-8 (at most {MAX_ID_LENGTH})"
            )
    elif not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{kind} id {_show(value)} is not valid UTF-8") from None
    return value


def validate_prefix(prefix: object) -> str:
    """Check a topic prefix: one or more non-empty levels without ``+``,
    ``#`` or NUL, not starting with ``$`` (reserved for the broker), valid
    UTF-8.  Returns ``prefix``; raises :class:`ValidationError` otherwise."""
    if not isinstance(prefix, str):
        raise ValidationError(f"topic prefix must be a string, not {type(prefix).__name__}")
    if not prefix:
        raise ValidationError("topic prefix is empty")
    if "" in prefix.split("/"):
        raise ValidationError(f"topic prefix {_show(prefix)} has an empty level")
    for ch in ("+", "#", "\x00"):
        if ch in prefix:
            raise ValidationError(f"topic prefix {_show(prefix)} contains {ch!r}")
    if prefix.startswith("$"):
        raise ValidationError(
            f"topic prefix {_show(prefix)} starts with '$', which is reserved for the broker"
        )
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"topic prefix {_show(prefix)} is not valid UTF-8") from None
    if size > 1024:
        raise ValidationError(f"topic prefix {_show(prefix)} is longer than 1024 bytes")
    return prefix
