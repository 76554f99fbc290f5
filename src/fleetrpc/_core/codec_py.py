"""Envelope codec, pure-Python twin of ``codec.pyx``.

``Codec.decode(topic, payload)`` classifies an MQTT message by its topic
(see :mod:`fleetrpc.wire` for the layout), takes the device id, node id
and request id out of the topic and decodes the JSON payload with a msgspec
decoder made once per type.  Anything malformed is a :class:`CodecError`
whose message says what was wrong; no other exception escapes ``decode``.

Both variants check in the same order and build the same messages, so they
agree on every input (``tests/test_codec_hypothesis.py``):

1. the topic is a ``str`` that encodes to UTF-8;
2. it starts with ``{prefix}/``;
3. its levels, left to right: each level is checked when it is reached
   (present, non-empty, then its content), and a topic with levels left over
   after the last one its kind expects has too many;
4. the payload is bytes-like, then at most ``max_payload`` bytes;
5. the payload is decoded for the kind.
"""

from __future__ import annotations

import sys
from typing import Any

from .. import wire as _protocol
from ..errors import EMPTY_REPLY, CodecError, ValidationError
from .constants import DEFAULT_MAX_PAYLOAD, DEFAULT_PREFIX, MAX_ID_LENGTH, Kind
from .reasons import decode_reason, encode_reason

__all__ = ["Codec", "Message"]

_REQUEST = Kind.REQUEST
_REPLY = Kind.REPLY
_ACK = Kind.ACK
_CALL = Kind.CALL
_RETURN = Kind.RETURN
_PRESENCE = Kind.PRESENCE
_HEARTBEAT = Kind.HEARTBEAT
_ELVES = Kind.ELVES

# Level after {device} -> kind.
_WORDS = {
    "req": _REQUEST,
    "res": _REPLY,
    "ack": _ACK,
    "call": _CALL,
    "ret": _RETURN,
    "presence": _PRESENCE,
    "hb": _HEARTBEAT,
}
# Topic shapes for "too few / too many levels" messages ({p} is filled in).
_SHAPES = {
    None: "{p}/d/{{device}}/{{kind}}/...",
    _REQUEST: "{p}/d/{{device}}/req/{{node}}/{{rid}}",
    _REPLY: "{p}/d/{{device}}/res/{{node}}/{{rid}}",
    _ACK: "{p}/d/{{device}}/ack/{{node}}/{{rid}}",
    _CALL: "{p}/d/{{device}}/call/{{cid}}",
    _RETURN: "{p}/d/{{device}}/ret/{{cid}}",
    _PRESENCE: "{p}/d/{{device}}/presence",
    _HEARTBEAT: "{p}/d/{{device}}/hb",
    _ELVES: "{p}/elves/{{app}}/...",
}
_ID_MAX = (1 << 63) - 1
_ELVES_FIELDS = ("mqt", "mqs", "mqf")


# str.__repr__, not repr(): a str subclass's own __repr__ must not change the text.
def _show(s: str) -> str:
    """A str for an error message: repr, long ones cut."""
    return str.__repr__(s if len(s) <= 80 else s[:77] + "...")


def _clip(s: str) -> str:
    """A topic level for an error message: repr, long ones cut."""
    return str.__repr__(s if len(s) <= 40 else s[:37] + "...")


class Message:
    """One decoded inbound MQTT message.

    ``kind`` (:class:`Kind`); ``device`` (the device id, or the Elves
    ``{app}``); ``node`` (the node id of REQUEST/REPLY/ACK, the levels after
    ``{app}`` of ELVES, else ``None``); ``rid`` (request or call id, ``0``
    when the topic has none); ``body`` (the decoded payload); ``error``
    (why a REPLY's ``body`` is ``None``: it was not JSON; else ``None``).
    """

    __slots__ = ("kind", "device", "node", "rid", "body", "error")

    def __init__(
        self,
        kind: Kind,
        device: str,
        node: str | None = None,
        rid: int = 0,
        body: Any = None,
        error: str | None = None,
    ) -> None:
        self.kind = kind
        self.device = device
        self.node = node
        self.rid = rid
        self.body = body
        self.error = error

    def __repr__(self) -> str:
        return (
            f"<Message {self.kind.name} device={self.device!r} node={self.node!r} "
            f"rid={self.rid} body={self.body!r} error={self.error!r}>"
        )


