"""One device connection: MQTT 3.1.1 / 5 server side, ThingsBoard's device
API on top.

A :class:`Session` is an :class:`asyncio.Protocol`.  Bytes go straight into
the compiled :class:`~fleetrpc._core.MqttReader`, which hands over PUBLISH
and PUBACK and queues the PUBACKs the session owes; every other packet comes
to :meth:`Session._on_packet` (``packets.py`` parses it).  Output is
collected per session and written once per event-loop iteration by the
endpoint's flusher, after the callers this iteration's answers woke.

What a device may do, by the topics it uses (its "form"):

=========  ==========================================  =======================================
form       subscribes                                  requests reach it on
=========  ==========================================  =======================================
V1         ``v1/devices/me/rpc/request/+``             ``v1/devices/me/rpc/request/{n}``
V2         ``v2/r/req/+``                              ``v2/r/req/{n}``
V2J        ``v2/r/req/j/+``                            ``v2/r/req/j/{n}``
GATEWAY    ``v1/gateway/rpc`` (gateway devices only)   ``v1/gateway/rpc``, ``{"device", "data"}``
FLEETRPC   ``{p}/d/{its id}/req/#`` (and ``ret/+``)    the dispatcher's topic, unchanged
=========  ==========================================  =======================================

``{n}`` is a per-session integer, as ThingsBoard's ``rpcSeq``.  Attribute
requests (a gateway's too) are answered with no attribute (fleetrpc keeps
none); other attribute and telemetry topics are acknowledged and ignored
(counted in ``stats.ignored``); subscriptions to ThingsBoard's other known topics are
granted and never receive anything; any other topic filter is refused.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections import deque
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from ... import _core
from ...errors import CodecError, StoreError
from ...wire import BAD_JSON, REQUEST_DECODER, check_json_depth, error_reply, validate_id
from ...wire.topics import levels_match, return_topic
from . import packets as P

if TYPE_CHECKING:
    from .server import DeviceEndpoint

log = logging.getLogger("fleetrpc.endpoint")

_encode_publish = _core.encode_publish
_json = msgspec.json.Encoder().encode

# session states
NEW, AUTHENTICATING, CONNECTED, CLOSED = range(4)
#: connected, and a packet handler found the stream unacceptable: nothing
#: more of the current read is handled, then the connection closes (only
#: while the reader runs; see Session._failed)
FAILING = 4

# RPC forms
V1, V2, V2J, GATEWAY, FLEETRPC = range(5)

#: what follows a FLEETRPC session's ``base`` in a reply's or an ack's topic
_ANSWER_KINDS = ("/res/", "/ack/")

#: subscription filter -> form, for the topics that make a device reachable
RPC_SUBSCRIPTIONS = {
    "v1/devices/me/rpc/request/+": V1,
    "v2/r/req/+": V2,
    "v2/r/req/j/+": V2J,
}
#: where each ThingsBoard form receives requests and client-call answers
REQUEST_TOPIC = {V1: "v1/devices/me/rpc/request/", V2: "v2/r/req/", V2J: "v2/r/req/j/"}
RESPONSE_TOPIC = {V1: "v1/devices/me/rpc/response/", V2: "v2/r/res/", V2J: "v2/r/res/j/"}
#: the subscription whose QoS answers to a form's client-side calls use
RESPONSE_SUBSCRIPTION = {V1: "v1/devices/me/rpc/response/+", V2: "v2/r/res/+", V2J: "v2/r/res/j/+"}

GATEWAY_RPC = "v1/gateway/rpc"
#: where ThingsBoard answers a gateway's ``v1/gateway/attributes/request``
GATEWAY_ATTRIBUTES_RESPONSE = "v1/gateway/attributes/response"
#: Other ThingsBoard topics a device may subscribe to: granted (the SDK
#: subscribes to the attribute topics on every connect), never published.
OTHER_SUBSCRIPTIONS = frozenset({
    "v1/devices/me/rpc/response/+", "v2/r/res/+", "v2/r/res/j/+",
    "v1/devices/me/attributes", "v1/devices/me/attributes/response/+",
    "v2/a", "v2/a/j", "v2/a/res/+", "v2/a/res/j/+",
    "v1/gateway/attributes", GATEWAY_ATTRIBUTES_RESPONSE,
    "v2/fw/response/+", "v2/fw/error", "v2/sw/response/+", "v2/sw/error",
})
#: form -> the subscription that chooses it
RPC_FILTER = {form: topic for topic, form in RPC_SUBSCRIPTIONS.items()}

#: Every topic filter a session may hold that has no device id in it.  A
#: session keeps its subscriptions to them as two bits each in one int,
#: ``known`` (bit 2i: granted, bit 2i+1: at QoS 1), rather than in a dict
#: (~0.25 KiB per connection with its key).  The four that ThingsBoard's
#: SDK subscribes to come first: their bits make a small int, which Python
#: shares, so a connection that holds only those allocates nothing for them.
KNOWN_FILTERS = (
    "v1/devices/me/rpc/request/+", "v1/devices/me/rpc/response/+",
    "v1/devices/me/attributes", "v1/devices/me/attributes/response/+",
    *sorted((set(RPC_SUBSCRIPTIONS) | OTHER_SUBSCRIPTIONS | {GATEWAY_RPC}) - {
        "v1/devices/me/rpc/request/+", "v1/devices/me/rpc/response/+",
        "v1/devices/me/attributes", "v1/devices/me/attributes/response/+"}),
)
_KNOWN_BIT = {topic: 1 << 2 * i for i, topic in enumerate(KNOWN_FILTERS)}
_RPC_BITS = sum(_KNOWN_BIT[topic] for topic in RPC_SUBSCRIPTIONS)
_GATEWAY_BIT = _KNOWN_BIT[GATEWAY_RPC]

_SESSION_LIMITS = "getSessionLimits"
_ATTRIBUTES_REQUEST = "v1/devices/me/attributes/request/"
ATTRIBUTES_RESPONSE = "v1/devices/me/attributes/response/"

_MISSING = object()

#: seconds of silence after which a connection's reader is dropped (see Session._check)
IDLE_TRIM = 5

#: Most filters a session may hold under its own ``{p}/d/{id}/`` (the
#: FLEETRPC form needs two or three); a new one past it is refused with
#: 0x97.  Unbounded, one connection's subscriptions took memory without
#: limit, and the event loop: each SUBSCRIBE re-reads all of them.
MAX_FLEETRPC_FILTERS = 64


class _GatewayReply(msgspec.Struct, gc=False):
    device: str
    id: int
    data: msgspec.Raw = msgspec.Raw(b"null")


class _DeviceName(msgspec.Struct, gc=False):
    device: str


class _Request(msgspec.Struct, gc=False):
    method: str
    params: msgspec.Raw = msgspec.Raw(b"{}")


class _RequestId(msgspec.Struct, gc=False):
    id: str | None = None


_decode_request_id = msgspec.json.Decoder(_RequestId).decode


def _persistent_id(payload: bytes) -> str | None:
    """The id in a persistent call's request (the same on every retry), or
    None.  The dispatcher writes it last, as a string (Dispatcher.submit's
    ``request_id``), so a request not ending in ``"}`` has none and costs
    no decoding."""
    if payload[-2:] != b'"}':
        return None
    try:
        return _decode_request_id(payload).id
    except BAD_JSON:
        return None


def merged_retry(requests: dict | None, ids: dict | None, key: Any, entry: Any) -> Any:
    """A retry of a persistent call (``key``: its id) that went out as a
    request still unanswered: the device's answer to that request now
    answers the retry (``entry`` replaces what its number answers), and the
    replaced entry is returned; None when there is no such request.
    ThingsBoard firmware knows no ids, so a second copy would run the
    command twice (fleetrpc's SDK answers a repeat from memory instead)."""
    n = ids.get(key) if ids else None
    if n is None or not requests or n not in requests:
        return None
    old = requests[n]
    requests[n] = entry
    return old


def remember_id(ids: dict | None, requests: dict | None, key: Any, n: int, limit: int) -> dict:
    """``ids`` with ``key`` (a persistent call's id) sent as request ``n``;
    past ``limit`` entries, those whose request was answered are dropped."""
    if ids is None:
        ids = {}
    ids[key] = n
    if len(ids) > limit:
        live = requests or ()
        ids = {k: m for k, m in ids.items() if m in live}
    return ids


class _GatewayAttributesRequest(msgspec.Struct, gc=False):
    """``v1/gateway/attributes/request``, as ThingsBoard reads it
    (``AbstractGatewaySessionHandler.onDeviceAttributesRequestJson``): all
    of ``id`` (a Java int: its answer carries it back), ``device`` and
    ``client`` required, and ``key`` or ``keys``."""

    id: Annotated[int, msgspec.Meta(ge=-2**31, le=2**31 - 1)]
    device: str
    client: bool
    key: str | None = None
    keys: list[str] | None = None


class _GatewayAttributesAnswer(msgspec.Struct, gc=False):
    id: int
    device: str


class _GatewayData(msgspec.Struct, gc=False):
    id: int
    method: str
    params: msgspec.Raw


class _GatewayRequest(msgspec.Struct, gc=False):
    device: str
    data: _GatewayData


_gateway_reply = msgspec.json.Decoder(_GatewayReply).decode
_gateway_attributes_request = msgspec.json.Decoder(_GatewayAttributesRequest).decode
_device_name = msgspec.json.Decoder(_DeviceName).decode
_request_parts = msgspec.json.Decoder(_Request).decode


class SubDevice:
    """A device behind a gateway session: where its requests go."""

    __slots__ = ("session", "name", "device", "base")

    def __init__(self, session: "Session", name: str, device: str, base: str) -> None:
        self.session = session
        self.name = name
        self.device = device
        self.base = base

    def send_request(self, topic: str, tail_at: int, payload: bytes, token: int, props: dict | None) -> None:
        self.session._send_gateway_request(self, topic[tail_at:], payload, token)


class _Extra:
    """What only some sessions use: made on first use (see Session._extra),
    and dropped again by an idle connection once it holds nothing but
    these defaults (see Session._check)."""

    __slots__ = (
        "gateway", "subdevices", "fr_subs", "fr_req_qos", "requests", "inflight", "next_mid", "waiting", "window",
        "client_max_packet", "written", "paused_since", "calls", "session_expiry", "clean_start", "rate", "early",
        "failure", "base", "rpc_ids",
    )

    def __init__(self, window: int) -> None:
        #: may use the gateway API (from the device's Identity)
        self.gateway = False
        #: gateway sessions: sub-device name -> SubDevice
        self.subdevices: dict[str, SubDevice] | None = None
        #: the FLEETRPC form's granted filters (they start with the session's
        #: ``base``): filter -> QoS
        self.fr_subs: dict[str, int] | None = None
        #: the QoS every REQUEST topic gets from the FLEETRPC filters, or -2
        #: when it depends on the topic (a filter for one node only): then match each
        self.fr_req_qos = -1
        #: request number awaiting a response -> the REQUEST's ``{node}/{rid}``
        #: (this device's), or (sub-device base, ``{node}/{rid}``, sub-device name)
        self.requests: dict[int, str | tuple] | None = None
        #: our unacknowledged QoS 1 PUBLISHes: packet id -> ``confirm`` (see _publish)
        self.inflight: dict[int, Any] | None = None
        #: the last packet id given (they start again at 1 with a new extra:
        #: none is in flight then)
        self.next_mid = 0
        self.waiting: deque | None = None
        self.window = window
        self.client_max_packet = 0
        #: QoS 0 sends whose delivery is confirmed once written (see _publish's ``confirm``)
        self.written: list | None = None
        self.paused_since = 0.0
        #: ids of this session's client-side calls awaiting the dispatcher
        self.calls: set[str] | None = None
        self.session_expiry = 0
        self.clean_start = True
        self.rate = None
        #: bytes received before CONNACK that are not yet handled (see _before_connack)
        self.early: bytearray | None = None
        #: (reason code, why) once a packet handler found the stream
        #: unacceptable (see Session._failed)
        self.failure: tuple[int, str] | None = None
        #: the session's ``base``, kept while it has traffic (see base_of)
        self.base: str | None = None
        #: ThingsBoard forms: a persistent call's id (with the sub-device's
        #: name, for a gateway) -> the request number it went out with (see
        #: Session._merged_retry); entries whose number was answered are stale
        self.rpc_ids: dict[Any, int] | None = None

    def base_of(self, session: "Session") -> str:
        """``session.base``, made once while this extra lives: answers and
        acks are made from it per message."""
        base = self.base
        if base is None:
            base = self.base = session.endpoint._dev_prefix + session.device
        return base

    def trim(self, window: int) -> bool:
        """Drop the empty tables; True when nothing but the defaults is left."""
        if not self.requests:
            self.requests = None
        if not self.inflight:
            self.inflight = None
        if not self.waiting:
            self.waiting = None
        if not self.calls:
            self.calls = None
        if self.rpc_ids is not None:
            requests = self.requests or ()
            self.rpc_ids = {k: n for k, n in self.rpc_ids.items() if n in requests} or None
        return (not self.gateway and self.subdevices is None and self.fr_subs is None and self.fr_req_qos == -1
                and self.requests is None and self.inflight is None and self.waiting is None
                and self.window == window and not self.client_max_packet and self.written is None
                and not self.paused_since and self.calls is None and not self.session_expiry
                and self.clean_start and self.rate is None and self.early is None and self.failure is None
                and self.rpc_ids is None)


class Session(asyncio.Protocol):
    """One device connection (see the module docstring)."""

    # Memory per idle connection matters (100,000 of them on one node):
    # what only some sessions use is in ``extra``, made on first use; the
    # reader of a connection silent for IDLE_TRIM seconds is dropped, and
    # so is an ``extra`` back to its defaults (see _check).
    __slots__ = (
        "endpoint", "transport", "reader", "state", "v5", "device", "client_id", "keepalive", "last_in",
        "out", "known", "form", "rpc_qos", "next_n", "check_bucket", "extra",
    )

    def __init__(self, endpoint: "DeviceEndpoint") -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.reader = None
        self.state = NEW
        self.v5 = False
        #: the device id, once authenticated
        self.device = ""
        self.client_id = ""
        self.keepalive = 0
        #: when bytes last came (before CONNECTED: when the connection was made)
        self.last_in = 0.0
        #: output not yet written: None, one packet, or a list of packets (the
        #: session is in the endpoint's list to flush while it is not None)
        self.out: bytes | list[bytes] | None = None
        #: the granted subscriptions to KNOWN_FILTERS, two bits each (see there)
        self.known = 0
        self.form = -1
        self.rpc_qos = 0
        self.next_n = 0
        #: the endpoint's sweep bucket this session is due in (see DeviceEndpoint._check_at)
        self.check_bucket: set | None = None
        #: what only some sessions use (see _Extra), or None
        self.extra: _Extra | None = None

    def _extra(self) -> _Extra:
        """``extra``, made if the session has none yet."""
        x = self.extra
        if x is None:
            x = self.extra = _Extra(self.endpoint.settings.max_inflight)
        return x

    @property
    def base(self) -> str:
        """``{p}/d/{device}``: where the device's fleetrpc topics start (made
        when used, and kept in ``extra`` while there is traffic: ~70 bytes
        per idle connection if always kept)."""
        x = self.extra
        return self.endpoint._dev_prefix + self.device if x is None else x.base_of(self)

    @property
    def gateway(self) -> bool:
        """May use the gateway API (from the device's Identity)."""
        x = self.extra
        return x is not None and x.gateway

    @property
    def clean_start(self) -> bool:
        x = self.extra
        return x is None or x.clean_start

    @property
    def session_expiry(self) -> int:
        x = self.extra
        return 0 if x is None else x.session_expiry

    @property
    def calls(self) -> set[str] | None:
        x = self.extra
        return None if x is None else x.calls

    @property
    def subdevices(self) -> dict[str, SubDevice] | None:
        x = self.extra
        return None if x is None else x.subdevices

    @property
    def early(self) -> bytearray | None:
        x = self.extra
        return None if x is None else x.early

    @property
    def paused_since(self) -> float:
        x = self.extra
        return 0.0 if x is None else x.paused_since

    # -- subscriptions held -------------------------------------------------------

    def granted(self, topic: str) -> int:
        """The QoS of this session's subscription to exactly ``topic``, or -1."""
        bit = _KNOWN_BIT.get(topic)
        if bit is not None:
            known = self.known
            return (1 if known & bit << 1 else 0) if known & bit else -1
        x = self.extra
        fr = x.fr_subs if x is not None else None
        return fr.get(topic, -1) if fr else -1

    def subscriptions(self) -> dict[str, int]:
        """Every granted subscription, filter -> QoS; the one that chose the
        session's form last (subscribing to them in this order gives the
        same form: a stored session is restored so)."""
        known = self.known
        subs = {f: 1 if known & bit << 1 else 0 for f, bit in _KNOWN_BIT.items() if known & bit}
        x = self.extra
        if x is not None and x.fr_subs:
            subs.update(x.fr_subs)
        chose = RPC_FILTER.get(self.form)
        if chose in subs:
            subs[chose] = subs.pop(chose)
        return subs

    def _grant(self, topic: str, q: int) -> None:
        bit = _KNOWN_BIT.get(topic)
        if bit is not None:
            self.known = (self.known & ~(bit | bit << 1)) | bit | (bit << 1 if q else 0)
        else:
            x = self._extra()
            if x.fr_subs is None:
                x.fr_subs = {}
            x.fr_subs[topic] = q

    def _revoke(self, topic: str) -> bool:
        """Drop the subscription to exactly ``topic``; False if there was none."""
        bit = _KNOWN_BIT.get(topic)
        if bit is not None:
            if not self.known & bit:
                return False
            self.known &= ~(bit | bit << 1)
            return True
        x = self.extra
        if x is None or not x.fr_subs or x.fr_subs.pop(topic, None) is None:
            return False
        if not x.fr_subs:
            x.fr_subs = None
        return True

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ep = self.endpoint
        self.last_in = ep._loop.time()
        if not ep._accept(self):
            transport.abort()
            return
        # TCP_NODELAY: uvloop and asyncio set it on every TCP transport.
        # The peer address is looked up only when a log line needs it: it
        # costs ~100 bytes per idle connection.
        transport.set_write_buffer_limits(high=ep.settings.write_high_water)  # type: ignore[attr-defined]

    def _new_reader(self):
        # The compiled reader frames everything after CONNECT.  It catches
        # what its callbacks raise (and reads on), so the callbacks record a
        # protocol failure instead of raising (see _failed).
        return _core.MqttReader(self._on_publish, self._on_packet, self.v5, self._on_puback, self._on_props)

    def data_received(self, data: bytes) -> None:
        ep = self.endpoint
        self.last_in = ep._loop.time()
        reader = self.reader
        if reader is None:
            state = self.state
            if state == CONNECTED:
                if data == P.PINGREQ_PACKET:
                    # An idle device's keepalive, once a minute or so: answered
                    # without a reader, which would otherwise live on until the
                    # next sweep (~0.4 KiB per idle connection, most of the time).
                    self._write(P.PINGRESP_PACKET)
                    return
                reader = self.reader = self._new_reader()  # dropped while idle
            elif state == CLOSED:
                return
            else:
                self._before_connack(data)
                return
        elif self.state == CLOSED:
            return
        failure = None
        try:
            reader.feed(data)
        except CodecError as exc:  # the reader's own: a broken stream
            failure = (P.MALFORMED_PACKET, str(exc))
        except Exception:  # our bug: lose this connection, never the endpoint
            log.exception("device session %s: reading failed", self._who())
            failure = (P.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")
        if self.state == FAILING:
            self.state = CONNECTED
        if failure is None:
            x = self.extra
            if x is not None:
                failure = x.failure
        if failure is not None:
            self._fail(*failure)
            return
        if self.state == CLOSED:
            return
        if reader.buffered > ep._max_packet:
            self._fail(P.PACKET_TOO_LARGE, f"packet larger than {ep._max_packet} bytes")
            return
        acks = reader.take_acks()
        if acks:
            self._write(acks)

    def _before_connack(self, data: bytes) -> None:
        """Bytes before the session is connected: the first packet must be
        CONNECT; what follows it waits in ``early`` until authentication
        has answered (reading is paused meanwhile)."""
        x = self.extra
        buf = x.early if x is not None else None
        if buf is not None:
            # grown in place: joined anew with each piece, a CONNECT sent a
            # byte at a time cost its size squared in copying
            buf += data
            x.early = None
        else:
            buf = data
        ep = self.endpoint
        if self.state == AUTHENTICATING:
            self._keep_early(buf)
            if len(buf) > ep._max_packet:
                self._fail(P.PACKET_TOO_LARGE, f"{len(buf)} bytes sent before CONNACK")
            return
        n = len(buf)
        if n and buf[0] & 0xF0 != P.CONNECT:
            self._fail(P.PROTOCOL_ERROR, "first packet is not CONNECT")
            return
        length, mult, i = 0, 1, 1
        while True:
            if i >= n:
                if buf:
                    self._keep_early(buf)
                return
            b = buf[i]
            length += (b & 0x7F) * mult
            i += 1
            if not b & 0x80:
                break
            mult *= 128
            if mult > 128 * 128 * 128:
                self._fail(P.MALFORMED_PACKET, "malformed MQTT remaining length")
                return
        if length > ep._max_packet:
            self._fail(P.PACKET_TOO_LARGE, "CONNECT too large")
            return
        end = i + length
        if end > n:
            self._keep_early(buf)
            return
        if end < n:
            self._keep_early(buf[end:])
        try:
            self._on_connect(buf[0] & 0x0F, bytes(buf[i:end]))
        except CodecError as exc:
            self._fail(exc.reason if isinstance(exc, P.ProtocolError) else P.MALFORMED_PACKET, str(exc))
            return
        if self.state == CONNECTED:
            self._after_connack()

    def _keep_early(self, data: bytes | bytearray) -> None:
        """Keep ``data`` (bytes before CONNACK) until more come or the
        session is connected, in a buffer that grows in place."""
        self._extra().early = data if data.__class__ is bytearray else bytearray(data)

    def _after_connack(self) -> None:
        """Handle what the device sent after CONNECT, now that it is connected."""
        x = self.extra
        if x is None or x.early is None:
            return
        early, x.early = x.early, None
        if early:
            self.data_received(bytes(early))

    def _failed(self, exc: BaseException) -> None:
        """A packet handler's error: the connection closes once the reader
        returns (see data_received), and nothing after this packet is
        handled (the handlers do nothing unless the state is CONNECTED)."""
        if isinstance(exc, P.ProtocolError):
            failure = (exc.reason, str(exc))
        elif isinstance(exc, CodecError):
            failure = (P.MALFORMED_PACKET, str(exc))
        else:  # our bug: lose this connection, never the endpoint
            log.error("device session %s: packet handler failed", self._who(), exc_info=exc)
            failure = (P.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")
        self._extra().failure = failure
        if self.state == CONNECTED:
            self.state = FAILING

    def eof_received(self) -> bool:
        return False  # close the transport: a half-closed device is gone

    def pause_writing(self) -> None:
        self._extra().paused_since = self.endpoint._loop.time()
        self.endpoint._paused.add(self)

    def resume_writing(self) -> None:
        x = self._extra()
        x.paused_since = 0.0
        self.endpoint._paused.discard(self)
        if x.written:
            self._confirm_written()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.endpoint._lost(self)
        self.reader = None
        self.out = None
        x = self.extra
        if x is not None:
            x.requests = x.inflight = x.waiting = x.written = x.early = None
        self.transport = None

    # -- closing ------------------------------------------------------------------

    def _who(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{self.device or '?'}@{peer}"

    def _fail(self, reason: int, why: str) -> None:
        """Close for a protocol reason: MQTT 5 sessions hear why first."""
        ep = self.endpoint
        ep.stats.count_close(reason)
        log.info("device session %s closed: %s (0x%02x)", self._who(), why, reason)
        self.close(reason)

    def close(self, reason: int = P.SUCCESS, tell: bool = True) -> None:
        """Close the connection; a connected MQTT 5 session gets a DISCONNECT
        with ``reason`` first (3.1.1 servers can only close), unless ``tell``
        is False (the device disconnected itself)."""
        transport = self.transport
        if transport is None or self.state == CLOSED:
            return
        if tell and self.v5 and self.state == CONNECTED:
            self._write(P.disconnect(reason))
        self._flush()
        self.state = CLOSED
        self.endpoint._detach(self)
        transport.close()

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent output."""
        if self.transport is not None:
            self.state = CLOSED
            self.endpoint._detach(self)
            self.transport.abort()

    def _check(self, now: float) -> None:
        """Called by the endpoint's sweep: connect timeout and keepalive.
        The connection is due again at some time until it is lost: the
        sweep's buckets are where the endpoint finds its open connections."""
        state = self.state
        ep = self.endpoint
        if state == CONNECTED:
            last_in = self.last_in
            deadline = last_in + 1.5 * self.keepalive
            if now < deadline:
                reader = self.reader
                if reader is not None:
                    if now - last_in >= IDLE_TRIM and not reader.buffered:
                        # A silent connection does without its reader (~0.4 KiB
                        # with its bound callbacks); the next bytes make a new one.
                        self.reader = None
                    else:
                        deadline = min(deadline, last_in + IDLE_TRIM)
                x = self.extra
                if x is not None and self.reader is None and x.trim(ep.settings.max_inflight):
                    self.extra = None  # (its empty tables and defaults: ~0.2 KiB)
                ep._check_at(self, deadline)
                return
            self._fail(P.KEEP_ALIVE_TIMEOUT, f"silent for 1.5 x {self.keepalive} s")
        elif state != CLOSED:
            # Not connected yet: the sweep calls only once the connect
            # timeout has passed (the endpoint asked for that time when it
            # accepted the connection, and nothing else before CONNECTED).
            ep.stats.closed_connect_timeout += 1
            self.abort()
        if self.transport is not None:  # closing: open until connection_lost
            ep._check_at(self, now + IDLE_TRIM)

    # -- output -----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        out = self.out
        if out is None:
            self.out = data  # the usual case: one packet, no list
            self.endpoint._mark_dirty(self)
        elif out.__class__ is list:
            out.append(data)
        else:
            self.out = [out, data]

    def _flush(self) -> None:
        out = self.out
        transport = self.transport
        if out is None or transport is None or self.state == CLOSED:
            return
        self.out = None
        transport.write(b"".join(out) if out.__class__ is list else out)
        x = self.extra
        if x is None:
            return
        if x.paused_since:
            if transport.get_write_buffer_size() > self.endpoint.settings.max_write_buffer:
                self.endpoint.stats.closed_slow_reader += 1
                log.info("device session %s dropped: write buffer over the maximum", self._who())
                self.abort()
        elif x.written:
            self._confirm_written()

    def _confirm_written(self) -> None:
        x = self.extra
        written, x.written = x.written, None
        for confirm in written:
            self._confirm(confirm)

    def _confirm(self, confirm: Any) -> None:
        """The device has a PUBLISH (see _publish's ``confirm``)."""
        if confirm.__class__ is str:
            x = self.extra  # (a str confirm is a request's: the session has its extra)
            self.endpoint._deliver((x.base or x.base_of(self)) + "/ack/" + confirm, b"")
        elif confirm.__class__ is int:
            self.endpoint.on_published(confirm)
        else:
            self.endpoint._deliver(confirm[0] + "/ack/" + confirm[1], b"")

    def _publish(self, topic: str, payload: bytes, qos: int, confirm: Any, props: dict | None = None) -> None:
        """Send one PUBLISH to the device.  With QoS 1 its PUBACK, with QoS 0
        its writing, confirms delivery to the owner, as ``confirm`` says:
        None, nothing; an int, ``on_published(token)``; a str, an ACK
        ``{base}/ack/{confirm}`` for this device; a tuple ``(base, tail)``,
        an ACK for a gateway's sub-device.  (Plain values rather than one
        tuple per message: fewer objects for the garbage collector.)"""
        if self.state != CONNECTED:
            return
        x = self.extra
        if x is not None:
            limit = x.client_max_packet
            if limit and len(payload) + len(topic) + 16 > limit:
                self.endpoint.stats.too_large_for_device += 1
                return
        if qos:
            if x is None:
                x = self._extra()
            inflight = x.inflight
            if inflight is None:
                inflight = x.inflight = {}
            elif len(inflight) >= x.window:
                waiting = x.waiting
                if waiting is None:
                    waiting = x.waiting = deque()
                elif len(waiting) >= self.endpoint.settings.max_pending_responses:
                    # A device that never acknowledges must not hold requests
                    # without bound: the oldest goes (its call times out).
                    waiting.popleft()
                    self.endpoint.stats.undeliverable += 1
                waiting.append((topic, payload, confirm, props))
                return
            mid = x.next_mid
            while True:
                mid = mid + 1 if mid < 65535 else 1
                if mid not in inflight:
                    break
            x.next_mid = mid
            inflight[mid] = confirm
        else:
            mid = 0
            if confirm is not None:
                if x is None:
                    x = self._extra()
                if x.written is None:
                    x.written = []
                x.written.append(confirm)
        if props and self.v5:
            pkt = _encode_publish(topic, payload, qos, mid, False, True,
                                  props.get("response_topic"), props.get("correlation_data"))
        else:
            pkt = _encode_publish(topic, payload, qos, mid, False, self.v5)
        out = self.out  # _write, inlined: this is the hot path
        if out is None:
            self.out = pkt
            self.endpoint._mark_dirty(self)
        elif out.__class__ is list:
            out.append(pkt)
        else:
            self.out = [out, pkt]

    def _on_puback(self, mid: int) -> None:
        x = self.extra
        inflight = x.inflight if x is not None else None
        confirm = inflight.pop(mid, _MISSING) if inflight else _MISSING
        if confirm is _MISSING:
            return  # a duplicate or unknown PUBACK: nothing to confirm
        if confirm is not None:
            self._confirm(confirm)
        waiting = x.waiting
        if waiting:
            while waiting and len(inflight) < x.window:
                topic, payload, confirm, props = waiting.popleft()
                self._publish(topic, payload, 1, confirm, props)

    # -- requests from the dispatcher ----------------------------------------------------

    def send_request(self, topic: str, tail_at: int, payload: bytes, token: int, props: dict | None) -> None:
        """A REQUEST ``{p}/d/{device}/req/{node}/{rid}`` for this session's
        device; ``tail_at`` is where ``{node}/{rid}`` starts in ``topic``."""
        form = self.form
        if form == FLEETRPC:
            qos = self.extra.fr_req_qos  # (the FLEETRPC form has its filters there)
            if qos == -2:
                qos = self._fr_qos(topic)
            if qos >= 0:
                self._publish(topic, payload, qos, token if token >= 0 else None, props)
            return
        tail = topic[tail_at:]
        if token < 0:
            x = self.extra
            if x is None:
                x = self._extra()
            rpc_id = _persistent_id(payload)
            if rpc_id is not None and self._merged_retry(x, rpc_id, tail, tail):
                return
            n = self.next_n = self.next_n + 1 if self.next_n < 2147483647 else 1
            requests = x.requests
            if requests is None:
                requests = x.requests = {}
            requests[n] = tail
            if len(requests) > self.endpoint.settings.max_pending_responses:
                del requests[next(iter(requests))]
            if rpc_id is not None:
                self._remember_id(x, rpc_id, n)
            self._publish(REQUEST_TOPIC[form] + str(n), payload, self.rpc_qos, tail)
        else:
            n = self.next_n = self.next_n + 1 if self.next_n < 2147483647 else 1
            self._publish(REQUEST_TOPIC[form] + str(n), payload, self.rpc_qos, token)

    def _send_gateway_request(self, sub: SubDevice, tail: str, payload: bytes, token: int) -> None:
        try:
            req = _request_parts(payload)
        except BAD_JSON:
            self.endpoint.stats.undeliverable += 1
            return
        if token < 0:
            x = self._extra()
            rpc_id = _persistent_id(payload)
            key = (sub.name, rpc_id)
            if rpc_id is not None and self._merged_retry(x, key, (sub.base, tail, sub.name), (sub.base, tail)):
                return
            n = self.next_n = self.next_n + 1 if self.next_n < 2147483647 else 1
            requests = x.requests
            if requests is None:
                requests = x.requests = {}
            requests[n] = (sub.base, tail, sub.name)
            if len(requests) > self.endpoint.settings.max_pending_responses:
                del requests[next(iter(requests))]
            if rpc_id is not None:
                self._remember_id(x, key, n)
        else:
            n = self.next_n = self.next_n + 1 if self.next_n < 2147483647 else 1
        body = _json(_GatewayRequest(sub.name, _GatewayData(n, req.method, req.params)))
        self._publish(GATEWAY_RPC, body, self.granted(GATEWAY_RPC), token if token >= 0 else (sub.base, tail))

    def _merged_retry(self, x: _Extra, key: Any, entry: Any, confirm: Any) -> bool:
        """See :func:`merged_retry`; the retry is delivered (the first copy
        is on this connection already)."""
        if merged_retry(x.requests, x.rpc_ids, key, entry) is None:
            return False
        self.endpoint.stats.retries_merged += 1
        self._confirm(confirm)
        return True

    def _remember_id(self, x: _Extra, key: Any, n: int) -> None:
        x.rpc_ids = remember_id(x.rpc_ids, x.requests, key, n, self.endpoint.settings.max_pending_responses)

    def send_answer(self, topic: str, payload: bytes, qos: int, props: dict | None = None) -> None:
        """The dispatcher's answer to one of this session's client-side calls."""
        self._publish(topic, payload, qos, None, props)

    def _fr_filters(self):
        """This session's FLEETRPC-form subscriptions: (filter, QoS)."""
        x = self.extra
        return list(x.fr_subs.items()) if x is not None and x.fr_subs else []

    def _fr_filters_changed(self) -> None:
        # A level with NUL matches no literal filter level: what matches this
        # topic matches every REQUEST topic of the device.
        base = self.base
        any_req = (base + "/req/\x00/\x00").split("/")
        qos = -1
        specific = False
        nbase = base.count("/") + 1
        for f, q in self._fr_filters():
            flevels = f.split("/")
            if levels_match(flevels, any_req):
                qos = max(qos, q)
            elif flevels[nbase:nbase + 1] in (["req"], ["+"]):
                specific = True
        self._extra().fr_req_qos = -2 if specific else qos

    def _fr_qos(self, topic: str) -> int:
        """The QoS of this session's FLEETRPC-form subscription matching
        ``topic``, or -1.  (Filters are split here, when used, rather than
        kept split: they are matched rarely, and kept per connection.)"""
        best = -1
        levels = None
        for f, qos in self._fr_filters():
            if f == topic:
                ok = True
            else:
                if levels is None:
                    levels = topic.split("/")
                ok = levels_match(f.split("/"), levels)
            if ok and qos > best:
                best = qos
        return best

    # -- inbound packets -------------------------------------------------------------

    def _on_packet(self, cmd: int, body: bytes) -> None:
        if self.state != CONNECTED:
            return  # closed or failing: the rest of this read is ignored
        try:
            self._packet(cmd, body)
        except Exception as exc:
            self._failed(exc)

    def _packet(self, cmd: int, body: bytes) -> None:
        kind = cmd & 0xF0
        if kind == 0xC0:  # PINGREQ
            if cmd != P.PINGREQ or body:
                raise P.ProtocolError("malformed PINGREQ")
            self._write(P.PINGRESP_PACKET)
        elif kind == 0x80:
            self._on_subscribe(cmd & 0x0F, body)
        elif kind == 0xA0:
            self._on_unsubscribe(cmd & 0x0F, body)
        elif kind == 0xE0:
            reason, props = P.parse_disconnect(body, self.v5)
            expiry = props.get("session_expiry_interval")
            if expiry is not None:
                if expiry and not self.session_expiry:
                    raise P.ProtocolError("session expiry raised from 0 at DISCONNECT", P.PROTOCOL_ERROR)
                if expiry or self.extra is not None:
                    self._extra().session_expiry = min(expiry, self.endpoint.settings.max_session_expiry)
            # MQTT 5 (3.14): the server sends no DISCONNECT after the client's own
            self.close(tell=False)
        elif kind == 0x30:  # QoS 2 (the reader takes QoS 0 and 1)
            raise P.ProtocolError("QoS 2 is not supported", P.QOS_NOT_SUPPORTED)
        elif kind == 0x10:
            raise P.ProtocolError("second CONNECT", P.PROTOCOL_ERROR)
        else:
            raise P.ProtocolError(f"unexpected packet type 0x{cmd:02x}", P.PROTOCOL_ERROR)

    def _on_connect(self, flags: int, body: bytes) -> None:
        ep = self.endpoint
        try:
            c = P.parse_connect(flags, body)
        except P.UnsupportedVersion as exc:
            # answered in the version the client asked for where that is 3.1.1-like
            self._refuse(P.UNSUPPORTED_PROTOCOL_VERSION, v5=exc.level == 5)
            return
        self.v5 = v5 = c.version == 5
        props = c.properties
        if "authentication_method" in props:
            self._refuse(P.BAD_AUTHENTICATION_METHOD)
            return
        if not c.client_id:
            if not c.clean_start and not v5:
                self._refuse(P.CLIENT_IDENTIFIER_NOT_VALID)
                return
        self.client_id = c.client_id
        if not c.clean_start:
            self._extra().clean_start = False
        s = ep.settings
        self.keepalive = c.keepalive if 0 < c.keepalive <= s.max_keepalive else s.max_keepalive
        if v5:
            expiry = min(props.get("session_expiry_interval", 0), s.max_session_expiry)
            if expiry:
                self._extra().session_expiry = expiry
            rm = props.get("receive_maximum")
            if rm == 0 or props.get("maximum_packet_size") == 0:
                raise P.ProtocolError("receive maximum or maximum packet size of 0", P.PROTOCOL_ERROR)
            if rm and rm < s.max_inflight:
                self._extra().window = rm
            if props.get("maximum_packet_size"):
                self._extra().client_max_packet = props["maximum_packet_size"]
        elif not c.clean_start:
            self._extra().session_expiry = s.max_session_expiry
        if not c.username and not s.mqtt_basic:
            ep.stats.refused_auth += 1
            self._refuse(P.BAD_USER_NAME_OR_PASSWORD)
            return
        password = None
        if c.password is not None:
            try:
                password = c.password.decode("utf-8")
            except UnicodeDecodeError:
                ep.stats.refused_auth += 1
                self._refuse(P.BAD_USER_NAME_OR_PASSWORD)
                return
        self.state = AUTHENTICATING
        try:
            result = ep._authenticate(c.username or "", password, c.client_id)
        except Exception as exc:
            self._authenticate_failed(exc)
            return
        if inspect.isawaitable(result):
            self.transport.pause_reading()  # what comes meanwhile waits in the socket
            ep._spawn(self._await_identity(result, c))
            # the answer's own time (auth_timeout) replaces what was left of
            # the connect timeout; this check is only the backstop
            ep._check_at(self, self.last_in + s.auth_timeout + 1)
            return
        self._connected(result, c)

    def _authenticate_failed(self, exc: BaseException) -> None:
        """authenticate() raised: the device is told "server unavailable".
        A store error (the registry's database is down) is expected in an
        outage and logged in summaries; anything else is a bug: a traceback."""
        ep = self.endpoint
        if isinstance(exc, StoreError):
            ep.stats.refused_unavailable += 1
            ep.auth_failures.note("registry_unavailable", "connection from %s: the device registry "
                                  "cannot be read (%s)", self._who(), exc)
        else:
            log.exception("authenticate() failed for a connection from %s", self._who(), exc_info=exc)
        self._refuse(P.SERVER_UNAVAILABLE)

    async def _await_identity(self, awaitable, c: P.Connect) -> None:
        ep = self.endpoint
        try:
            result = await asyncio.wait_for(awaitable, ep.settings.auth_timeout)
        except asyncio.TimeoutError:
            # A lookup that never answers (a hung registry query) must not keep
            # the connection, nor this task, forever: "server unavailable", as
            # for a registry that cannot be read.
            if self.state == AUTHENTICATING:
                ep.stats.refused_unavailable += 1
                ep.auth_failures.note("registry_timeout", "connection from %s: the device registry did not "
                                      "answer within auth_timeout (%g s)", self._who(), ep.settings.auth_timeout)
                self._refuse(P.SERVER_UNAVAILABLE)
            return
        except Exception as exc:
            if self.state == AUTHENTICATING:
                self._authenticate_failed(exc)
            return
        if self.state != AUTHENTICATING:
            return  # the connection went away meanwhile
        self._connected(result, c)
        if self.state != CONNECTED or self.transport is None:
            return
        self._after_connack()
        if self.state == CONNECTED and self.transport is not None:
            self.transport.resume_reading()

    def _connected(self, result: Any, c: P.Connect) -> None:
        ep = self.endpoint
        identity = ep._identity(result)
        if identity is None:
            ep.stats.refused_auth += 1
            self._refuse(P.NOT_AUTHORIZED)
            return
        if identity.gateway:
            self._extra().gateway = True
        self.device = identity.device_id
        self.state = CONNECTED
        rate = ep._rate_limit(self.device)
        if rate is not None:
            self._extra().rate = rate
        assigned = not c.client_id
        if assigned:  # MQTT 5 lets the server choose (3.1.1 was refused above unless clean)
            self.client_id = ep._assign_client_id()
        session_present = ep._register(self)
        props: dict[int, Any] = {}
        if self.v5:
            s = ep.settings
            props[0x24] = 1                     # Maximum QoS
            props[0x25] = 0                     # Retain Available: no
            props[0x27] = ep._max_packet        # Maximum Packet Size
            props[0x21] = s.max_inflight        # Receive Maximum
            props[0x2A] = 0                     # Shared Subscription Available: no
            props[0x29] = 0                     # Subscription Identifiers Available: no
            if c.keepalive != self.keepalive:
                props[0x13] = self.keepalive    # Server Keep Alive
            if assigned:
                props[0x12] = self.client_id    # Assigned Client Identifier
            asked = c.properties.get("session_expiry_interval", 0)
            if asked != self.session_expiry:
                props[0x11] = self.session_expiry
        self._write(P.connack(self.v5, P.SUCCESS, session_present, props))
        ep._check_at(self, min(self.last_in + 1.5 * self.keepalive, self.last_in + IDLE_TRIM))
        if session_present:
            ep._restore(self)

    def _refuse(self, reason: int, v5: bool | None = None) -> None:
        """CONNACK with a refusal, then close."""
        self.state = CLOSED
        if self.transport is not None:
            self.transport.write(P.connack(self.v5 if v5 is None else v5, reason))
            self.transport.close()

    # -- subscriptions ---------------------------------------------------------------

    def _on_subscribe(self, flags: int, body: bytes) -> None:
        mid, subs = P.parse_subscribe(flags, body, self.v5)
        codes = [self.subscribe(topic, qos) for topic, qos, _ in subs]
        self._write(P.suback(mid, codes, self.v5))

    def subscribe(self, topic: str, qos: int) -> int:
        """Grant (returns the QoS) or refuse (returns a reason code >= 0x80)
        one subscription; reachability and presence follow."""
        ep = self.endpoint
        q = 1 if qos else 0
        if not P.valid_filter(topic):
            return P.TOPIC_FILTER_INVALID
        form = RPC_SUBSCRIPTIONS.get(topic)
        if form is not None:
            self._grant(topic, q)
            self.form = form
            self.rpc_qos = q
            ep._add_route(self.device, self)
            return q
        if topic in OTHER_SUBSCRIPTIONS:
            self._grant(topic, q)
            return q
        if topic == GATEWAY_RPC:
            if not self.gateway:
                return P.NOT_AUTHORIZED
            self._grant(topic, q)
            for sub in (self.subdevices or {}).values():
                ep._add_route(sub.device, sub)
            return q
        base = self.base
        if topic.startswith(base) and topic[len(base):len(base) + 1] in ("/", ""):
            x = self.extra
            fr = x.fr_subs if x is not None else None
            if fr is not None and len(fr) >= MAX_FLEETRPC_FILTERS and topic not in fr:
                return P.QUOTA_EXCEEDED
            self._grant(topic, q)
            self._fr_filters_changed()
            if _takes_requests(base, topic):
                self.form = FLEETRPC
                ep._add_route(self.device, self)
            return q
        return P.NOT_AUTHORIZED

    def _on_unsubscribe(self, flags: int, body: bytes) -> None:
        mid, topics = P.parse_unsubscribe(flags, body, self.v5)
        codes = [self.unsubscribe(t) for t in topics]
        self._write(P.unsuback(mid, codes, self.v5))

    def unsubscribe(self, topic: str) -> int:
        ep = self.endpoint
        if not self._revoke(topic):
            return 0x11  # No subscription existed
        if topic == GATEWAY_RPC:
            for sub in (self.subdevices or {}).values():
                ep._remove_route(sub.device, sub)
        elif topic in RPC_SUBSCRIPTIONS:
            self._form_after_unsubscribe()
        elif topic.startswith(self.base):
            self._fr_filters_changed()
            self._form_after_unsubscribe()
        return P.SUCCESS

    def _form_after_unsubscribe(self) -> None:
        """A request subscription went: the session keeps its form while that
        form's subscription is held, else takes another form whose request
        subscription it still holds (a device may hold ThingsBoard's and
        fleetrpc's at once); with none left it is no longer reachable."""
        form = self.form
        if form == FLEETRPC:
            if self._fr_takes_requests():
                return
        elif form >= 0 and self.known & _KNOWN_BIT[RPC_FILTER[form]]:
            return
        for topic, other in RPC_SUBSCRIPTIONS.items():
            q = self.granted(topic)
            if q >= 0:
                self.form = other
                self.rpc_qos = q
                return
        if self._fr_takes_requests():
            self.form = FLEETRPC
            return
        self.form = -1
        self.endpoint._remove_route(self.device, self)

    def _fr_takes_requests(self) -> bool:
        """Some FLEETRPC-form filter held matches this device's REQUEST topics."""
        base = self.base
        return any(_takes_requests(base, f) for f, _ in self._fr_filters())

    # -- inbound PUBLISH -------------------------------------------------------------

    def _on_props(self, topic: str, payload: bytes, raw: bytes) -> None:
        if self.state != CONNECTED:
            return  # closed or failing
        try:
            props = P.parse_publish_properties(raw)
            if "topic_alias" in props:
                raise P.ProtocolError("topic alias used (Topic Alias Maximum is 0)", P.PROTOCOL_ERROR)
        except Exception as exc:
            self._failed(exc)
            return
        self._on_publish(topic, payload, props)

    def _on_publish(self, topic: str, payload: bytes, props: dict | None) -> None:
        if self.state != CONNECTED:
            return  # closed or failing: the rest of this read is ignored
        try:
            ep = self.endpoint
            if len(payload) > ep.settings.max_payload:
                raise P.ProtocolError(f"payload of {len(payload)} bytes (at most {ep.settings.max_payload})",
                                      P.PACKET_TOO_LARGE)
            x = self.extra
            if x is not None:
                rate = x.rate
                if rate is not None and not rate.take(self.last_in):
                    raise P.ProtocolError("message rate limit exceeded", P.MESSAGE_RATE_TOO_HIGH)
                if self.form == FLEETRPC:
                    # The SDK form's usual message, a reply or an ack of this
                    # session's device (a session that is sent requests has
                    # its extra).  Slices, not str.startswith, on this path: on
                    # Python 3.11 startswith parses its arguments from a
                    # tuple, twice a slice's cost.
                    base = x.base or x.base_of(self)
                    n = len(base)
                    if topic[n:n + 5] in _ANSWER_KINDS and topic[:n] == base:
                        ep._deliver(topic, payload)
                        return
            if topic[:27] == "v1/devices/me/rpc/response/":  # (the same, for ThingsBoard's form)
                self._on_response(topic[27:], payload)
            elif topic.startswith("v1/devices/me/rpc/"):
                if topic.startswith("request/", 18):
                    self._on_client_call(topic[26:], payload, V1)
                else:
                    ep.stats.ignored += 1
            elif topic.startswith(ep._dev_prefix):
                self._on_fleetrpc_publish(topic, payload, props)
            elif topic.startswith("v2/r/"):
                if topic.startswith("v2/r/res/j/"):
                    self._on_response(topic[11:], payload)
                elif topic.startswith("v2/r/res/"):
                    self._on_response(topic[9:], payload)
                elif topic.startswith("v2/r/req/j/"):
                    self._on_client_call(topic[11:], payload, V2J)
                elif topic.startswith("v2/r/req/"):
                    self._on_client_call(topic[9:], payload, V2)
                else:
                    ep.stats.ignored += 1
            elif topic.startswith("v1/gateway/"):
                self._on_gateway_publish(topic[11:], payload)
            elif topic.startswith(_ATTRIBUTES_REQUEST):
                self._no_attributes(topic[len(_ATTRIBUTES_REQUEST):], ATTRIBUTES_RESPONSE)
            elif topic.startswith("v2/a/req/j/"):
                self._no_attributes(topic[11:], "v2/a/res/j/")
            elif topic.startswith("v2/a/req/"):
                self._no_attributes(topic[9:], "v2/a/res/")
            elif not topic:
                raise P.ProtocolError("PUBLISH with an empty topic", P.TOPIC_NAME_INVALID)
            else:
                # attributes, telemetry, claims, firmware: not fleetrpc's business
                ep.stats.ignored += 1
        except Exception as exc:  # the reader would swallow it: see _new_reader
            self._failed(exc)

    def _no_attributes(self, n_text: str, answers: str) -> None:
        """An attribute request ``.../{n_text}``: fleetrpc keeps no
        attributes, so the answer is none (``{}`` on ``{answers}{n}``),
        rather than silence.  Firmware commonly asks for its shared
        attributes at boot and waits for the answer.  ThingsBoard reads the
        id as an integer: a request without one is ignored, as a client-side
        call's is (its answer topic could even exceed MQTT's 65,535 bytes)."""
        ep = self.endpoint
        if _number(n_text) is None:
            ep.stats.ignored += 1
            return
        ep.stats.attribute_requests += 1
        qos = self.granted(answers + "+")
        if qos >= 0:
            self._publish(answers + n_text, b"{}", qos, None)

    def _on_response(self, n_text: str, payload: bytes) -> None:
        ep = self.endpoint
        n = _number(n_text)
        x = self.extra
        requests = x.requests if x is not None else None
        tail = requests.pop(n, None) if n is not None and requests else None
        if tail.__class__ is not str:
            if tail is not None:  # a gateway's request answered on the device topic
                requests[n] = tail
            ep.stats.unknown_response += 1
            return
        ep.stats.responses += 1
        ep._deliver((x.base or x.base_of(self)) + "/res/" + tail, payload)

    def _on_client_call(self, n_text: str, payload: bytes, form: int) -> None:
        ep = self.endpoint
        n = _number(n_text)
        if n is None:
            ep.stats.ignored += 1
            return
        answer = RESPONSE_TOPIC[form] + n_text
        qos = max(self.granted(RESPONSE_SUBSCRIPTION[form]), 0)
        try:
            check_json_depth(payload)
            request = REQUEST_DECODER.decode(payload)
        except BAD_JSON as exc:
            self.send_answer(answer, error_reply("INVALID_REQUEST", f"not a {{method, params}} object: {exc}"), qos)
            return
        if request.method == _SESSION_LIMITS:
            ep.stats.session_limits += 1
            self.send_answer(answer, ep._session_limits(self.gateway), qos)
            return
        x = self._extra()
        if x.calls is None:
            x.calls = set()
        if len(x.calls) >= ep.settings.max_client_calls:
            self.send_answer(answer, error_reply("TOO_MANY_REQUESTS", "too many calls awaiting an answer"), qos)
            return
        cid = ep._new_call(self, answer, qos, None)
        x.calls.add(cid)
        ep.stats.client_calls += 1
        ep._deliver(x.base_of(self) + "/call/" + cid, payload)

    def _on_fleetrpc_publish(self, topic: str, payload: bytes, props: dict | None) -> None:
        ep = self.endpoint
        # ``topic`` starts with the devices' root (the caller checked): is
        # the device this one?  (Without making ``base``: a session without
        # its extra keeps none; _on_publish took the usual replies already.)
        device = self.device
        i = len(ep._dev_prefix)
        n = i + len(device)
        if not (topic.startswith(device, i) and topic[n:n + 1] == "/"):
            ep.stats.refused_topic += 1
            ep.refusals.note("refused_topic", "device %s published on %r, which is not its own: dropped",
                             self.device, topic)
            return
        j = topic.find("/", n + 1)
        kind = topic[n + 1:j] if j > 0 else topic[n + 1:]
        if kind == "call":
            self._on_fleetrpc_call(topic[j + 1:] if j > 0 else "", payload, props)
        elif kind in ("res", "ack", "presence", "hb"):
            ep._deliver(topic, payload)
        else:
            ep.stats.refused_topic += 1

    def _on_fleetrpc_call(self, cid: str, payload: bytes, props: dict | None) -> None:
        """A fleetrpc-SDK device's CALL: renumbered like ThingsBoard's, so
        that the answer comes back to this session whatever other path the
        same device id uses (a broker connection picks its own ids)."""
        ep = self.endpoint
        if not (0 < len(cid) <= 19 and cid.isascii() and cid.isdigit()):
            ep.stats.refused_topic += 1
            return
        answer = return_topic(ep.settings.prefix, self.device, cid)
        answer_props = None
        if props:
            # A Response Topic is honoured only inside the device's own
            # namespace: an answer must never be steered into another device.
            rt = props.get("response_topic")
            base = self.base
            if rt is not None and rt.startswith(base) and rt[len(base):len(base) + 1] == "/":
                answer = rt
                if "correlation_data" in props:
                    answer_props = {"correlation_data": props["correlation_data"]}
        qos = self._fr_qos(answer)
        x = self._extra()
        if x.calls is None:
            x.calls = set()
        if len(x.calls) >= ep.settings.max_client_calls:
            self.send_answer(answer, error_reply("TOO_MANY_REQUESTS", "too many calls awaiting an answer"),
                             max(qos, 0), answer_props)
            return
        ecid = ep._new_call(self, answer, max(qos, 0), answer_props)
        x.calls.add(ecid)
        ep.stats.client_calls += 1
        ep._deliver(x.base_of(self) + "/call/" + ecid, payload)

    # -- gateway ---------------------------------------------------------------------

    def _on_gateway_publish(self, what: str, payload: bytes) -> None:
        ep = self.endpoint
        if not self.gateway:
            ep.stats.ignored += 1  # ThingsBoard ignores the gateway API of a plain device
            return
        if what == "rpc":
            try:
                reply = _gateway_reply(payload)
            except BAD_JSON:
                ep.stats.unknown_response += 1
                return
            requests = self.extra.requests  # (a gateway session has its extra)
            entry = requests.get(reply.id) if requests else None
            if entry.__class__ is not tuple or entry[2] != reply.device:
                ep.stats.unknown_response += 1
                return
            del requests[reply.id]
            ep.stats.responses += 1
            ep._deliver(entry[0] + "/res/" + entry[1], bytes(reply.data))
        elif what == "connect":
            try:
                name = _device_name(payload).device
            except BAD_JSON:
                ep.stats.ignored += 1
                return
            if not (self.subdevices and name in self.subdevices):
                ep._resolve_subdevice(self, name)
        elif what == "disconnect":
            try:
                name = _device_name(payload).device
            except BAD_JSON:
                ep.stats.ignored += 1
                return
            self.drop_subdevice(name)
        elif what == "attributes/request":
            self._gateway_attributes_request(payload)
        else:
            ep.stats.ignored += 1  # telemetry, attributes, claims

    def _gateway_attributes_request(self, payload: bytes) -> None:
        """A gateway asks for a sub-device's attributes.  ThingsBoard answers
        on ``v1/gateway/attributes/response`` with ``{"id", "device"}`` and
        ``"value"`` (one key asked) or ``"values"`` (several) for the keys
        that have one (``JsonConverter.getJsonObjectForGateway``); fleetrpc
        keeps none, so the answer is ``{"id", "device"}`` alone, which
        ThingsBoard's gateway SDK hands to the waiting callback.  A request
        ThingsBoard could not read is ignored (counted).

        Only a name bound to this gateway is answered.  ThingsBoard takes a
        request for a name the gateway never announced as its announcement
        (``AbstractGatewaySessionHandler.process`` -> ``onDeviceConnect``:
        get or create the device in the gateway's tenant, then answer from
        it); so does the endpoint, through ``resolve_subdevice`` as
        ``v1/gateway/connect`` (the tenant's rule, the device limit), and it
        answers once the name is bound.  A name that cannot be bound gets no
        answer, as ThingsBoard sends none when its connect fails."""
        ep = self.endpoint
        try:
            request = _gateway_attributes_request(payload)
        except BAD_JSON:
            ep.stats.ignored += 1
            return
        if not request.device or (request.key is None and request.keys is None):
            ep.stats.ignored += 1
            return
        ep.stats.attribute_requests += 1
        answer = _GatewayAttributesAnswer(request.id, request.device)
        subdevices = self.subdevices
        if subdevices and request.device in subdevices:
            self._answer_attributes(answer)
        else:
            ep._resolve_subdevice(self, request.device, functools.partial(self._answer_attributes, answer))

    def _answer_attributes(self, answer: _GatewayAttributesAnswer) -> None:
        """Send ``answer`` (its device bound to this gateway), at the QoS of
        the gateway's subscription to the answers, if it has one now."""
        qos = self.granted(GATEWAY_ATTRIBUTES_RESPONSE)
        if qos >= 0 and self.state == CONNECTED:
            self._publish(GATEWAY_ATTRIBUTES_RESPONSE, _json(answer), qos, None)

    def drop_subdevice(self, name: str) -> None:
        """The gateway no longer answers for its sub-device ``name``."""
        sub = (self.subdevices or {}).pop(name, None)
        if sub is not None:
            self.endpoint._remove_route(sub.device, sub)

    def add_subdevice(self, name: str, device: str) -> None:
        """The gateway's announced sub-device ``name`` is registry device ``device``."""
        if self.state != CONNECTED:
            return
        validate_id("device", device)
        x = self._extra()
        if x.subdevices is None:
            x.subdevices = {}
        if name in x.subdevices:
            return
        sub = SubDevice(self, name, device, self.endpoint._dev_prefix + device)
        x.subdevices[name] = sub
        if self.known & _GATEWAY_BIT:
            self.endpoint._add_route(device, sub)


def _takes_requests(base: str, topic: str) -> bool:
    """``topic`` (a filter under ``base``, the session's ``{p}/d/{id}``) may
    match the device's REQUEST topics ``{base}/req/{node}/{rid}`` (``base``
    itself matches only itself)."""
    return len(topic) > len(base) and topic[len(base) + 1:].split("/", 1)[0] in ("req", "+", "#")


def _number(text: str) -> int | None:
    """A request number as ThingsBoard writes it: ASCII decimal digits."""
    if 0 < len(text) <= 10 and text.isascii() and text.isdigit():
        return int(text)
    return None

