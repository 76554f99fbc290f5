"""One device connection: MQTT 3.1.1 / 5 server side, ThingsBoard's device
API on top.

A :class:`Session` is an :class:`asyncio.Protocol`.  Bytes go straight into
the compiled :class:`~fleetrpc._core.MqttReader`, which hands over PUBLISH
and PUBACK and queues the PUBACKs the session owes; every other packet comes
to :meth:`Session._on_packet` (``packets.py`` parses it).  Output is
collected per session and written once per event-loop iteration by the
endpoint's flusher.

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
and telemetry topics are acknowledged and ignored (counted in
``stats.ignored``); subscriptions to ThingsBoard's other known topics are
granted and never receive anything; any other topic filter is refused.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from ... import _core
from ...errors import CodecError
from ...wire import REQUEST_DECODER, error_reply, validate_id
from . import packets as P

if TYPE_CHECKING:
    from .server import DeviceEndpoint, Identity

log = logging.getLogger("fleetrpc.endpoint")

_encode_publish = _core.encode_publish
_json = msgspec.json.Encoder().encode

# session states
NEW, AUTHENTICATING, CONNECTED, CLOSED = range(4)

# RPC forms
V1, V2, V2J, GATEWAY, FLEETRPC = range(5)

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
#: Other ThingsBoard topics a device may subscribe to: granted (the SDK
#: subscribes to the attribute topics on every connect), never published.
OTHER_SUBSCRIPTIONS = frozenset({
    "v1/devices/me/rpc/response/+", "v2/r/res/+", "v2/r/res/j/+",
    "v1/devices/me/attributes", "v1/devices/me/attributes/response/+",
    "v2/a", "v2/a/j", "v2/a/res/+", "v2/a/res/j/+",
    "v1/gateway/attributes", "v1/gateway/attributes/response",
    "v2/fw/response/+", "v2/fw/error", "v2/sw/response/+", "v2/sw/error",
})

_SESSION_LIMITS = "getSessionLimits"


class _Suspend(Exception):
    """Raised out of the reader to stop it after CONNECT while an
    asynchronous authentication runs; the reader keeps the bytes after it."""


class _GatewayReply(msgspec.Struct, gc=False):
    device: str
    id: int
    data: msgspec.Raw = msgspec.Raw(b"null")


class _DeviceName(msgspec.Struct, gc=False):
    device: str


class _Request(msgspec.Struct, gc=False):
    method: str
    params: msgspec.Raw = msgspec.Raw(b"{}")


class _GatewayData(msgspec.Struct, gc=False):
    id: int
    method: str
    params: msgspec.Raw


class _GatewayRequest(msgspec.Struct, gc=False):
    device: str
    data: _GatewayData


_gateway_reply = msgspec.json.Decoder(_GatewayReply).decode
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


class Session(asyncio.Protocol):
    """One device connection (see the module docstring)."""

    __slots__ = (
        "endpoint", "transport", "reader", "state", "v5", "identity", "device", "base",
        "client_id", "keepalive", "opened", "last_in", "out", "dirty", "paused_since",
        "written", "subs", "form", "rpc_qos", "gw_qos", "fr_filters", "next_n", "requests",
        "next_mid", "inflight", "waiting", "window", "client_max_packet", "subdevices",
        "calls", "session_expiry", "clean_start", "rate", "check_key", "fr_req_qos",
    )

    def __init__(self, endpoint: "DeviceEndpoint") -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.reader = None
        self.state = NEW
        self.v5 = False
        self.identity: Identity | None = None
        #: the device id, once authenticated
        self.device = ""
        #: "{p}/d/{device}": where the device's fleetrpc topics start
        self.base = ""
        self.client_id = ""
        self.keepalive = 0
        self.opened = 0.0
        self.last_in = 0.0
        self.out: list[bytes] = []
        self.dirty = False
        self.paused_since = 0.0
        #: QoS 0 sends whose delivery is confirmed once written: (base, tail, token)
        self.written: list[tuple] | None = None
        #: granted ThingsBoard-topic subscriptions: filter -> QoS
        self.subs: dict[str, int] = {}
        self.form = -1
        self.rpc_qos = 0
        self.gw_qos = -1
        #: FLEETRPC-form subscriptions: [(filter levels, filter, QoS)]
        self.fr_filters: list[tuple[list[str], str, int]] | None = None
        #: the QoS every REQUEST topic gets from fr_filters, or -2 when it
        #: depends on the topic (a filter for one node only): then match each
        self.fr_req_qos = -1
        self.next_n = 0
        #: request number -> (base, tail, sub-device name or None) awaiting a response
        self.requests: dict[int, tuple] = {}
        self.next_mid = 0
        #: our unacknowledged QoS 1 PUBLISHes: packet id -> (base, tail, token)
        self.inflight: dict[int, tuple] = {}
        self.waiting: deque | None = None
        self.window = endpoint.settings.max_inflight
        self.client_max_packet = 0
        #: gateway sessions: sub-device name -> SubDevice
        self.subdevices: dict[str, SubDevice] | None = None
        #: ids of this session's client-side calls awaiting the dispatcher
        self.calls: set[str] | None = None
        self.session_expiry = 0
        self.clean_start = True
        self.rate = None
        #: the endpoint's sweep bucket this session is due in
        self.check_key = 0

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ep = self.endpoint
        if not ep._accept(self):
            transport.abort()
            return
        # TCP_NODELAY: uvloop and asyncio set it on every TCP transport.
        # The peer address is looked up only when a log line needs it: it
        # costs ~100 bytes per idle connection.
        transport.set_write_buffer_limits(high=ep.settings.write_high_water)  # type: ignore[attr-defined]
        self.opened = self.last_in = ep._loop.time()
        self.reader = _core.MqttReader(self._on_publish, self._on_packet, False, self._on_puback, self._on_props)
        ep._check_at(self, self.opened + ep.settings.connect_timeout)

    def data_received(self, data: bytes) -> None:
        ep = self.endpoint
        self.last_in = ep._loop.time()
        reader = self.reader
        if reader is None or self.state == CLOSED:
            return
        try:
            reader.feed(data)
        except _Suspend:
            self.transport.pause_reading()
        except P.ProtocolError as exc:
            self._fail(exc.reason, str(exc))
            return
        except CodecError as exc:
            self._fail(P.MALFORMED_PACKET, str(exc))
            return
        except Exception:  # our bug: lose this connection, never the endpoint
            log.exception("device session %s: packet handler failed", self._who())
            self._fail(P.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")
            return
        if self.state == CLOSED:
            return
        if reader.buffered > ep._max_packet:
            self._fail(P.PACKET_TOO_LARGE, f"packet larger than {ep._max_packet} bytes")
            return
        acks = reader.take_acks()
        if acks:
            self._write(acks)

    def eof_received(self) -> bool:
        return False  # close the transport: a half-closed device is gone

    def pause_writing(self) -> None:
        self.paused_since = self.endpoint._loop.time()
        self.endpoint._paused.add(self)

    def resume_writing(self) -> None:
        self.paused_since = 0.0
        self.endpoint._paused.discard(self)
        if self.written:
            self._confirm_written()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.endpoint._lost(self)
        self.reader = None
        self.out = []
        self.requests = {}
        self.inflight = {}
        self.waiting = None
        self.written = None
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

    def close(self, reason: int = P.SUCCESS) -> None:
        """Close the connection; a connected MQTT 5 session gets a DISCONNECT
        with ``reason`` first (3.1.1 servers can only close)."""
        transport = self.transport
        if transport is None or self.state == CLOSED:
            return
        if self.v5 and self.state == CONNECTED:
            self.out.append(P.disconnect(reason))
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
        """Called by the endpoint's sweep: connect timeout and keepalive."""
        state = self.state
        if state == CLOSED:
            return
        ep = self.endpoint
        if state != CONNECTED:
            deadline = self.opened + ep.settings.connect_timeout
            if now >= deadline:
                ep.stats.closed_connect_timeout += 1
                self.abort()
            else:
                ep._check_at(self, deadline)
            return
        deadline = self.last_in + 1.5 * self.keepalive
        if now >= deadline:
            self._fail(P.KEEP_ALIVE_TIMEOUT, f"silent for 1.5 x {self.keepalive} s")
        else:
            ep._check_at(self, deadline)

    # -- output -----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self.out.append(data)
        if not self.dirty:
            self.dirty = True
            self.endpoint._mark_dirty(self)

    def _flush(self) -> None:
        self.dirty = False
        out = self.out
        transport = self.transport
        if not out or transport is None or self.state == CLOSED:
            return
        self.out = []
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.paused_since:
            if transport.get_write_buffer_size() > self.endpoint.settings.max_write_buffer:
                self.endpoint.stats.closed_slow_reader += 1
                log.info("device session %s dropped: write buffer over the maximum", self._who())
                self.abort()
        elif self.written:
            self._confirm_written()

    def _confirm_written(self) -> None:
        written, self.written = self.written, None
        ep = self.endpoint
        for base, tail, token in written:
            if token >= 0:
                ep.on_published(token)
            elif base is not None:
                ep._deliver(base + "/ack/" + tail, b"")

    def _publish(self, topic: str, payload: bytes, qos: int, base: str | None, tail: str | None,
                 token: int, props: dict | None = None) -> None:
        """Send one PUBLISH to the device.  With QoS 1 its PUBACK, with QoS 0
        its writing, confirms delivery: ``token`` >= 0 goes to the owner's
        ``on_published``; otherwise, with a ``base``, an ACK is synthesised."""
        if self.state != CONNECTED:
            return
        limit = self.client_max_packet
        if limit and len(payload) + len(topic) + 16 > limit:
            self.endpoint.stats.too_large_for_device += 1
            return
        if qos:
            inflight = self.inflight
            if len(inflight) >= self.window:
                if self.waiting is None:
                    self.waiting = deque()
                self.waiting.append((topic, payload, base, tail, token, props))
                return
            mid = self.next_mid
            while True:
                mid = mid + 1 if mid < 65535 else 1
                if mid not in inflight:
                    break
            self.next_mid = mid
            inflight[mid] = (base, tail, token)
        else:
            mid = 0
            if token >= 0 or base is not None:
                if self.written is None:
                    self.written = []
                self.written.append((base, tail, token))
        if props and self.v5:
            pkt = _encode_publish(topic, payload, qos, mid, False, True,
                                  props.get("response_topic"), props.get("correlation_data"))
        else:
            pkt = _encode_publish(topic, payload, qos, mid, False, self.v5)
        self.out.append(pkt)
        if not self.dirty:
            self.dirty = True
            self.endpoint._mark_dirty(self)

    def _on_puback(self, mid: int) -> None:
        entry = self.inflight.pop(mid, None)
        if entry is None:
            return  # a duplicate or unknown PUBACK: nothing to confirm
        base, tail, token = entry
        if token >= 0:
            self.endpoint.on_published(token)
        elif base is not None:
            self.endpoint._deliver(base + "/ack/" + tail, b"")
        waiting = self.waiting
        if waiting:
            while waiting and len(self.inflight) < self.window:
                topic, payload, base, tail, token, props = waiting.popleft()
                self._publish(topic, payload, 1, base, tail, token, props)

    # -- requests from the dispatcher ----------------------------------------------------

    def send_request(self, topic: str, tail_at: int, payload: bytes, token: int, props: dict | None) -> None:
        """A REQUEST ``{p}/d/{device}/req/{node}/{rid}`` for this session's
        device; ``tail_at`` is where ``{node}/{rid}`` starts in ``topic``."""
        form = self.form
        if form == FLEETRPC:
            qos = self.fr_req_qos
            if qos == -2:
                qos = self._fr_qos(topic)
            if qos >= 0:
                self._publish(topic, payload, qos, None, None, token, props)
            return
        n = self.next_n = self.next_n + 1 if self.next_n < 2147483647 else 1
        tail = topic[tail_at:]
        if token < 0:
            requests = self.requests
            requests[n] = (self.base, tail, None)
            if len(requests) > self.endpoint.settings.max_pending_responses:
                del requests[next(iter(requests))]
        self._publish(REQUEST_TOPIC[form] + str(n), payload, self.rpc_qos, self.base, tail, token)

    def _send_gateway_request(self, sub: SubDevice, tail: str, payload: bytes, token: int) -> None:
        try:
            req = _request_parts(payload)
        except msgspec.DecodeError:
            self.endpoint.stats.undeliverable += 1
            return
        n = self.next_n = self.next_n + 1 if self.next_n < 2147483647 else 1
        if token < 0:
            requests = self.requests
            requests[n] = (sub.base, tail, sub.name)
            if len(requests) > self.endpoint.settings.max_pending_responses:
                del requests[next(iter(requests))]
        body = _json(_GatewayRequest(sub.name, _GatewayData(n, req.method, req.params)))
        self._publish(GATEWAY_RPC, body, self.gw_qos, sub.base, tail, token)

    def send_answer(self, topic: str, payload: bytes, qos: int, props: dict | None = None) -> None:
        """The dispatcher's answer to one of this session's client-side calls."""
        self._publish(topic, payload, qos, None, None, -1, props)

    def _fr_filters_changed(self) -> None:
        # A level with NUL matches no literal filter level: what matches this
        # topic matches every REQUEST topic of the device.
        any_req = (self.base + "/req/\x00/\x00").split("/")
        qos = -1
        specific = False
        nbase = self.base.count("/") + 1
        for flevels, _, q in self.fr_filters or ():
            if _matches(flevels, any_req):
                qos = max(qos, q)
            elif flevels[nbase:nbase + 1] in (["req"], ["+"]):
                specific = True
        self.fr_req_qos = -2 if specific else qos

    def _fr_qos(self, topic: str) -> int:
        """The QoS of this FLEETRPC-form session's subscription matching
        ``topic``, or -1."""
        best = -1
        levels = None
        for flevels, ftext, qos in self.fr_filters or ():
            if ftext == topic:
                ok = True
            else:
                if levels is None:
                    levels = topic.split("/")
                ok = _matches(flevels, levels)
            if ok and qos > best:
                best = qos
        return best

    # -- inbound packets -------------------------------------------------------------

    def _on_packet(self, cmd: int, body: bytes) -> None:
        kind = cmd & 0xF0
        if self.state == NEW:
            if kind != P.CONNECT:
                raise P.ProtocolError("first packet is not CONNECT", P.PROTOCOL_ERROR)
            if len(body) > self.endpoint._max_packet:
                raise P.ProtocolError("CONNECT too large", P.PACKET_TOO_LARGE)
            self._on_connect(cmd & 0x0F, body)
            return
        if self.state != CONNECTED:
            raise P.ProtocolError("packet before CONNACK", P.PROTOCOL_ERROR)
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
                self.session_expiry = min(expiry, self.endpoint.settings.max_session_expiry)
            self.close()
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
        self.reader.v5 = v5
        props = c.properties
        if "authentication_method" in props:
            self._refuse(P.BAD_AUTHENTICATION_METHOD)
            return
        if not c.client_id:
            if not c.clean_start and not v5:
                self._refuse(P.CLIENT_IDENTIFIER_NOT_VALID)
                return
        self.client_id = c.client_id
        self.clean_start = c.clean_start
        s = ep.settings
        self.keepalive = c.keepalive if 0 < c.keepalive <= s.max_keepalive else s.max_keepalive
        if v5:
            self.session_expiry = min(props.get("session_expiry_interval", 0), s.max_session_expiry)
            rm = props.get("receive_maximum")
            if rm == 0 or props.get("maximum_packet_size") == 0:
                raise P.ProtocolError("receive maximum or maximum packet size of 0", P.PROTOCOL_ERROR)
            if rm:
                self.window = min(rm, s.max_inflight)
            self.client_max_packet = props.get("maximum_packet_size", 0)
        elif not c.clean_start:
            self.session_expiry = s.max_session_expiry
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
        except Exception:
            log.exception("authenticate() failed for a connection from %s", self._who())
            self._refuse(P.SERVER_UNAVAILABLE)
            return
        if inspect.isawaitable(result):
            ep._spawn(self._await_identity(result, c))
            raise _Suspend
        self._connected(result, c)

    async def _await_identity(self, awaitable, c: P.Connect) -> None:
        try:
            result = await awaitable
        except Exception:
            log.exception("authenticate() failed for a connection from %s", self._who())
            if self.state == AUTHENTICATING:
                self._refuse(P.SERVER_UNAVAILABLE)
            return
        if self.state != AUTHENTICATING:
            return  # the connection went away meanwhile
        self._connected(result, c)
        if self.state != CONNECTED or self.transport is None:
            return
        # what the device sent after CONNECT waits in the reader
        self.data_received(b"")
        if self.state == CONNECTED and self.transport is not None:
            self.transport.resume_reading()

    def _connected(self, result: Any, c: P.Connect) -> None:
        ep = self.endpoint
        identity = ep._identity(result)
        if identity is None:
            ep.stats.refused_auth += 1
            self._refuse(P.NOT_AUTHORIZED)
            return
        self.identity = identity
        self.device = identity.device_id
        self.base = ep._dev_prefix + self.device
        self.state = CONNECTED
        self.rate = ep._rate_limit(self.device)
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
        ep._check_at(self, self.last_in + 1.5 * self.keepalive)
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
            self.subs[topic] = q
            self.form = form
            self.rpc_qos = q
            ep._add_route(self.device, self)
            return q
        if topic in OTHER_SUBSCRIPTIONS:
            self.subs[topic] = q
            return q
        if topic == GATEWAY_RPC:
            if not self.identity.gateway:
                return P.NOT_AUTHORIZED
            self.subs[topic] = q
            self.gw_qos = q
            for sub in (self.subdevices or {}).values():
                ep._add_route(sub.device, sub)
            return q
        base = self.base
        if topic.startswith(base) and topic[len(base):len(base) + 1] in ("/", ""):
            flevels = topic.split("/")
            if self.fr_filters is None:
                self.fr_filters = []
            self.fr_filters = [f for f in self.fr_filters if f[1] != topic]
            self.fr_filters.append((flevels, topic, q))
            self._fr_filters_changed()
            self.subs[topic] = q
            nbase = base.count("/") + 1
            rest = flevels[nbase:]
            if not rest or rest[0] in ("req", "+", "#"):
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
        if self.subs.pop(topic, None) is None:
            return 0x11  # No subscription existed
        if topic == GATEWAY_RPC:
            self.gw_qos = -1
            for sub in (self.subdevices or {}).values():
                ep._remove_route(sub.device, sub)
        elif topic in RPC_SUBSCRIPTIONS:
            if not any(t in self.subs for t in RPC_SUBSCRIPTIONS):
                self.form = -1
                ep._remove_route(self.device, self)
        elif self.fr_filters:
            self.fr_filters = [f for f in self.fr_filters if f[1] != topic]
            self._fr_filters_changed()
            if self.form == FLEETRPC and not self.fr_filters:
                self.form = -1
                ep._remove_route(self.device, self)
        return P.SUCCESS

    # -- inbound PUBLISH -------------------------------------------------------------

    def _on_props(self, topic: str, payload: bytes, raw: bytes) -> None:
        props = P.parse_publish_properties(raw)
        if "topic_alias" in props:
            raise P.ProtocolError("topic alias used (Topic Alias Maximum is 0)", P.PROTOCOL_ERROR)
        self._on_publish(topic, payload, props)

    def _on_publish(self, topic: str, payload: bytes, props: dict | None) -> None:
        if self.state != CONNECTED:
            raise P.ProtocolError("PUBLISH before CONNECT", P.PROTOCOL_ERROR)
        ep = self.endpoint
        if len(payload) > ep.settings.max_payload:
            raise P.ProtocolError(f"payload of {len(payload)} bytes (at most {ep.settings.max_payload})",
                                  P.PACKET_TOO_LARGE)
        rate = self.rate
        if rate is not None and not rate.take(self.last_in):
            raise P.ProtocolError("message rate limit exceeded", P.MESSAGE_RATE_TOO_HIGH)
        if topic.startswith("v1/devices/me/rpc/"):
            if topic.startswith("response/", 18):
                self._on_response(topic[27:], payload)
            elif topic.startswith("request/", 18):
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
        elif not topic:
            raise P.ProtocolError("PUBLISH with an empty topic", P.TOPIC_NAME_INVALID)
        else:
            # attributes, telemetry, claims, firmware: not fleetrpc's business
            ep.stats.ignored += 1

    def _on_response(self, n_text: str, payload: bytes) -> None:
        ep = self.endpoint
        n = _number(n_text)
        entry = self.requests.pop(n, None) if n is not None else None
        if entry is None or entry[2] is not None:
            if entry is not None:  # a gateway's request answered on the device topic
                self.requests[n] = entry
            ep.stats.unknown_response += 1
            return
        ep.stats.responses += 1
        ep._deliver(entry[0] + "/res/" + entry[1], payload)

    def _on_client_call(self, n_text: str, payload: bytes, form: int) -> None:
        ep = self.endpoint
        n = _number(n_text)
        if n is None:
            ep.stats.ignored += 1
            return
        answer = RESPONSE_TOPIC[form] + n_text
        qos = self.subs.get(RESPONSE_SUBSCRIPTION[form], 0)
        try:
            request = REQUEST_DECODER.decode(payload)
        except msgspec.DecodeError as exc:
            self.send_answer(answer, error_reply("INVALID_REQUEST", f"not a {{method, params}} object: {exc}"), qos)
            return
        if request.method == _SESSION_LIMITS:
            ep.stats.session_limits += 1
            self.send_answer(answer, ep._session_limits(self.identity.gateway), qos)
            return
        if self.calls is None:
            self.calls = set()
        if len(self.calls) >= ep.settings.max_client_calls:
            self.send_answer(answer, error_reply("TOO_MANY_REQUESTS", "too many calls awaiting an answer"), qos)
            return
        cid = ep._new_call(self, answer, qos, None)
        self.calls.add(cid)
        ep.stats.client_calls += 1
        ep._deliver(self.base + "/call/" + cid, payload)

    def _on_fleetrpc_publish(self, topic: str, payload: bytes, props: dict | None) -> None:
        ep = self.endpoint
        base = self.base
        n = len(base)
        if not (topic.startswith(base) and topic[n:n + 1] == "/"):
            ep.stats.refused_topic += 1
            log.warning("device %s published on %r, which is not its own: dropped", self.device, topic)
            return
        kind, _, rest = topic[n + 1:].partition("/")
        if kind == "call":
            self._on_fleetrpc_call(rest, payload, props)
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
        answer = f"{self.base}/ret/{cid}"
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
        if self.calls is None:
            self.calls = set()
        if len(self.calls) >= ep.settings.max_client_calls:
            self.send_answer(answer, error_reply("TOO_MANY_REQUESTS", "too many calls awaiting an answer"),
                             max(qos, 0), answer_props)
            return
        ecid = ep._new_call(self, answer, max(qos, 0), answer_props)
        self.calls.add(ecid)
        ep.stats.client_calls += 1
        ep._deliver(self.base + "/call/" + ecid, payload)

    # -- gateway ---------------------------------------------------------------------

    def _on_gateway_publish(self, what: str, payload: bytes) -> None:
        ep = self.endpoint
        if not self.identity.gateway:
            ep.stats.ignored += 1  # ThingsBoard ignores the gateway API of a plain device
            return
        if what == "rpc":
            try:
                reply = _gateway_reply(payload)
            except msgspec.DecodeError:
                ep.stats.unknown_response += 1
                return
            entry = self.requests.get(reply.id)
            if entry is None or entry[2] != reply.device:
                ep.stats.unknown_response += 1
                return
            del self.requests[reply.id]
            ep.stats.responses += 1
            ep._deliver(entry[0] + "/res/" + entry[1], bytes(reply.data))
        elif what == "connect":
            try:
                name = _device_name(payload).device
            except msgspec.DecodeError:
                ep.stats.ignored += 1
                return
            if not (self.subdevices and name in self.subdevices):
                ep._resolve_subdevice(self, name)
        elif what == "disconnect":
            try:
                name = _device_name(payload).device
            except msgspec.DecodeError:
                ep.stats.ignored += 1
                return
            sub = (self.subdevices or {}).pop(name, None)
            if sub is not None:
                ep._remove_route(sub.device, sub)
        else:
            ep.stats.ignored += 1  # telemetry, attributes, claims

    def add_subdevice(self, name: str, device: str) -> None:
        """The gateway's announced sub-device ``name`` is registry device ``device``."""
        if self.state != CONNECTED:
            return
        validate_id("device", device)
        if self.subdevices is None:
            self.subdevices = {}
        if name in self.subdevices:
            return
        sub = SubDevice(self, name, device, self.endpoint._dev_prefix + device)
        self.subdevices[name] = sub
        if self.gw_qos >= 0:
            self.endpoint._add_route(device, sub)


def _number(text: str) -> int | None:
    """A request number as ThingsBoard writes it: ASCII decimal digits."""
    if 0 < len(text) <= 10 and text.isascii() and text.isdigit():
        return int(text)
    return None


def _matches(flevels: list[str], levels: list[str]) -> bool:
    """MQTT topic filter matching, level by level."""
    nf = len(flevels)
    for i, f in enumerate(flevels):
        if f == "#":
            return True
        if i >= len(levels):
            return False
        if f != "+" and f != levels[i]:
            return False
    return nf == len(levels)

