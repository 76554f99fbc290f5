"""MQTT transport on gmqtt.

gmqtt does connection management well (CONNECT/CONNACK, MQTT 5 properties,
TLS, keepalive, reconnect, QoS 1 replay).  This module adds what a dispatcher
needs on top of it and what gmqtt lacks (see shared/MQTT-NOTES.md):

- resubscribe after a reconnect whose session is gone (gmqtt issue #124);
- a publish window: gmqtt raises ``OverflowError`` once the broker's receive
  maximum is reached, so excess publishes wait here, FIFO, and leave as
  PUBACKs arrive;
- a PUBACK notification per publish (``token``) with no closure per message;
- reconnect with exponential back-off;
- read batching under load (``read_batch_above``): while the owner awaits
  many replies, the socket is read at most once per ``read_batch_delay``;
- a fast path for the two hot packets (see :class:`_FastProtocol`): inbound
  PUBLISH parsed by the compiled core, outbound PUBLISH built by it, and
  every write of one loop iteration sent in one ``write`` call.  gmqtt's
  private names used for that live in :mod:`.gmqtt_compat` only, which
  checks the installed gmqtt against the releases it knows.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
import uuid
from collections import deque
from typing import Any, Callable, Sequence
from urllib.parse import unquote, urlsplit

import gmqtt

from .. import _core
from ..errors import CodecError, ValidationError
from .gmqtt_compat import ClientBase, MQTTv50, MQTTv311, ProtocolBase

log = logging.getLogger("fleetrpc.transport")

_encode_publish = _core.encode_publish

#: on_message(topic, payload, properties-or-None)
MessageCallback = Callable[[str, bytes, "dict | None"], None]


def parse_url(url: str) -> dict[str, Any]:
    """``mqtt://user:pass@host:1883`` / ``mqtts://...`` into connection parts."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValidationError(f"unsupported MQTT URL scheme {parts.scheme!r} in {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or (8883 if tls else 1883),
        "tls": tls,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }


#: Bytes of queued packets that make a write happen at once, not at the end
#: of the loop turn.
_FLUSH_EARLY = 65536


