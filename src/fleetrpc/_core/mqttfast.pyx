# cython: language_level=3
"""MQTT packet fast path, compiled (twin: ``mqttfast_py.py``).

See the twin's docstring for the contract; both raise the same CodecError
messages for the same malformed input.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcpy

cimport cython

from fleetrpc.errors import CodecError

DEF MAX_REMAINING = 268435455


@cython.final
cdef class MqttReader:
    # fields: see mqttfast.pxd

    def __init__(self, on_publish, on_packet, v5=True, on_puback=None, on_props=None):
        self._buf = b""
        self._on_publish = on_publish
        self._on_packet = on_packet
        self._on_puback = on_puback
        self._on_props = on_props
        self._v5 = bool(v5)
        self._acks = bytearray()

    @property
    def v5(self):
        return self._v5

    @v5.setter
    def v5(self, value):
        self._v5 = bool(value)

    @property
    def buffered(self):
        return len(self._buf)

    def take_acks(self):
        cdef bytes acks = bytes(self._acks)
        del self._acks[:]
        return acks

    def feed(self, data):
        cdef bytes buf
        if self._buf:
            buf = self._buf + bytes(data)
        elif type(data) is bytes:
            buf = <bytes>data
        else:
            buf = bytes(data)
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t pos = 0, i, end
        cdef Py_ssize_t length, mult
        cdef unsigned char b, cmd
        cdef int count = 0
        while n - pos >= 2:
            mult = 1
            length = 0
            i = pos + 1
            while True:
                if i >= n:
                    self._buf = buf[pos:]
                    return count
                b = p[i]
                length += (b & 0x7F) * mult
                i += 1
                if not (b & 0x80):
                    break
                mult *= 128
                if mult > 128 * 128 * 128:
                    self._buf = b""
                    raise CodecError("malformed MQTT remaining length")
            end = i + length
            if end > n:
                break
            cmd = p[pos]
            pos = end
            count += 1
            try:
                if cmd >> 4 == 3 and ((cmd >> 1) & 3) != 2:
                    self._publish(cmd, buf, p, i, end)
                elif cmd == 0x40 and length >= 2 and self._on_puback is not None:
                    self._on_puback((p[i] << 8) | p[i + 1])
                else:
                    self._on_packet(cmd, buf[i:end])
            except BaseException:
                self._buf = buf[pos:]
                raise
        self._buf = buf[pos:] if pos < n else b""
        return count

    cdef int _publish(self, unsigned char cmd, bytes buf, const unsigned char* p,
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
        if props is not None and self._on_props is not None:
            self._on_props(topic, payload, props)
        else:
            self._on_publish(topic, payload, None)
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
            props_len += 3 + len(rt)
        if correlation_data is not None:
            cd = bytes(correlation_data)
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