def _check_config(prefix: object, max_payload: object) -> None:
    _protocol.validate_prefix(prefix)
    if type(max_payload) is not int or not 0 <= max_payload <= sys.maxsize:
        raise ValidationError(f"max_payload must be an int in [0, {sys.maxsize}], not {max_payload!r}")


class Codec:
    """Classify and decode inbound MQTT messages; encode outbound ones.

    ``prefix`` is the first level(s) of every topic; payloads larger than
    ``max_payload`` bytes are refused.
    """

    __slots__ = (
        "prefix", "max_payload", "_pfx", "_plen", "_shapes",
        "_dec_any", "_dec_request", "_dec_presence", "_dec_object",
        "_enc", "_RpcRequest",
    )

    def __init__(self, prefix: str = DEFAULT_PREFIX, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        _check_config(prefix, max_payload)
        prefix = str.__str__(prefix)  # a str subclass becomes a plain str
        self.prefix = prefix
        self.max_payload = max_payload
        self._pfx = prefix + "/"
        self._plen = len(self._pfx)
        self._shapes = {k: v.format(p=prefix) for k, v in _SHAPES.items()}
        self._dec_any = _protocol.ANY_DECODER.decode
        self._dec_request = _protocol.REQUEST_DECODER.decode
        self._dec_presence = _protocol.PRESENCE_DECODER.decode
        self._dec_object = _protocol.OBJECT_DECODER.decode
        self._enc = _protocol.JSON_ENCODER.encode
        self._RpcRequest = _protocol.RpcRequest

    def __repr__(self) -> str:
        return f"Codec(prefix={self.prefix!r}, max_payload={self.max_payload})"

    # -- errors (identical text in codec.pyx) --------------------------------

    def _few(self, topic: str, kind: Kind | None) -> CodecError:
        return CodecError(f"too few levels in topic {_show(topic)} (expected {self._shapes[kind]})")

    def _many(self, topic: str, kind: Kind) -> CodecError:
        return CodecError(f"too many levels in topic {_show(topic)} (expected {self._shapes[kind]})")

    @staticmethod
    def _check_id(level: str, what: str, topic: str) -> None:
        """A device / node / app id level: non-empty, no '+', '#' or NUL,
        at most 128 UTF-8 bytes."""
        if not level:
            raise CodecError(f"empty level in topic {_show(topic)}")
        if "+" in level or "#" in level or "\x00" in level:
            raise CodecError(f"{what} id in topic {_show(topic)} contains '+', '#' or NUL")
        if len(level) > MAX_ID_LENGTH // 4 and len(level.encode("utf-8")) > MAX_ID_LENGTH:
            raise CodecError(f"{what} id in topic {_show(topic)} is longer than {MAX_ID_LENGTH} bytes")

    @staticmethod
    def _parse_id(level: str, what: str, topic: str) -> int:
        if not level:
            raise CodecError(f"empty level in topic {_show(topic)}")
        if not (level.isascii() and level.isdigit()):
            raise CodecError(f"{what} {_clip(level)} in topic {_show(topic)} is not a decimal integer")
        digits = level.lstrip("0")
        if len(digits) > 19 or (digits and int(digits) > _ID_MAX):
            raise CodecError(
                f"{what} {_clip(level)} in topic {_show(topic)} is out of range (must be below 2**63)"
            )
        return int(digits) if digits else 0

    # -- decode --------------------------------------------------------------

    def decode(self, topic: str, payload: bytes) -> Message:
        """Classify ``(topic, payload)`` and decode it into a :class:`Message`;
        :class:`CodecError` on anything malformed."""
        if not isinstance(topic, str):
            raise CodecError(f"topic must be str, not {type(topic).__name__}")
        if not topic.isascii():
            try:
                topic.encode("utf-8")
            except UnicodeEncodeError:
                raise CodecError(f"topic {_show(topic)} is not valid UTF-8") from None
        if not topic.startswith(self._pfx):
            raise CodecError(f"topic {_show(topic)} does not start with {self._pfx!r}")
        levels = topic[self._plen:].split("/")
        n = len(levels)
        ns = levels[0]
        node = None
        rid = 0
        if ns == "d":
            if n < 2:
                raise self._few(topic, None)
            device = levels[1]
            self._check_id(device, "device", topic)
            if n < 3:
                raise self._few(topic, None)
            word = levels[2]
            kind = _WORDS.get(word)
            if kind is None:
                if not word:
                    raise CodecError(f"empty level in topic {_show(topic)}")
                raise CodecError(f"unknown message kind {_clip(word)} in topic {_show(topic)}")
            if kind is _REPLY or kind is _ACK or kind is _REQUEST:
                if n < 4:
                    raise self._few(topic, kind)
                node = levels[3]
                self._check_id(node, "node", topic)
                if n < 5:
                    raise self._few(topic, kind)
                rid = self._parse_id(levels[4], "request id", topic)
                if n > 5:
                    raise self._many(topic, kind)
            elif kind is _CALL or kind is _RETURN:
                if n < 4:
                    raise self._few(topic, kind)
                rid = self._parse_id(levels[3], "call id", topic)
                if n > 4:
                    raise self._many(topic, kind)
            elif n > 3:
                raise self._many(topic, kind)
        elif ns == "elves":
            kind = _ELVES
            if n < 2:
                raise self._few(topic, kind)
            device = levels[1]
            self._check_id(device, "app", topic)
            if n > 2:
                for level in levels[2:]:
                    if not level:
                        raise CodecError(f"empty level in topic {_show(topic)}")
                    if "+" in level or "#" in level or "\x00" in level:
                        raise CodecError(f"a level of topic {_show(topic)} contains '+', '#' or NUL")
                node = "/".join(levels[2:])
        elif not ns:
            raise CodecError(f"empty level in topic {_show(topic)}")
        else:
            raise CodecError(
                f"unknown namespace {_clip(ns)} in topic {_show(topic)} (expected 'd' or 'elves')"
            )

        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        size = len(payload)
        if size > self.max_payload:
            raise CodecError(
                f"{kind.name} payload of {size} bytes exceeds the limit of {self.max_payload} bytes"
            )

        body = None
        error = None
        if kind is _REPLY:
            if size:
                try:
                    body = self._dec_any(payload)
                except Exception as exc:  # noqa: BLE001  msgspec: DecodeError, ValidationError, RecursionError
                    error = f"reply is not valid JSON: {decode_reason(Any, payload, exc)}"
            else:
                error = EMPTY_REPLY
        elif kind is not _ACK:
            if not size:
                raise CodecError(f"empty {kind.name} payload")
            if kind is _REQUEST or kind is _CALL:
                decode = self._dec_request
            elif kind is _RETURN:
                decode = self._dec_any
            elif kind is _PRESENCE:
                decode = self._dec_presence
            else:
                decode = self._dec_object
            try:
                if kind is _CALL:  # a device's own call: one depth limit on every Python
                    _protocol.check_json_depth(payload)
                body = decode(payload)
            except Exception as exc:  # noqa: BLE001  nothing but CodecError may escape decode
                reason = decode_reason(decode.__self__.type, payload, exc)
                raise CodecError(f"invalid {kind.name} payload: {reason}") from None
            if kind is _ELVES:
                _check_elves(body)
        return Message(kind, device, node, rid, body, error)

    # -- encode --------------------------------------------------------------

    def encode_request(self, method: str, params: Any) -> bytes:
        """The JSON payload of a REQUEST or CALL: ``{"method": ..., "params": ...}``."""
        if not isinstance(method, str) or not 0 < len(method) <= MAX_ID_LENGTH:
            raise CodecError(f"method must be a non-empty str of at most {MAX_ID_LENGTH} characters")
        if type(method) is not str:
            method = str.__str__(method)  # msgspec encodes plain str only
        try:
            return self._enc(self._RpcRequest(method, params))
        except Exception as exc:  # noqa: BLE001  msgspec: TypeError, RecursionError, ...
            reason = encode_reason(self._RpcRequest(method, params), exc)
            raise CodecError(f"cannot encode the params of {_clip(method)}: {reason}") from None

    def encode(self, obj: Any) -> bytes:
        """``obj`` as JSON bytes (msgspec: Structs, dicts, lists, ...)."""
        try:
            return self._enc(obj)
        except Exception as exc:  # noqa: BLE001  as encode_request
            raise CodecError(f"cannot encode {type(obj).__name__}: {encode_reason(obj, exc)}") from None


def _as_bytes(payload: object) -> bytes:
    """Any bytes-like payload (bytearray, memoryview, ...) as bytes."""
    if isinstance(payload, bytes):
        return payload
    try:
        return memoryview(payload).tobytes()  # type: ignore[arg-type]
    except (TypeError, ValueError, BufferError):
        raise CodecError(f"payload must be bytes-like, not {type(payload).__name__}") from None


def _check_elves(body: dict) -> None:
    for field in _ELVES_FIELDS:
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