class _FastProtocol(ProtocolBase):
    """gmqtt's protocol with the hot path replaced.

    Reading: ``data_received`` feeds the compiled :class:`MqttReader`
    directly (no StreamReader, no read-loop task); PUBLISH goes straight to
    the transport, every other packet to gmqtt's handler as before.
    Writing: packets written during one loop iteration leave in one
    ``transport.write`` (one syscall instead of one per packet).
    Read batching: when ``batch_reads()`` says so after a read, reading
    pauses for ``batch_delay`` seconds, so that the kernel gathers what the
    broker sends meanwhile into one read (see :class:`MqttTransport`).
    """

    def __init__(self, *args: Any, on_publish: Callable, on_puback: Callable,
                 batch_reads: Callable[[], bool] | None = None, batch_delay: float = 0.001,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch_reads = batch_reads
        self._batch_delay = batch_delay
        self._resume_handle: asyncio.TimerHandle | None = None
        #: Reads after which reading paused to batch the next one.
        self.batched_reads = 0
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_handle: asyncio.Handle | None = None
        #: QoS 0 publishes whose sender waits to hear they left: confirmed
        #: once written and the socket's buffer is below its high-water mark.
        self.written_tokens: list[int] = []
        self.on_written: Callable[[list[int]], None] | None = None
        self._deliver = on_publish
        self._reader = _core.MqttReader(on_publish, self._on_packet, True, on_puback, self._on_props)

    def connection_made(self, transport: asyncio.Transport) -> None:
        # Skip MQTTProtocol's read-loop task: data_received does its work.
        self.start_without_read_loop(transport)
        self._reader.v5 = self.proto_ver == MQTTv50

    def data_received(self, data: bytes) -> None:
        if not self.is_current():
            return  # a superseded connection (gmqtt's put_package rule)
        self.note_data_in()
        reader = self._reader
        try:
            reader.feed(data)
        except CodecError as exc:
            # Only a malformed stream raises: a handler's bug is logged and
            # counted by the reader, which parses on.
            log.warning("malformed MQTT stream from the broker (%s): closing the connection", exc)
            self.socket.close()
        acks = reader.take_acks()
        if acks:
            self.write_data(acks)
        if self._batch_reads is not None and self._resume_handle is None and self._batch_reads():
            transport = self.socket
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
                self.batched_reads += 1
                self._resume_handle = self.event_loop.call_later(self._batch_delay, self._resume_batched)

    def _resume_batched(self) -> None:
        self._resume_handle = None
        transport = self.socket
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        # gmqtt's read loop closed the transport on EOF; without it, False
        # makes asyncio close it, so connection_lost (and reconnect) follow.
        super().eof_received()
        return False

    def _on_packet(self, cmd: int, body: bytes) -> None:
        self.handle_packet(cmd, body)

    def _on_props(self, topic: str, payload: bytes, props: bytes) -> None:
        self._deliver(topic, payload, self.parse_properties(props))

    def write_data(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= _FLUSH_EARLY:
            # A burst (a fan-out to thousands of devices) leaves in 64 KiB
            # slices while it is still being built, so the broker starts early.
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self.event_loop.call_soon(self._flush)

    def send_disconnect(self, reason_code: int = 0, **properties: Any) -> None:
        # gmqtt closes the socket right after this: what is buffered for the
        # end of the loop iteration (the DISCONNECT itself, last publishes)
        # must leave now, or the broker sees no DISCONNECT and publishes the
        # Last Will on every clean close.
        super().send_disconnect(reason_code, **properties)
        self._flush()

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._out_size = 0
        out, self._out = self._out, []
        transport = self.socket
        if out and transport is not None and not transport.is_closing():
            self.note_data_out()
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.written_tokens and not self.writing_paused:
            self._confirm_written()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.written_tokens:
            self._confirm_written()

    def _confirm_written(self) -> None:
        tokens, self.written_tokens = self.written_tokens, []
        if self.on_written is not None:
            self.on_written(tokens)


#: Filters per SUBSCRIBE or UNSUBSCRIBE packet, when there are many.
SUBSCRIBE_CHUNK = 500


class _Client(ClientBase):
    """gmqtt client on :class:`_FastProtocol` that reports PUBACKs."""

    protocol_class = _FastProtocol

    def __init__(self, client_id: str, owner: "MqttTransport", **kwargs: Any) -> None:
        super().__init__(client_id, **kwargs)
        self._owner = owner

    def protocol_options(self) -> dict[str, Any]:
        owner = self._owner
        return {
            "on_publish": owner._deliver,
            "on_puback": self._on_puback,
            "batch_reads": owner._batch_reads if owner.read_batch_above else None,
            "batch_delay": owner.read_batch_delay,
        }

    def _on_puback(self, mid: int) -> None:
        self.acknowledged(mid)
        self._owner._on_puback(mid)

    def on_message_removed(self, mid: int) -> None:
        self._owner._on_puback(mid)


class MqttTransport:
    """One MQTT connection of a dispatcher or a device.

    ``publish`` never raises for flow control and never blocks: beyond the
    broker's receive maximum, QoS 1 publishes wait in a FIFO.  ``on_published``
    is called with a publish's ``token`` once the broker has it (PUBACK for
    QoS 1, right after writing for QoS 0).

    Read batching: with ``read_batch_above`` > 0, whenever the owner awaits
    at least that many messages (``awaiting()``, e.g. replies to its calls),
    the socket is read at most once per ``read_batch_delay`` seconds (1-2 ms
    with uvloop's millisecond timers).  A broker that is slower than the
    owner otherwise trickles a few messages per wake-up, and each wake-up
    (epoll, read, a Python callback, a write) costs as much as several
    messages: measured with 1000 devices at QoS 1, 1.6 replies per read and
    20 us of dispatcher CPU per round trip, against 8-11 us with batched
    reads at the same throughput.  The price is up to about twice
    ``read_batch_delay`` of added latency (the loop's timers round up), paid
    only while that many replies are outstanding.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        version: int = 5,
        keepalive: int = 60,
        username: str | None = None,
        password: str | None = None,
        tls: bool | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_insecure: bool = False,
        will: tuple[str, bytes, int, bool] | None = None,
        reconnect_delay: float = 0.5,
        reconnect_max: float = 10.0,
        max_inflight: int = 65535,
        read_batch_above: int = 0,
        read_batch_delay: float = 0.001,
    ) -> None:
        if read_batch_above < 0 or read_batch_delay <= 0:
            raise ValidationError("read_batch_above must be >= 0 and read_batch_delay > 0")
        cfg = parse_url(url)
        self.host: str = cfg["host"]
        self.port: int = cfg["port"]
        self._tls = cfg["tls"] if tls is None else tls
        self._tls_opts = (tls_ca, tls_cert, tls_key, tls_insecure)
        self._username = username or cfg["username"]
        self._password = password or cfg["password"]
        self.client_id = client_id or f"fleetrpc-{uuid.uuid4().hex[:12]}"
        self._version = MQTTv50 if version == 5 else MQTTv311
        self._keepalive = keepalive
        #: the Last Will, read at :meth:`start` (an owner that learns it
        #: later, as CompositeTransport does, sets it before then)
        self.will = will
        self._reconnect_delay = reconnect_delay
        self._reconnect_max = reconnect_max
        self._max_inflight = max_inflight
        self.read_batch_above = read_batch_above
        self.read_batch_delay = read_batch_delay

        #: Set by the owner: on_message(topic, payload, properties).
        self.on_message: MessageCallback = lambda t, p, props: None
        #: Set by the owner: on_published(token) once the broker has it.
        self.on_published: Callable[[int], None] = lambda token: None
        #: Set by the owner: on_connection(connected: bool).
        self.on_connection: Callable[[bool], None] = lambda up: None
        #: Set by the owner: how many inbound messages it awaits (read batching).
        self.awaiting: Callable[[], int] = lambda: 0

        self._client: _Client | None = None
        self._filters: list[tuple[str, int]] = []
        self._mid_token: dict[int, int] = {}   # QoS 1 mid -> token (only when token >= 0)
        self._waiting: deque = deque()        # publishes beyond the window
        self._inflight = 0                     # our unacknowledged QoS 1 publishes
        self._window = 0                       # set from the broker's receive maximum
        self._connected = asyncio.Event()
        self._up = False                       # CONNACK received, not lost since
        self._proto = None                     # the current connection's protocol
        self._closing = False
        self.reconnects = 0

    # -- lifecycle ----------------------------------------------------------

    async def start(self, filters: list[tuple[str, int]] = ()) -> None:
        """Connect, subscribe to ``filters`` (and those :meth:`subscribe`
        added before) and wait for the broker's SUBACK."""
        self._filters = list(filters) + self._filters
        will = None
        if self.will is not None:
            topic, payload, qos, retain = self.will
            will = gmqtt.Message(topic, payload, qos=qos, retain=retain)
        client = _Client(
            self.client_id,
            self,
            clean_session=True,
            optimistic_acknowledgement=True,
            will_message=will,
        )
        if self._username:
            client.set_auth_credentials(self._username, self._password)
        client.set_config({"reconnect_retries": -1, "reconnect_delay": self._reconnect_delay})
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        # The client keeps every subscription and makes them again on each
        # connect (see _on_connect); subscribe() and unsubscribe() edit it.
        client.subscriptions = [gmqtt.Subscription(t, qos=q) for t, q in self._filters]
        self._client = client
        self._subscribed = asyncio.Event()
        await client.connect(
            self.host, self.port, ssl=self._ssl_context(), keepalive=self._keepalive,
            version=self._version,
        )
        if self._filters:
            await asyncio.wait_for(self._subscribed.wait(), 10)

    async def close(self) -> None:
        """Disconnect cleanly (no Will); waiting publishes are dropped."""
        self._closing = True
        client, self._client = self._client, None
        self._waiting.clear()
        if client is not None:
            try:
                await asyncio.wait_for(client.disconnect(), 5)
            except Exception:  # the broker may already be gone
                log.debug("disconnect failed", exc_info=True)

    def abort(self) -> None:
        """Drop the connection without DISCONNECT and do not reconnect, as a
        device losing power does: the broker publishes the Last Will."""
        self._closing = True
        client, self._client = self._client, None
        self._waiting.clear()
        if client is not None:
            client.abort()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    def _ssl_context(self):
        if not self._tls:
            return False
        ca, cert, key, insecure = self._tls_opts
        ctx = _ssl.create_default_context(cafile=ca)
        if cert:
            ctx.load_cert_chain(cert, key)
        if insecure:
            ctx.check_hostname = False
            ctx.verify_mode = _ssl.CERT_NONE
        return ctx

    # -- gmqtt callbacks ----------------------------------------------------

    def _on_connect(self, client, flags, rc, properties) -> None:
        receive_max = client.receive_maximum() or 65535
        # gmqtt raises OverflowError at (receive maximum - 1) unacked ids.
        self._window = max(1, min(receive_max - 2, self._max_inflight))
        session_present = bool(flags)
        if not session_present:
            # gmqtt keeps them but does not resubscribe (issue #124).
            client.resubscribe_all(SUBSCRIBE_CHUNK)
        self._proto = client.protocol
        self._up = True
        if self._connected.is_set():
            return
        self._connected.set()
        client.reconnect_delay = self._reconnect_delay
        self.on_connection(True)
        self._drain()

    def _on_disconnect(self, client, packet, exc=None) -> None:
        if self._closing:
            return
        self.reconnects += 1
        self._up = False
        # gmqtt replays unacknowledged QoS 1 messages after reconnecting;
        # their mids are renumbered then, so forget our mid -> token map and
        # let the owner's deadlines settle those calls.
        self._inflight = 0
        self._mid_token.clear()
        client.reconnect_delay = min(self._reconnect_max, max(self._reconnect_delay, client.reconnect_delay * 2))
        if self._connected.is_set():
            self._connected.clear()
            self.on_connection(False)

    def _on_subscribe(self, client, mid, qos, properties) -> None:
        self._subscribed.set()

    def _on_message(self, client, topic, payload, qos, properties):
        # Only what bypasses the fast path (QoS 2) comes through gmqtt.
        self._deliver(topic, payload, properties)
        return 0

    def _batch_reads(self) -> bool:
        return self.awaiting() >= self.read_batch_above

    @property
    def batched_reads(self) -> int:
        """Reads of the current connection after which reading paused."""
        return self._proto.batched_reads if self._proto is not None else 0

    def _deliver(self, topic: str, payload: bytes, properties: dict | None) -> None:
        # Looked up per message so that the owner may replace on_message.
        self.on_message(topic, payload, properties)

    # -- publishing ---------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        token: int = -1,
        properties: dict | None = None,
    ) -> None:
        """Publish now, or as soon as the broker's window allows (QoS 1)."""
        if qos and (self._inflight >= self._window or self._waiting or not self._up):
            self._waiting.append((topic, payload, qos, retain, token, properties))
            return
        self._send(topic, payload, qos, retain, token, properties)

    def _send(self, topic, payload, qos, retain, token, properties) -> None:
        proto = self._proto
        if proto is None or self._client is None:
            return
        client = self._client
        v5 = proto.proto_ver == MQTTv50
        mid = proto.id_generator.next_id() if qos else 0
        if properties and v5:
            package = _encode_publish(
                topic, payload, qos, mid, retain, True,
                properties.get("response_topic"), properties.get("correlation_data"),
            )
        else:
            package = _encode_publish(topic, payload, qos, mid, retain, v5)
        if not qos and token >= 0:
            # QoS 0 has no PUBACK: confirm once written, with backpressure
            # (a paused socket holds the confirmation until it drains).
            # Registered before the write, which may flush at once.
            proto.written_tokens.append(token)
            proto.on_written = self._on_written
        proto.write_data(package)
        if qos:
            client.track_inflight(mid, package)
            self._inflight += 1
            if token >= 0:
                self._mid_token[mid] = token

    def _on_written(self, tokens: list[int]) -> None:
        for token in tokens:
            self.on_published(token)

    def _on_puback(self, mid: int) -> None:
        if self._inflight:
            self._inflight -= 1
        token = self._mid_token.pop(mid, -1)
        if token >= 0:
            self.on_published(token)
        if self._waiting:
            self._drain()

    def _drain(self) -> None:
        waiting = self._waiting
        while waiting and self._inflight < self._window and self._up:
            self._send(*waiting.popleft())

    def subscribe(self, filters: Sequence[tuple[str, int]]) -> None:
        """Add subscriptions ``(filter, qos)``, kept across reconnects; never
        blocks (the SUBACK is not awaited)."""
        client = self._client
        if client is None:
            self._filters.extend(filters)  # subscribed by start()
            return
        subs = [gmqtt.Subscription(t, qos=q) for t, q in filters]
        if not self._up:
            client.subscriptions.extend(subs)  # subscribed on connecting
            return
        for i in range(0, len(subs), SUBSCRIBE_CHUNK):
            client.subscribe(subs[i:i + SUBSCRIBE_CHUNK])

    def unsubscribe(self, topics: Sequence[str]) -> None:
        """Drop subscriptions added with :meth:`subscribe`; never blocks."""
        topics = list(topics)
        client = self._client
        if client is None:
            gone = set(topics)
            self._filters = [f for f in self._filters if f[0] not in gone]
        elif not self._up:
            client.forget_subscriptions(topics)
        else:
            for i in range(0, len(topics), SUBSCRIBE_CHUNK):
                client.unsubscribe(topics[i:i + SUBSCRIBE_CHUNK])
