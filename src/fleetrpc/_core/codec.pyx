# cython: language_level=3
"""Envelope codec (compiled; pure twin: ``codec_py.py``).

Contract: ``docs/core.md``, "Codec and the wire layout"; topic layout:
:mod:`fleetrpc.wire`.  The order of the checks and the text of every
error are those of ``codec_py.py`` (its docstring lists the order).

The topic is read in place: a pointer-plus-length cursor over the str's UTF-8
(``PyUnicode_AsUTF8AndSize``: no copy for an ASCII str), one table lookup per
byte, explicit length checks and a decimal parse with an overflow check.  The
only Python objects made for a reply are the device id, the request id, the
Message and the decoded body (the node id is reused: replies carry this
node's own id).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.unicode cimport PyUnicode_Check, PyUnicode_CheckExact, PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcmp, memcpy

import sys

from fleetrpc import wire as _protocol
from fleetrpc.errors import EMPTY_REPLY, CodecError, ValidationError
from fleetrpc._core.constants import DEFAULT_MAX_PAYLOAD, DEFAULT_PREFIX, MAX_ID_LENGTH, Kind
from fleetrpc._core.reasons import decode_reason, encode_reason
from typing import Any

_check_json_depth = _protocol.check_json_depth

cdef extern from "Python.h":
    # NULL with an exception set (UnicodeEncodeError: a lone surrogate);
    # checked by hand so that the hot path has no try block.
    const char* _utf8 "PyUnicode_AsUTF8AndSize"(object s, Py_ssize_t* size) noexcept
    void PyErr_Clear() noexcept
    bint PyUnicode_IS_ASCII(object s) noexcept
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object s) noexcept


# Kind members by C value (index = Kind value).
cdef tuple _KINDS = (None, Kind.REPLY, Kind.ACK, Kind.CALL, Kind.PRESENCE,
                     Kind.HEARTBEAT, Kind.ELVES, Kind.REQUEST, Kind.RETURN)

cdef dict _SHAPES = {
    None: "{p}/d/{{device}}/{{kind}}/...",
    Kind.REQUEST: "{p}/d/{{device}}/req/{{node}}/{{rid}}",
    Kind.REPLY: "{p}/d/{{device}}/res/{{node}}/{{rid}}",
    Kind.ACK: "{p}/d/{{device}}/ack/{{node}}/{{rid}}",
    Kind.CALL: "{p}/d/{{device}}/call/{{cid}}",
    Kind.RETURN: "{p}/d/{{device}}/ret/{{cid}}",
    Kind.PRESENCE: "{p}/d/{{device}}/presence",
    Kind.HEARTBEAT: "{p}/d/{{device}}/hb",
    Kind.ELVES: "{p}/elves/{{app}}/...",
}

cdef Py_ssize_t _MAX_ID = MAX_ID_LENGTH
# value * 10 + digit stays below 2**63 while value < _TENTH, or value ==
# _TENTH and digit <= _LAST (2**63 - 1 = 922337203685477580 * 10 + 7).
cdef long long _TENTH = 922337203685477580
cdef unsigned char _LAST = 7

# Byte classes of a topic level: 0 plain, 1 '/', 2 forbidden in an id ('+', '#', NUL).
cdef unsigned char _CLASS[256]
_CLASS[47] = 1   # '/'
_CLASS[43] = 2   # '+'
_CLASS[35] = 2   # '#'
_CLASS[0] = 2    # NUL


# -- error text (identical in codec_py) ----------------------------------------

# Untyped arguments and str.__repr__: a topic may be a str subclass (a `str`
# argument would reject it, and its own __repr__ must not change the text).
cdef str _show(s):
    return str.__repr__(s if len(s) <= 80 else s[:77] + "...")


cdef str _clip(s):
    return str.__repr__(s if len(s) <= 40 else s[:37] + "...")


cdef inline str _text(const char* p, Py_ssize_t size):
    # A slice of the topic's UTF-8 as str; slices end at '/', so they are valid.
    return PyUnicode_DecodeUTF8(<char*>p, size, NULL)


cdef inline str _ascii_text(const char* p, Py_ssize_t size):
    # _text for a slice of an ASCII str: one allocation and a memcpy.
    cdef object u = PyUnicode_New(size, 127)
    memcpy(PyUnicode_DATA(u), p, <size_t>size)
    return u


cdef object _empty_level(object topic):
    return CodecError(f"empty level in topic {_show(topic)}")


# -- cursor helpers -------------------------------------------------------------

cdef inline Py_ssize_t _level_end(const char* s, Py_ssize_t pos, Py_ssize_t n) noexcept:
    """Index of the '/' ending the level that starts at pos, or n."""
    cdef const char* hit = <const char*>memchr(s + pos, b'/', <size_t>(n - pos))
    return n if hit == NULL else hit - s


cdef inline Py_ssize_t _scan_id(const char* s, Py_ssize_t pos, Py_ssize_t n, bint* forbidden) noexcept:
    """Like _level_end, and sets *forbidden if the level holds '+', '#' or NUL."""
    cdef unsigned char c
    while pos < n:
        c = _CLASS[<unsigned char>s[pos]]
        if c:
            if c == 1:
                break
            forbidden[0] = True
        pos += 1
    return pos


cdef inline int _word_kind(const char* p, Py_ssize_t size) noexcept:
    """The kind named by the level after {device}, or K_NONE."""
    if size == 3:
        if p[0] == b'r' and p[1] == b'e':
            if p[2] == b's':
                return K_REPLY
            if p[2] == b'q':
                return K_REQUEST
            if p[2] == b't':
                return K_RETURN
        elif p[0] == b'a' and p[1] == b'c' and p[2] == b'k':
            return K_ACK
    elif size == 4:
        if memcmp(p, b"call", 4) == 0:
            return K_CALL
    elif size == 2:
        if p[0] == b'h' and p[1] == b'b':
            return K_HEARTBEAT
    elif size == 8:
        if memcmp(p, b"presence", 8) == 0:
            return K_PRESENCE
    return K_NONE


cdef object _as_bytes(object payload):
    """Any bytes-like payload (bytearray, memoryview, ...) as bytes."""
    if isinstance(payload, bytes):
        return payload
    try:
        return memoryview(payload).tobytes()
    except (TypeError, ValueError, BufferError):
        raise CodecError(f"payload must be bytes-like, not {type(payload).__name__}") from None


cdef int _check_elves(dict body) except -1:
    cdef object value
    for field in ("mqt", "mqs", "mqf"):
        value = body.get(field)
        if value is None and field not in body:
            raise CodecError(f"invalid ELVES payload: missing {field!r}")
        if type(value) is not str:
            raise CodecError(
                f"invalid ELVES payload: {field!r} must be a string, not {type(value).__name__}"
            )
        if field == "mqt":
            if value != "call" and value != "back":
                raise CodecError(
                    f"invalid ELVES payload: 'mqt' must be 'call' or 'back', not {_clip(value)}"
                )
        elif not value:
            raise CodecError(f"invalid ELVES payload: {field!r} is empty")
    return 0


def _check_config(prefix, max_payload):
    _protocol.validate_prefix(prefix)
    if type(max_payload) is not int or not 0 <= max_payload <= sys.maxsize:
        raise ValidationError(f"max_payload must be an int in [0, {sys.maxsize}], not {max_payload!r}")


# -- Message --------------------------------------------------------------------

@cython.final
@cython.freelist(64)
@cython.no_gc
cdef class Message:
    """One decoded inbound MQTT message.

    ``kind`` (:class:`Kind`); ``device`` (the device id, or the Elves
    ``{app}``); ``node`` (the node id of REQUEST/REPLY/ACK, the levels after
    ``{app}`` of ELVES, else ``None``); ``rid`` (request or call id, ``0``
    when the topic has none); ``body`` (the decoded payload); ``error``
    (why a REPLY's ``body`` is ``None``: it was not JSON; else ``None``).
    """

    def __init__(self, kind, device, node=None, rid=0, body=None, error=None):
        self.kind = kind
        self.device = device
        self.node = node
        self.rid = rid
        self.body = body
        self.error = error

    def __repr__(self):
        return (
            f"<Message {self.kind.name} device={self.device!r} node={self.node!r} "
            f"rid={self.rid} body={self.body!r} error={self.error!r}>"
        )


# -- Codec ----------------------------------------------------------------------

@cython.final
cdef class Codec:
    """Classify and decode inbound MQTT messages; encode outbound ones.

    ``prefix`` is the first level(s) of every topic; payloads larger than
    ``max_payload`` bytes are refused.
    """

    def __init__(self, prefix=DEFAULT_PREFIX, max_payload=DEFAULT_MAX_PAYLOAD):
        _check_config(prefix, max_payload)
        prefix = str.__str__(prefix)  # a str subclass becomes a plain str
        self.prefix = prefix
        self.max_payload = max_payload
        self._pfx = (prefix + "/").encode("utf-8")
        self._shapes = {k: v.format(p=prefix) for k, v in _SHAPES.items()}
        self._node = None
        self._node_utf8 = None
        self._dec_any = _protocol.ANY_DECODER.decode
        self._dec_request = _protocol.REQUEST_DECODER.decode
        self._dec_presence = _protocol.PRESENCE_DECODER.decode
        self._dec_object = _protocol.OBJECT_DECODER.decode
        self._enc = _protocol.JSON_ENCODER.encode
        self._RpcRequest = _protocol.RpcRequest

    def __repr__(self):
        return f"Codec(prefix={self.prefix!r}, max_payload={self.max_payload})"

    # -- errors --------------------------------------------------------------

    cdef object _few(self, object topic, object kind):
        return CodecError(f"too few levels in topic {_show(topic)} (expected {self._shapes[kind]})")

    cdef object _many(self, object topic, object kind):
        return CodecError(f"too many levels in topic {_show(topic)} (expected {self._shapes[kind]})")

    cdef int _check_id(self, Py_ssize_t size, bint forbidden, str what, object topic) except -1:
        if size == 0:
            raise _empty_level(topic)
        if forbidden:
            raise CodecError(f"{what} id in topic {_show(topic)} contains '+', '#' or NUL")
        if size > _MAX_ID:
            raise CodecError(f"{what} id in topic {_show(topic)} is longer than {_MAX_ID} bytes")
        return 0

    cdef long long _parse_id(self, const char* p, Py_ssize_t size, str what, object topic) except -1:
        # Every byte must be a digit (checked first, so "not decimal" wins over
        # "out of range" as in the twin); leading zeros are allowed.
        cdef long long value = 0
        cdef bint overflow = False
        cdef Py_ssize_t i
        cdef unsigned char d
        if size == 0:
            raise _empty_level(topic)
        for i in range(size):
            d = <unsigned char>(<unsigned char>p[i] - 48)
            if d > 9:
                raise CodecError(
                    f"{what} {_clip(_text(p, size))} in topic {_show(topic)} is not a decimal integer"
                )
            if not overflow:
                if value < _TENTH or (value == _TENTH and d <= _LAST):
                    value = value * 10 + d
                else:
                    overflow = True
        if overflow:
            raise CodecError(
                f"{what} {_clip(_text(p, size))} in topic {_show(topic)} is out of range (must be below 2**63)"
            )
        return value

    cdef str _node_str(self, const char* p, Py_ssize_t size):
        cdef bytes cached = self._node_utf8
        if (cached is not None and PyBytes_GET_SIZE(cached) == size
                and memcmp(PyBytes_AS_STRING(cached), p, <size_t>size) == 0):
            return self._node
        node = _text(p, size)
        self._node = node
        self._node_utf8 = PyBytes_FromStringAndSize(p, size)
        return node

    # -- decode --------------------------------------------------------------

    cpdef Message decode(self, object topic, object payload):
        """Classify ``(topic, payload)`` and decode it into a :class:`Message`;
        :class:`CodecError` on anything malformed."""
        cdef const char* s
        cdef Py_ssize_t n = 0, pos, end, plen, dev0 = 0, dev1 = 0, rest
        cdef bint forbidden = False  # set by _scan_id; a True raises at once, never carries over
        cdef int kind
        cdef long long rid = 0
        cdef object node = None
        cdef object body = None
        cdef object error = None
        cdef Message m

        if not PyUnicode_Check(topic):
            raise CodecError(f"topic must be str, not {type(topic).__name__}")
        s = _utf8(topic, &n)
        if s == NULL:
            PyErr_Clear()
            raise CodecError(f"topic {_show(topic)} is not valid UTF-8")
        plen = PyBytes_GET_SIZE(self._pfx)
        if n < plen or memcmp(s, PyBytes_AS_STRING(self._pfx), <size_t>plen) != 0:
            raise CodecError(f"topic {_show(topic)} does not start with {(self.prefix + '/')!r}")

        pos = plen
        end = _level_end(s, pos, n)
        if end - pos == 1 and s[pos] == b'd':
            # {p}/d/{device}/{kind}/...
            if end == n:
                raise self._few(topic, None)
            pos = end + 1
            end = _scan_id(s, pos, n, &forbidden)
            self._check_id(end - pos, forbidden, "device", topic)
            dev0 = pos
            dev1 = end
            if end == n:
                raise self._few(topic, None)
            pos = end + 1
            end = _level_end(s, pos, n)
            kind = _word_kind(s + pos, end - pos)
            if kind == K_NONE:
                if end == pos:
                    raise _empty_level(topic)
                raise CodecError(
                    f"unknown message kind {_clip(_text(s + pos, end - pos))} in topic {_show(topic)}"
                )
            if kind == K_REPLY or kind == K_ACK or kind == K_REQUEST:
                if end == n:
                    raise self._few(topic, _KINDS[kind])
                pos = end + 1
                end = _scan_id(s, pos, n, &forbidden)
                self._check_id(end - pos, forbidden, "node", topic)
                node = self._node_str(s + pos, end - pos)
                if end == n:
                    raise self._few(topic, _KINDS[kind])
                pos = end + 1
                end = _level_end(s, pos, n)
                rid = self._parse_id(s + pos, end - pos, "request id", topic)
                if end != n:
                    raise self._many(topic, _KINDS[kind])
            elif kind == K_CALL or kind == K_RETURN:
                if end == n:
                    raise self._few(topic, _KINDS[kind])
                pos = end + 1
                end = _level_end(s, pos, n)
                rid = self._parse_id(s + pos, end - pos, "call id", topic)
                if end != n:
                    raise self._many(topic, _KINDS[kind])
            elif end != n:
                raise self._many(topic, _KINDS[kind])
        elif end - pos == 5 and memcmp(s + pos, b"elves", 5) == 0:
            # {p}/elves/{app}[/...]
            kind = K_ELVES
            if end == n:
                raise self._few(topic, _KINDS[kind])
            pos = end + 1
            end = _scan_id(s, pos, n, &forbidden)
            self._check_id(end - pos, forbidden, "app", topic)
            dev0 = pos
            dev1 = end
            if end != n:
                rest = end + 1
                pos = rest
                while True:
                    end = _scan_id(s, pos, n, &forbidden)
                    if end == pos:
                        raise _empty_level(topic)
                    if forbidden:
                        raise CodecError(f"a level of topic {_show(topic)} contains '+', '#' or NUL")
                    if end == n:
                        break
                    pos = end + 1
                node = _text(s + rest, n - rest)
        elif end == pos:
            raise _empty_level(topic)
        else:
            raise CodecError(
                f"unknown namespace {_clip(_text(s + pos, end - pos))} in topic {_show(topic)} "
                "(expected 'd' or 'elves')"
            )

        if not PyBytes_Check(payload):
            payload = _as_bytes(payload)
        if PyBytes_GET_SIZE(payload) > self.max_payload:
            raise CodecError(
                f"{_KINDS[kind].name} payload of {PyBytes_GET_SIZE(payload)} bytes "
                f"exceeds the limit of {self.max_payload} bytes"
            )

        if kind == K_REPLY:
            if PyBytes_GET_SIZE(payload):
                try:
                    body = self._dec_any(payload)
                except Exception as exc:  # msgspec: DecodeError, ValidationError, RecursionError
                    error = f"reply is not valid JSON: {decode_reason(Any, payload, exc)}"
            else:
                error = EMPTY_REPLY
        elif kind != K_ACK:
            body = self._decode_body(kind, payload)

        m = Message.__new__(Message)
        m.kind = <object>PyTuple_GET_ITEM(_KINDS, kind)
        if PyUnicode_IS_ASCII(topic):
            m.device = _ascii_text(s + dev0, dev1 - dev0)
        else:
            m.device = _text(s + dev0, dev1 - dev0)
        m.node = node
        m.rid = rid
        m.body = body
        m.error = error
        return m

    cdef object _decode_body(self, int kind, object payload):
        # Everything but REPLY and ACK: the payload must be the kind's JSON.
        if not PyBytes_GET_SIZE(payload):
            raise CodecError(f"empty {_KINDS[kind].name} payload")
        if kind == K_REQUEST or kind == K_CALL:
            decode = self._dec_request
        elif kind == K_RETURN:
            decode = self._dec_any
        elif kind == K_PRESENCE:
            decode = self._dec_presence
        else:
            decode = self._dec_object
        try:
            if kind == K_CALL:  # a device's own call: one depth limit on every Python
                _check_json_depth(payload)
            body = decode(payload)
        except Exception as exc:
            reason = decode_reason(decode.__self__.type, payload, exc)
            raise CodecError(f"invalid {_KINDS[kind].name} payload: {reason}") from None
        if kind == K_ELVES:
            _check_elves(body)
        return body

    # -- encode --------------------------------------------------------------

    cpdef bytes encode_request(self, object method, object params):
        """The JSON payload of a REQUEST or CALL: ``{"method": ..., "params": ...}``."""
        if not PyUnicode_Check(method) or not 0 < len(method) <= _MAX_ID:
            raise CodecError(f"method must be a non-empty str of at most {_MAX_ID} characters")
        if not PyUnicode_CheckExact(method):
            method = str.__str__(method)  # msgspec encodes plain str only
        try:
            return self._enc(self._RpcRequest(method, params))
        except Exception as exc:  # msgspec: TypeError, RecursionError, ...
            reason = encode_reason(self._RpcRequest(method, params), exc)
            raise CodecError(f"cannot encode the params of {_clip(method)}: {reason}") from None

    cpdef bytes encode(self, object obj):
        """``obj`` as JSON bytes (msgspec: Structs, dicts, lists, ...)."""
        try:
            return self._enc(obj)
        except Exception as exc:
            raise CodecError(f"cannot encode {type(obj).__name__}: {encode_reason(obj, exc)}") from None
