"""MQTT 3.1.1 / 5 control packets a server reads and writes (all but PUBLISH
and PUBACK, which the compiled core frames: :mod:`fleetrpc._core`), and the
few a client writes (CONNECT, SUBSCRIBE), so the simulator's lean client and
the tests' raw client frame them here too instead of each by hand.

None of these is on the hot path (CONNECT once per connection, SUBSCRIBE a
few times, PINGREQ once per keepalive), so they are plain Python: a parser
per packet with a bounds-checked cursor, and the byte strings of the
replies.  Every malformed input raises :class:`ProtocolError` with the MQTT 5
reason code the connection is closed with.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...errors import CodecError

# -- packet types (first byte, flags included where they are fixed) ----------
CONNECT = 0x10
SUBSCRIBE = 0x82
UNSUBSCRIBE = 0xA2
PINGREQ = 0xC0
DISCONNECT = 0xE0
AUTH = 0xF0

PINGREQ_PACKET = b"\xc0\x00"
PINGRESP_PACKET = b"\xd0\x00"

# -- MQTT 5 reason codes used here -------------------------------------------
SUCCESS = 0x00
NO_MATCHING_SUBSCRIBERS = 0x10
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC_ERROR = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_IDENTIFIER_NOT_VALID = 0x85
BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_BUSY = 0x89
BAD_AUTHENTICATION_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
RECEIVE_MAXIMUM_EXCEEDED = 0x93
PACKET_TOO_LARGE = 0x95
MESSAGE_RATE_TOO_HIGH = 0x96
QUOTA_EXCEEDED = 0x97
QOS_NOT_SUPPORTED = 0x9B
SERVER_SHUTTING_DOWN = 0x8B

#: MQTT 3.1.1 CONNACK return codes for the MQTT 5 reason codes a CONNACK
#: may carry (3.1.1 has only these five refusals).
V3_CONNACK = {
    SUCCESS: 0,
    UNSUPPORTED_PROTOCOL_VERSION: 1,
    CLIENT_IDENTIFIER_NOT_VALID: 2,
    SERVER_UNAVAILABLE: 3,
    SERVER_BUSY: 3,
    QUOTA_EXCEEDED: 3,
    BAD_USER_NAME_OR_PASSWORD: 4,
    BAD_AUTHENTICATION_METHOD: 4,
    NOT_AUTHORIZED: 5,
}


class ProtocolError(CodecError):
    """A packet broke the MQTT rules; ``reason`` is the MQTT 5 reason code
    to close the connection with (MALFORMED_PACKET, PROTOCOL_ERROR, ...)."""

    def __init__(self, message: str, reason: int = MALFORMED_PACKET) -> None:
        super().__init__(message)
        self.reason = reason


# -- reading -------------------------------------------------------------------


class _Cursor:
    """A position in one packet's body with checked reads."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def left(self) -> int:
        return self.end - self.pos

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ProtocolError("packet ends too early")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def u16(self) -> int:
        if self.end - self.pos < 2:
            raise ProtocolError("packet ends too early")
        v = (self.buf[self.pos] << 8) | self.buf[self.pos + 1]
        self.pos += 2
        return v

    def u32(self) -> int:
        if self.end - self.pos < 4:
            raise ProtocolError("packet ends too early")
        v = int.from_bytes(self.buf[self.pos:self.pos + 4], "big")
        self.pos += 4
        return v

    def varint(self) -> int:
        value = 0
        shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 21:
                raise ProtocolError("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        n = self.u16()
        if self.end - self.pos < n:
            raise ProtocolError("string longer than the packet")
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(v)

    def string(self) -> str:
        raw = self.binary()
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not valid UTF-8") from None
        if "\x00" in s:
            raise ProtocolError("string contains U+0000")
        return s


# property id -> (name, kind); kinds: b byte, h two-byte int, i four-byte
# int, v varint, s UTF-8 string, d binary data, p string pair
_PROPERTIES: dict[int, tuple[str, str]] = {
    0x01: ("payload_format_indicator", "b"),
    0x02: ("message_expiry_interval", "i"),
    0x03: ("content_type", "s"),
    0x08: ("response_topic", "s"),
    0x09: ("correlation_data", "d"),
    0x0B: ("subscription_identifier", "v"),
    0x11: ("session_expiry_interval", "i"),
    0x12: ("assigned_client_identifier", "s"),
    0x13: ("server_keep_alive", "h"),
    0x15: ("authentication_method", "s"),
    0x16: ("authentication_data", "d"),
    0x17: ("request_problem_information", "b"),
    0x18: ("will_delay_interval", "i"),
    0x19: ("request_response_information", "b"),
    0x1A: ("response_information", "s"),
    0x1C: ("server_reference", "s"),
    0x1F: ("reason_string", "s"),
    0x21: ("receive_maximum", "h"),
    0x22: ("topic_alias_maximum", "h"),
    0x23: ("topic_alias", "h"),
    0x24: ("maximum_qos", "b"),
    0x25: ("retain_available", "b"),
    0x26: ("user_property", "p"),
    0x27: ("maximum_packet_size", "i"),
    0x28: ("wildcard_subscription_available", "b"),
    0x29: ("subscription_identifier_available", "b"),
    0x2A: ("shared_subscription_available", "b"),
}


def read_properties(cur: _Cursor) -> dict[str, Any]:
    """An MQTT 5 property block at the cursor, as ``{name: value}`` (user
    properties as a list of pairs).  A repeated property other than the user
    property, or an unknown id, is a protocol error."""
    length = cur.varint()
    if cur.left() < length:
        raise ProtocolError("properties longer than the packet")
    sub = _Cursor(cur.buf, cur.pos, cur.pos + length)
    cur.pos += length
    props: dict[str, Any] = {}
    while sub.left():
        pid = sub.varint()
        spec = _PROPERTIES.get(pid)
        if spec is None:
            raise ProtocolError(f"unknown property 0x{pid:02x}")
        name, kind = spec
        if kind == "b":
            value: Any = sub.byte()
        elif kind == "h":
            value = sub.u16()
        elif kind == "i":
            value = sub.u32()
        elif kind == "v":
            value = sub.varint()
        elif kind == "s":
            value = sub.string()
        elif kind == "d":
            value = sub.binary()
        else:
            value = (sub.string(), sub.string())
        if kind == "p":
            props.setdefault(name, []).append(value)
        elif name in props:
            raise ProtocolError(f"property {name} appears twice", PROTOCOL_ERROR)
        else:
            props[name] = value
    return props


def parse_publish_properties(raw: bytes) -> dict[str, Any]:
    """The property block body of a PUBLISH (as the compiled reader hands it
    over, without its length) as ``{name: value}``."""
    return read_properties(_Cursor(varint(len(raw)) + raw))


class Connect:
    """A parsed CONNECT packet."""

    __slots__ = (
        "version", "clean_start", "keepalive", "client_id", "username", "password",
        "will", "properties",
    )

    def __init__(self) -> None:
        self.version = 4
        self.clean_start = True
        self.keepalive = 0
        self.client_id = ""
        self.username: str | None = None
        self.password: bytes | None = None
        #: (topic, payload, qos, retain) or None
        self.will: tuple[str, bytes, int, bool] | None = None
        self.properties: dict[str, Any] = {}


class UnsupportedVersion(ProtocolError):
    """CONNECT of a protocol level this server does not speak (answered with
    CONNACK return code 1 / reason 0x84 before closing)."""

    def __init__(self, level: int) -> None:
        super().__init__(f"unsupported MQTT protocol level {level}", UNSUPPORTED_PROTOCOL_VERSION)
        self.level = level


def parse_connect(flags: int, body: bytes) -> Connect:
    """CONNECT: MQTT 3.1.1 (level 4) or 5.  ``flags`` are the low four bits
    of the fixed header (must be 0)."""
    if flags:
        raise ProtocolError("CONNECT with reserved fixed-header flags set")
    cur = _Cursor(body)
    name = cur.binary()
    level = cur.byte()
    if name != b"MQTT":
        if name == b"MQIsdp":  # MQTT 3.1
            raise UnsupportedVersion(level)
        raise ProtocolError(f"protocol name {name!r} is not MQTT")
    if level not in (4, 5):
        raise UnsupportedVersion(level)
    c = Connect()
    c.version = level
    cflags = cur.byte()
    if cflags & 0x01:
        raise ProtocolError("CONNECT reserved flag set")
    c.clean_start = bool(cflags & 0x02)
    will_flag = bool(cflags & 0x04)
    will_qos = (cflags >> 3) & 3
    will_retain = bool(cflags & 0x20)
    has_password = bool(cflags & 0x40)
    has_username = bool(cflags & 0x80)
    if not will_flag and (will_qos or will_retain):
        raise ProtocolError("will QoS/retain set without a will")
    if will_qos == 3:
        raise ProtocolError("will QoS 3")
    if level == 4 and has_password and not has_username:
        raise ProtocolError("password without a user name (MQTT 3.1.1)")
    c.keepalive = cur.u16()
    if level == 5:
        c.properties = read_properties(cur)
    c.client_id = cur.string()
    if will_flag:
        if level == 5:
            read_properties(cur)  # will properties: the will is not published
        topic = cur.string()
        payload = cur.binary()
        c.will = (topic, payload, will_qos, will_retain)
    if has_username:
        c.username = cur.string()
    if has_password:
        c.password = cur.binary()
    if cur.left():
        raise ProtocolError("bytes after the end of CONNECT")
    return c


def _subscription_head(kind: str, flags: int, body: bytes, v5: bool) -> tuple[_Cursor, int]:
    """What SUBSCRIBE and UNSUBSCRIBE start with: fixed-header flags 0b0010,
    a packet id other than 0, MQTT 5 properties (ignored).  Returns the
    cursor at the first topic filter and the packet id."""
    if flags != 0x02:
        raise ProtocolError(f"{kind} with wrong fixed-header flags")
    cur = _Cursor(body)
    mid = cur.u16()
    if mid == 0:
        raise ProtocolError(f"{kind} with packet id 0")
    if v5:
        read_properties(cur)
    return cur, mid


def parse_subscribe(flags: int, body: bytes, v5: bool) -> tuple[int, list[tuple[str, int, int]]]:
    """SUBSCRIBE -> (packet id, [(filter, requested QoS, options byte)])."""
    cur, mid = _subscription_head("SUBSCRIBE", flags, body, v5)
    subs = []
    while cur.left():
        topic = cur.string()
        opts = cur.byte()
        if opts & (0xC0 if v5 else 0xFC):
            raise ProtocolError("SUBSCRIBE with reserved option bits set")
        if (opts & 3) == 3:
            raise ProtocolError("SUBSCRIBE with QoS 3")
        if v5 and ((opts >> 4) & 3) == 3:
            raise ProtocolError("SUBSCRIBE with retain handling 3")
        subs.append((topic, opts & 3, opts))
    if not subs:
        raise ProtocolError("SUBSCRIBE without a topic filter", PROTOCOL_ERROR)
    return mid, subs


def parse_unsubscribe(flags: int, body: bytes, v5: bool) -> tuple[int, list[str]]:
    """UNSUBSCRIBE -> (packet id, [filter])."""
    cur, mid = _subscription_head("UNSUBSCRIBE", flags, body, v5)
    topics = []
    while cur.left():
        topics.append(cur.string())
    if not topics:
        raise ProtocolError("UNSUBSCRIBE without a topic filter", PROTOCOL_ERROR)
    return mid, topics


def parse_disconnect(body: bytes, v5: bool) -> tuple[int, dict[str, Any]]:
    """DISCONNECT -> (reason code, properties); 3.1.1 has an empty body."""
    if not v5:
        if body:
            raise ProtocolError("DISCONNECT with a body (MQTT 3.1.1)")
        return SUCCESS, {}
    if not body:
        return SUCCESS, {}
    cur = _Cursor(body)
    reason = cur.byte()
    props = read_properties(cur) if cur.left() else {}
    return reason, props


def valid_filter(topic: str) -> bool:
    """A topic filter's wildcards are whole levels and ``#`` comes last."""
    if not topic:
        return False
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


# -- writing ---------------------------------------------------------------------


def varint(n: int) -> bytes:
    """MQTT Variable Byte Integer (Remaining Length, property lengths): 7
    bits per byte, high bit = more bytes follow."""
    if n < 128:  # the common case, on the simulator's publish path
        return bytes((n,))
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def mqtt_string(s: str | bytes) -> bytes:
    """A UTF-8 string (``str``) or binary data (``bytes``) field: two-byte
    length, then the bytes."""
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 0xFFFF:
        raise ValueError("MQTT strings are at most 65535 bytes")
    return len(b).to_bytes(2, "big") + b


def packet(first: int, body: bytes) -> bytes:
    """A whole packet: first byte, Remaining Length, body."""
    return bytes((first,)) + varint(len(body)) + body


def encode_properties(props: dict[int, Any]) -> bytes:
    """A property block from ``{property id: value}`` (ints and strings)."""
    out = bytearray()
    for pid, value in props.items():
        kind = _PROPERTIES[pid][1]
        out += varint(pid)
        if kind == "b":
            out.append(value)
        elif kind == "h":
            out += value.to_bytes(2, "big")
        elif kind == "i":
            out += value.to_bytes(4, "big")
        elif kind == "v":
            out += varint(value)
        elif kind in ("s", "d"):
            out += mqtt_string(value)
    return varint(len(out)) + bytes(out)


def connack(v5: bool, reason: int, session_present: bool = False, props: dict[int, Any] | None = None) -> bytes:
    """CONNACK: ``reason`` is an MQTT 5 reason code, mapped to a 3.1.1 return
    code when ``v5`` is false."""
    if v5:
        body = bytes((1 if session_present and reason == SUCCESS else 0, reason))
        body += encode_properties(props or {})
    else:
        body = bytes((1 if session_present and reason == SUCCESS else 0, V3_CONNACK.get(reason, 3)))
    return packet(0x20, body)


def suback(mid: int, codes: list[int], v5: bool) -> bytes:
    """SUBACK: granted QoS or a failure code per filter (3.1.1 has only 0x80)."""
    if not v5:
        codes = [c if c < 0x80 else 0x80 for c in codes]
    body = mid.to_bytes(2, "big") + (b"\x00" if v5 else b"") + bytes(codes)
    return packet(0x90, body)


def unsuback(mid: int, codes: list[int], v5: bool) -> bytes:
    """UNSUBACK: MQTT 5 carries a reason per filter, 3.1.1 only the id."""
    body = mid.to_bytes(2, "big")
    if v5:
        body += b"\x00" + bytes(codes)
    return packet(0xB0, body)


def disconnect(reason: int, reason_string: str | None = None) -> bytes:
    """A server's DISCONNECT (MQTT 5 only: 3.1.1 servers just close)."""
    props = {0x1F: reason_string} if reason_string else {}
    return packet(0xE0, bytes((reason,)) + encode_properties(props))



def encode_connect(
    client_id: str,
    *,
    version: int = 4,
    keepalive: int = 60,
    clean: bool = True,
    username: str | None = None,
    password: str | bytes | None = None,
    will: tuple[str, bytes, int, bool] | None = None,
    props: dict[int, Any] | None = None,
) -> bytes:
    """A client's CONNECT.  Every field given is written, even a password
    without a user name (3.1.1 forbids it; the tests send it on purpose).
    ``will`` is (topic, payload, qos, retain), without will properties."""
    flags = 0x02 if clean else 0
    payload = mqtt_string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        if version == 5:
            payload += b"\x00"
        payload += mqtt_string(topic) + mqtt_string(message)
    if username is not None:
        flags |= 0x80
        payload += mqtt_string(username)
    if password is not None:
        flags |= 0x40
        payload += mqtt_string(password)
    body = mqtt_string("MQTT") + bytes((version, flags)) + keepalive.to_bytes(2, "big")
    if version == 5:
        body += encode_properties(props or {})
    return packet(CONNECT, body + payload)


def encode_subscribe(mid: int, filters: Iterable[tuple[str, int]], version: int = 4) -> bytes:
    """A client's SUBSCRIBE: (filter, options byte) pairs; the options byte
    is the requested QoS unless MQTT 5 flags are wanted."""
    body = bytearray(mid.to_bytes(2, "big"))
    if version == 5:
        body.append(0)  # no properties
    for topic, options in filters:
        body += mqtt_string(topic) + bytes((options,))
    return packet(SUBSCRIBE, bytes(body))
