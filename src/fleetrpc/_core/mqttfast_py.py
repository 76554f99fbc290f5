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
  (gmqtt's own handler takes those).  A callback that raises is logged and
  counted (``handler_errors``); its packet counts as consumed and the rest
  of the data is still parsed, in the same ``feed``.  A partial packet is
  kept in a buffer with a read offset: a feed appends to it and parses on
  from the offset (no copy of what is buffered); the buffer is emptied
  when all is consumed and compacted only when mostly consumed and large.
- :func:`encode_publish` builds one PUBLISH packet.

A malformed stream makes ``feed`` raise :class:`~fleetrpc.errors.CodecError`;
the caller drops the connection, as the MQTT specification demands.
"""

from __future__ import annotations

import logging
from typing import Callable

from ..errors import CodecError

_MAX_REMAINING = 268_435_455
#: A consumed prefix at least this long (and half the buffer) is cut off.
_COMPACT_AT = 65536
_log = logging.getLogger("fleetrpc.transport")


class MqttReader:
    """Incremental MQTT packet reader for one connection."""

    __slots__ = ("_buf", "_pos", "_busy", "_on_publish", "_on_packet", "_on_puback", "_on_props",
                 "_v5", "_acks", "handler_errors")

    def __init__(
        self,
        on_publish: Callable[[str, bytes, None], None],
        on_packet: Callable[[int, bytes], None],
        v5: bool = True,
        on_puback: Callable[[int], None] | None = None,
        on_props: Callable[[str, bytes, bytes], None] | None = None,
    ) -> None:
        self._buf = bytearray()  # unconsumed stream from _pos on
        self._pos = 0
        self._busy = False
        self._on_publish = on_publish
        self._on_packet = on_packet
        self._on_puback = on_puback
        self._on_props = on_props
        self._v5 = bool(v5)
        self._acks = bytearray()
        #: Packets whose handler raised (each logged; parsing went on).
        self.handler_errors = 0

    @property
    def v5(self) -> bool:
        return self._v5

    @v5.setter
    def v5(self, value: bool) -> None:
        self._v5 = bool(value)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete packet kept for the next ``feed``."""
        return len(self._buf) - self._pos

    def take_acks(self) -> bytes:
        """The PUBACKs owed for the QoS 1 messages delivered so far."""
        acks = bytes(self._acks)
        self._acks.clear()
        return acks

    def feed(self, data: bytes) -> int:
        """Consume ``data``; dispatch every complete packet; return how many
        packets were dispatched.  A handler that raises is logged and
        counted (``handler_errors``), and the packets after it are still
        dispatched; only a malformed stream raises (:class:`CodecError`)."""
        if self._busy:
            raise RuntimeError("MqttReader.feed is not re-entrant")
        self._busy = True
        try:
            buf = self._buf
            if self._pos == len(buf):
                # Nothing left over (the usual case): parse data in place and
                # keep only its incomplete tail.
                data = data if type(data) is bytes else bytes(data)
                count, pos = self._parse(data, 0)
                if pos < len(data):
                    buf.clear()
                    buf += data[pos:] if pos else data
                    self._pos = 0
                return count
            buf += data
            count, pos = self._parse(buf, self._pos)
            if pos == len(buf):
                buf.clear()
                pos = 0
            elif pos >= _COMPACT_AT and pos * 2 >= len(buf):
                # Rarely: most of the buffer is consumed and it is big.
                del buf[:pos]
                pos = 0
            self._pos = pos
            return count
        except CodecError:
            self._buf = bytearray()  # the stream is broken: the caller drops the connection
            self._pos = 0
            raise
        finally:
            self._busy = False

    def _parse(self, buf: bytes | bytearray, pos: int) -> tuple[int, int]:
        """Dispatch every complete packet of ``buf`` from ``pos`` on; return
        (packets dispatched, where the first incomplete one starts)."""
        n = len(buf)
        count = 0
        while n - pos >= 2:
            # remaining length: variable byte integer, at most 4 bytes
            mult = 1
            length = 0
            i = pos + 1
            while True:
                if i >= n:
                    return count, pos
                b = buf[i]
                length += (b & 0x7F) * mult
                i += 1
                if not b & 0x80:
                    break
                mult *= 128
                if mult > 128 * 128 * 128:
                    raise CodecError("malformed MQTT remaining length")
            end = i + length
            if end > n:
                break
            cmd = buf[pos]
            pos = end
            count += 1
            if cmd >> 4 == 3 and (cmd >> 1) & 3 != 2:
                self._publish(cmd, buf, i, end)
            else:
                try:
                    if cmd == 0x40 and length >= 2 and self._on_puback is not None:
                        self._on_puback((buf[i] << 8) | buf[i + 1])
                    else:
                        self._on_packet(cmd, bytes(buf[i:end]))
                except Exception:  # noqa: BLE001  a handler's bug must not stop the stream
                    self._handler_failed()
        return count, pos

    def _handler_failed(self) -> None:
        self.handler_errors += 1
        _log.exception("inbound MQTT packet handler failed; reading goes on")

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
        if props is not None:
            props = bytes(props)
        try:
            if props is not None and self._on_props is not None:
                self._on_props(topic, bytes(buf[i:end]), props)
            else:
                self._on_publish(topic, bytes(buf[i:end]), None)
        except Exception:  # noqa: BLE001  as in _parse
            self._handler_failed()


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
            if len(rt) > 65535:
                raise CodecError("response topic longer than 65535 bytes")
            props += b"\x08" + len(rt).to_bytes(2, "big") + rt
        if correlation_data is not None:
            if len(correlation_data) > 65535:
                raise CodecError("correlation data longer than 65535 bytes")
            props += b"\x09" + len(correlation_data).to_bytes(2, "big") + correlation_data
        variable += _varint(len(props)) + props
    remaining = len(variable) + len(payload)
    if remaining > _MAX_REMAINING:
        raise CodecError("MQTT packet too large")
    header = bytes((0x30 | (qos << 1) | (1 if retain else 0),)) + _varint(remaining)
    return header + variable + payload
