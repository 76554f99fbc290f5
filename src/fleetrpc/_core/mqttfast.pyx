# cython: language_level=3
"""MQTT packet fast path, compiled (twin: ``mqttfast_py.py``).

See the twin's docstring for the contract; both raise the same CodecError
messages for the same malformed input.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcpy

cimport cython

import logging

from fleetrpc.errors import CodecError

DEF MAX_REMAINING = 268435455


# A consumed prefix at least this long (and half the buffer) is cut off.
DEF COMPACT_AT = 65536

_log = logging.getLogger("fleetrpc.transport")


@cython.final
cdef class MqttReader:
    # fields: see mqttfast.pxd

    def __init__(self, on_publish, on_packet, v5=True, on_puback=None, on_props=None):
        self._buf = bytearray()
        self._pos = 0
        self._busy = False
        self._on_publish = on_publish
        self._on_packet = on_packet
        self._on_puback = on_puback
        self._on_props = on_props
        self._v5 = bool(v5)
        self._acks = bytearray()
        self.handler_errors = 0

    @property
    def v5(self):
        return self._v5

    @v5.setter
    def v5(self, value):
        self._v5 = bool(value)

    @property
    def buffered(self):
        return PyByteArray_GET_SIZE(self._buf) - self._pos

    def take_acks(self):
        cdef bytes acks = bytes(self._acks)
        del self._acks[:]
        return acks

    def feed(self, data):
        cdef bytes chunk
        cdef bytearray buf = self._buf
        cdef Py_ssize_t pos, n, count = 0
        if self._busy:
            raise RuntimeError("MqttReader.feed is not re-entrant")
        self._busy = True
        try:
            if self._pos == PyByteArray_GET_SIZE(buf):
                # Nothing left over (the usual case): parse data in place and
                # keep only its incomplete tail.
                chunk = <bytes>data if type(data) is bytes else bytes(data)
                n = PyBytes_GET_SIZE(chunk)
                pos = self._parse(<const unsigned char*>PyBytes_AS_STRING(chunk), n, 0, &count)
                if pos < n:
                    del buf[:]
                    buf.extend(chunk[pos:] if pos else chunk)
                    self._pos = 0
                return count
            buf.extend(data)
            n = PyByteArray_GET_SIZE(buf)
            pos = self._parse(<const unsigned char*>PyByteArray_AS_STRING(buf), n, self._pos, &count)
            if pos == n:
                del buf[:]
                pos = 0
            elif pos >= COMPACT_AT and pos * 2 >= n:
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

    cdef Py_ssize_t _parse(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t pos,
                           Py_ssize_t* count) except -1:
        # Dispatch every complete packet from pos on; return where the first
        # incomplete one starts.  p stays valid: feed is not re-entrant, so
        # nothing resizes the buffer while a handler runs.
        cdef Py_ssize_t i, end, length, mult
        cdef unsigned char b, cmd
        while n - pos >= 2:
            mult = 1
            length = 0
            i = pos + 1
            while True:
                if i >= n:
                    return pos
                b = p[i]
                length += (b & 0x7F) * mult
                i += 1
                if not (b & 0x80):
                    break
                mult *= 128
                if mult > 128 * 128 * 128:
                    raise CodecError("malformed MQTT remaining length")
            end = i + length
            if end > n:
                break
            cmd = p[pos]
            pos = end
            count[0] += 1
            if cmd >> 4 == 3 and ((cmd >> 1) & 3) != 2:
                self._publish(cmd, p, i, end)
            else:
                try:
                    if cmd == 0x40 and length >= 2 and self._on_puback is not None:
                        self._on_puback((p[i] << 8) | p[i + 1])
                    else:
                        self._on_packet(cmd, PyBytes_FromStringAndSize(<const char*>p + i, end - i))
                except Exception:  # a handler's bug must not stop the stream
                    self._handler_failed()
        return pos

    cdef void _handler_failed(self):
        self.handler_errors += 1
        _log.exception("inbound MQTT packet handler failed; reading goes on")

    cdef int _publish(self, unsigned char cmd, const unsigned char* p,
                      Py_ssize_t i, Py_ssize_t end) except -1:
        cdef int qos = (cmd >> 1) & 3
        cdef Py_ssize_t tlen, plen, mult
        cdef unsigned char b
        cdef unsigned char ack[4]
        cdef object props = None
        if qos == 3:
            raise CodecError("malformed MQTT PUBLISH: QoS 3")
        if end - i < 2:
            raise CodecError("malformed MQTT PUBLISH: truncated topic length")
        tlen = (p[i] << 8) | p[i + 1]
        i += 2
        if i + tlen > end:
            raise CodecError("malformed MQTT PUBLISH: topic longer than the packet")
        try:
            topic = PyUnicode_DecodeUTF8(<const char*>p + i, tlen, NULL)
        except UnicodeDecodeError:
            raise CodecError("malformed MQTT PUBLISH: topic is not UTF-8") from None
        i += tlen
        if qos:
            if end - i < 2:
                raise CodecError("malformed MQTT PUBLISH: truncated packet id")
            ack[0] = 0x40
            ack[1] = 0x02
            ack[2] = p[i]
            ack[3] = p[i + 1]
            self._acks.extend(PyBytes_FromStringAndSize(<const char*>ack, 4))
            i += 2
        if self._v5:
            plen = 0
            mult = 1
            while True:
                if i >= end:
                    raise CodecError("malformed MQTT PUBLISH: truncated properties")
                b = p[i]
                plen += (b & 0x7F) * mult
                i += 1
                if not (b & 0x80):
                    break
                mult *= 128
                if mult > 128 * 128 * 128:
                    raise CodecError("malformed MQTT PUBLISH: property length")
            if i + plen > end:
                raise CodecError("malformed MQTT PUBLISH: properties longer than the packet")
            if plen:
                props = PyBytes_FromStringAndSize(<const char*>p + i, plen)
            i += plen
        payload = PyBytes_FromStringAndSize(<const char*>p + i, end - i)
        try:
            if props is not None and self._on_props is not None:
                self._on_props(topic, payload, props)
            else:
                self._on_publish(topic, payload, None)
        except Exception:  # as in _parse
            self._handler_failed()
        return 0


cdef inline Py_ssize_t _varint_into(unsigned char* out, Py_ssize_t value) noexcept:
    cdef Py_ssize_t n = 0
    cdef unsigned char b
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out[n] = b | 0x80
            n += 1
        else:
            out[n] = b
            return n + 1


def encode_publish(str topic, payload, int qos, int mid, retain=False, v5=True,
                   response_topic=None, correlation_data=None):
    cdef bytes t = topic.encode()
    cdef bytes pl = payload if type(payload) is bytes else bytes(payload)
    cdef bytes rt = None
    cdef bytes cd = None
    cdef Py_ssize_t tlen = len(t), plen = len(pl), props_len = 0, remaining, total, pos
    cdef unsigned char hdr[5]
    cdef unsigned char pv[4]
    cdef Py_ssize_t hn, pn = 0
    cdef bint is_v5 = bool(v5)
    if tlen > 65535:
        raise CodecError("topic longer than 65535 bytes")
    if is_v5:
        if response_topic is not None:
            rt = response_topic.encode()
            if len(rt) > 65535:
                raise CodecError("response topic longer than 65535 bytes")
            props_len += 3 + len(rt)
        if correlation_data is not None:
            cd = bytes(correlation_data)
            if len(cd) > 65535:
                raise CodecError("correlation data longer than 65535 bytes")
            props_len += 3 + len(cd)
        pn = _varint_into(pv, props_len)
    remaining = 2 + tlen + (2 if qos else 0) + (pn + props_len if is_v5 else 0) + plen
    if remaining > MAX_REMAINING:
        raise CodecError("MQTT packet too large")
    hdr[0] = 0x30 | (qos << 1) | (1 if retain else 0)
    hn = 1 + _varint_into(hdr + 1, remaining)
    total = hn + remaining
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(o, hdr, hn)
    pos = hn
    o[pos] = (tlen >> 8) & 0xFF
    o[pos + 1] = tlen & 0xFF
    pos += 2
    memcpy(o + pos, PyBytes_AS_STRING(t), tlen)
    pos += tlen
    if qos:
        o[pos] = (mid >> 8) & 0xFF
        o[pos + 1] = mid & 0xFF
        pos += 2
    if is_v5:
        memcpy(o + pos, pv, pn)
        pos += pn
        if rt is not None:
            o[pos] = 0x08
            o[pos + 1] = (len(rt) >> 8) & 0xFF
            o[pos + 2] = len(rt) & 0xFF
            memcpy(o + pos + 3, PyBytes_AS_STRING(rt), len(rt))
            pos += 3 + len(rt)
        if cd is not None:
            o[pos] = 0x09
            o[pos + 1] = (len(cd) >> 8) & 0xFF
            o[pos + 2] = len(cd) & 0xFF
            memcpy(o + pos + 3, PyBytes_AS_STRING(cd), len(cd))
            pos += 3 + len(cd)
    memcpy(o + pos, PyBytes_AS_STRING(pl), plen)
    return out
