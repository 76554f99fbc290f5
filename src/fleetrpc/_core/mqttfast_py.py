"""MQTT packet fast path (pure-Python twin of ``mqttfast.pyx``).

gmqtt reads through a StreamReader, a read-loop task, a ``Package`` object
and a dispatch table per packet, and builds each PUBLISH in a bytearray with
a property factory.  For a dispatcher that is most of its CPU per round trip.
This module does the two hot packets directly:

- :class:`MqttReader` splits the byte stream into packets.  A QoS 0/1
  PUBLISH goes to ``on_publish(topic, payload, None)``, or to
  ``on_props(topic, payload, props)`` when it has an MQTT 5 property block
  (raw bytes); for QoS 1 the reader queues the PUBACK itself
  (:meth:`MqttReader.take_acks`).  A PUBACK goes to ``on_puback(mid)``;
  every other packet, QoS 2 PUBLISH included, to ``on_packet(cmd, body)``
  (gmqtt's own handler takes those).  A callback that raises does not make
  the reader deliver anything twice: the packet counts as consumed.
- :func:`encode_publish` builds one PUBLISH packet.

A malformed stream makes ``feed`` raise :class:`~fleetrpc.errors.CodecError`;
the caller drops the connection, as the MQTT specification demands.
"""

from __future__ import annotations

from typing import Callable

from ..errors import CodecError

_MAX_REMAINING = 268_435_455


class MqttReader:
    """Incremental MQTT packet reader for one connection."""

    __slots__ = ("_buf", "_on_publish", "_on_packet", "_on_puback", "_on_props", "_v5", "_acks")

    def __init__(
        self,
        on_publish: Callable[[str, bytes, None], None],
        on_packet: Callable[[int, bytes], None],
        v5: bool = True,
        on_puback: Callable[[int], None] | None = None,
        on_props: Callable[[str, bytes, bytes], None] | None = None,
    ) -> None:
        self._buf = b""
        self._on_publish = on_publish
        self._on_packet = on_packet
        self._on_puback = on_puback
        self._on_props = on_props
        self._v5 = bool(v5)
        self._acks = bytearray()

    @property
    def v5(self) -> bool:
        return self._v5

    @v5.setter
    def v5(self, value: bool) -> None:
        self._v5 = bool(value)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take_acks(self) -> bytes:
        """The PUBACKs owed for the QoS 1 messages delivered so far."""
        acks = bytes(self._acks)
        self._acks.clear()
        return acks

    def feed(self, data: bytes) -> int:
        """Consume ``data``; dispatch every complete packet; return how many
        packets were dispatched."""
        buf = self._buf + data if self._buf else bytes(data)
        n = len(buf)
        pos = 0
        count = 0
        while n - pos >= 2:
            # remaining length: variable byte integer, at most 4 bytes
            mult = 1
            length = 0
            i = pos + 1
            while True:
                if i >= n:
                    self._buf = buf[pos:]
                    return count
                b = buf[i]
                length += (b & 0x7F) * mult
                i += 1
                if not b & 0x80:
                    break
                mult *= 128
                if mult > 128 * 128 * 128:
                    self._buf = b""
                    raise CodecError("malformed MQTT remaining length")
            end = i + length
            if end > n:
                break
            cmd = buf[pos]
            pos = end
            count += 1
            try:
                if cmd >> 4 == 3 and (cmd >> 1) & 3 != 2:
                    self._publish(cmd, buf, i, end)
                elif cmd == 0x40 and length >= 2 and self._on_puback is not None:
                    self._on_puback((buf[i] << 8) | buf[i + 1])
                else:
                    self._on_packet(cmd, buf[i:end])
            except BaseException:
                self._buf = buf[pos:]
                raise
        self._buf = buf[pos:] if pos < n else b""
        return count

    def _publish(self, cmd: int, buf: bytes, i: int, end: int) -> None:
        qos = (cmd >> 1) & 3
        if qos == 3:
            raise CodecError("malformed MQTT PUBLISH: QoS 3")
        if end - i < 2:
            raise CodecError("malformed MQTT PUBLISH: truncated topic length")
        tlen = (buf[i] << 8) | buf[i + 1]
        i += 2
        if i + tlen > end:
            raise CodecError("malformed MQTT PUBLISH: topic longer than the packet")
        try:
            topic = buf[i:i + tlen].decode()
        except UnicodeDecodeError:
            raise CodecError("malformed MQTT PUBLISH: topic is not UTF-8") from None
        i += tlen
        if qos:
            if end - i < 2:
                raise CodecError("malformed MQTT PUBLISH: truncated packet id")
            self._acks += b"\x40\x02" + buf[i:i + 2]
            i += 2
        props = None
        if self._v5:
            plen = 0
            mult = 1
            while True:
                if i >= end:
                    raise CodecError("malformed MQTT PUBLISH: truncated properties")
                b = buf[i]
                plen += (b & 0x7F) * mult
                i += 1
                if not b & 0x80:
                    break
                mult *= 128
                if mult > 128 * 128 * 128:
                    raise CodecError("malformed MQTT PUBLISH: property length")
            if i + plen > end:
                raise CodecError("malformed MQTT PUBLISH: properties longer than the packet")
            if plen:
                props = buf[i:i + plen]
            i += plen
        if props is not None and self._on_props is not None:
            self._on_props(topic, buf[i:end], props)
        else:
            self._on_publish(topic, buf[i:end], None)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, b = divmod(value, 128)
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int,
    mid: int,
    retain: bool = False,
    v5: bool = True,
    response_topic: str | None = None,
    correlation_data: bytes | None = None,
) -> bytes:
    """One PUBLISH packet.  ``mid`` is used only when ``qos`` > 0.  Under
    MQTT 5 the optional Response Topic and Correlation Data go in its
    properties."""
    t = topic.encode()
    if len(t) > 65535:
        raise CodecError("topic longer than 65535 bytes")
    variable = len(t).to_bytes(2, "big") + t
    if qos:
        variable += mid.to_bytes(2, "big")
    if v5:
        props = b""
        if response_topic is not None:
            rt = response_topic.encode()
            props += b"\x08" + len(rt).to_bytes(2, "big") + rt
        if correlation_data is not None:
            props += b"\x09" + len(correlation_data).to_bytes(2, "big") + correlation_data
        variable += _varint(len(props)) + props
    remaining = len(variable) + len(payload)
    if remaining > _MAX_REMAINING:
        raise CodecError("MQTT packet too large")
    header = bytes((0x30 | (qos << 1) | (1 if retain else 0),)) + _varint(remaining)
    return header + variable + payload
