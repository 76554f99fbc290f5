"""Payloads: the msgspec types, the shared encoder and decoders, the error
codes and the error-reply shape."""

from __future__ import annotations

from enum import Enum
from itertools import accumulate
from typing import Annotated, Any, Literal

import msgspec

from .constants import MAX_ID_LENGTH

__all__ = [
    "RpcRequest", "Presence", "NodePresence", "ErrorBody", "ErrorReply", "ErrorCode", "ERROR_MEANINGS",
    "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "error_reply", "error_value", "as_error",
    "JSON_ENCODER", "ANY_DECODER", "REQUEST_DECODER", "PRESENCE_DECODER", "NODE_PRESENCE_DECODER",
    "OBJECT_DECODER", "BAD_JSON", "MAX_JSON_DEPTH", "JsonTooDeep", "check_json_depth",
]

Method = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
#: A node's wire level, ``{node_id}.{boot}`` (an id: at most 128 characters;
#: presence keeps it per device, so a longer one is refused, not stored).
NodeLevel = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]


class RpcRequest(msgspec.Struct, gc=False):
    """A call: the payload of REQUEST (server -> device) and CALL (device ->
    server).  ``params`` defaults to an empty object, as in ThingsBoard."""

    #: The procedure to run: 1-128 characters.
    method: Method
    #: Its arguments: any JSON value (usually an object).
    params: Any = {}
    #: Persistent calls only: the RPC's id, the same on every retry, so a
    #: device can answer a duplicate from memory.  Absent (not null) otherwise.
    id: str | msgspec.UnsetType = msgspec.UNSET


class Presence(msgspec.Struct, gc=False, omit_defaults=True):
    """A device's online state, published retained on its presence topic and
    registered as its Last Will (with ``status="offline"``)."""

    status: Literal["online", "offline"]
    #: When the state changed, epoch milliseconds.
    ts: int | None = None
    #: Optional facts an agent may report with its presence.
    ip: str | None = None
    os: str | None = None
    version: str | None = None
    #: When the agent process started, epoch milliseconds.
    started: int | None = None
    #: Set by a server node whose device endpoint the device is connected
    #: to directly: that node's wire level (``{node_id}.{boot}``), which
    #: takes the device's requests from the broker for it.
    via: NodeLevel | None = None


class NodePresence(msgspec.Struct, gc=False, omit_defaults=True):
    """The Last Will of a server node that shares its endpoint's devices,
    retained on its node presence topic: that run has ended."""

    status: Literal["offline"]
    #: The run: the node's wire level (``{node_id}.{boot}``), as in a
    #: device's :attr:`Presence.via`.
    node: NodeLevel


class ErrorBody(msgspec.Struct, gc=False):
    """What went wrong, machine-readable (``code``) and human-readable."""

    code: str
    message: str


class ErrorReply(msgspec.Struct, gc=False):
    """``{"error": {"code": ..., "message": ...}}``: a failed call's answer."""

    error: ErrorBody


class ErrorCode(str, Enum):
    """The codes fleetrpc itself puts in an error reply (applications may
    use their own); :data:`ERROR_MEANINGS` says what each means."""

    METHOD_NOT_FOUND = "METHOD_NOT_FOUND"
    INVALID_PARAMS = "INVALID_PARAMS"
    BAD_REQUEST = "BAD_REQUEST"
    HANDLER_ERROR = "HANDLER_ERROR"
    APPLICATION_ERROR = "APPLICATION_ERROR"
    INTERNAL_ERROR = "INTERNAL_ERROR"

    def __str__(self) -> str:
        return self.value


#: What each :class:`ErrorCode` means (docs/protocol.md's table).
ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.METHOD_NOT_FOUND: "No handler is registered for the call's method.",
    ErrorCode.INVALID_PARAMS: "The handler refused the call's params.",
    ErrorCode.BAD_REQUEST: (
        "The CALL itself could not be read: empty, not JSON, not an object, no "
        "``method``, or over the payload limit; ``message`` says which."
    ),
    ErrorCode.HANDLER_ERROR: "The handler raised an exception; ``message`` names it.",
    ErrorCode.APPLICATION_ERROR: "The handler reported a failure of its own (``RemoteError``).",
    ErrorCode.INTERNAL_ERROR: "The answer could not be built (a result that is not JSON, or too large).",
}


# Short names, kept for the code that used them.
METHOD_NOT_FOUND = ErrorCode.METHOD_NOT_FOUND.value
INVALID_PARAMS = ErrorCode.INVALID_PARAMS.value
INTERNAL_ERROR = ErrorCode.INTERNAL_ERROR.value

# Shared encoder and decoders, created once: msgspec's fast path is a reused
# Decoder per type.  They hold no per-call state, so sharing them is safe.
#: Encodes any supported value (Structs included) to JSON bytes.
JSON_ENCODER = msgspec.json.Encoder()
#: What decoding raises for bytes that are not the JSON expected: msgspec
#: raises RecursionError, not DecodeError, for JSON nested deeper than it
#: recurses (the interpreter's limit: ~1,000 levels on Python 3.11, more
#: on later ones; see MAX_JSON_DEPTH).  Whatever arrives from the network
#: or over HTTP is decoded under ``except BAD_JSON``.
BAD_JSON = (msgspec.DecodeError, RecursionError)

#: The deepest JSON taken from outside where its depth would otherwise
#: depend on the interpreter: a REST call's or a job's body and a device's
#: own call (``check_json_depth``).  msgspec stops where the interpreter's
#: recursion limit does: ~1,000 levels on Python 3.11, ~10,000 on 3.13,
#: where 5,000-deep params went on to the device.  500 is under what
#: msgspec decodes on 3.11 from inside a request handler's stack, so each
#: Python gives the same answer; ThingsBoard's JSON parser (Jackson) stops
#: at 1,000.
MAX_JSON_DEPTH = 500


class JsonTooDeep(RecursionError):
    """JSON nested deeper than :data:`MAX_JSON_DEPTH`.  A RecursionError,
    like msgspec's own for deeper JSON, so that every ``except BAD_JSON``
    and every message for that ("nested too deep") covers both."""


# check_json_depth's tables: every byte but the four brackets (deleted),
# the brackets as parentheses (one kind of pair), a parenthesis's step in
# depth by byte value
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_PARENS = bytes.maketrans(b"[]{}", b"()()")
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("(")] = 1
_DEPTH_STEP[ord(")")] = -1


def check_json_depth(data: bytes | bytearray) -> None:
    """Raise :class:`JsonTooDeep` when the JSON text ``data`` nests deeper
    than :data:`MAX_JSON_DEPTH`.  Every step is a C loop over the bytes:
    in the usual case (fewer opening brackets than that in all) two
    counts; else the brackets outside strings are kept, as parentheses,
    and innermost pairs dropped a level per pass (a few passes for any
    real payload), the running depth summed for the rest.  Text that is
    not JSON may be misjudged: its decoding fails anyway."""
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return
    # Outside strings: with escaped backslashes and then escaped quotes
    # gone, every other piece between quotes is a string's inside.
    text = bytes(data).replace(b"\\\\", b"").replace(b'\\"', b"")
    parens = b"".join(text.split(b'"')[::2]).translate(_AS_PARENS, _NOT_BRACKETS)
    peeled = 0
    while parens and peeled < 8:
        inner = parens.replace(b"()", b"")
        if len(inner) == len(parens):
            break  # unbalanced, not JSON: how deep it opens still counts
        parens = inner
        peeled += 1
    # Deep, or a shape that peels slowly: the running depth's maximum, plus
    # the levels peeled (each pass took one off every path).
    if max(accumulate(map(_DEPTH_STEP.__getitem__, parens)), default=0) + peeled > MAX_JSON_DEPTH:
        raise JsonTooDeep(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


#: Any JSON value (REPLY, RETURN).
ANY_DECODER = msgspec.json.Decoder()
#: :class:`RpcRequest` (REQUEST, CALL).
REQUEST_DECODER = msgspec.json.Decoder(RpcRequest)
#: :class:`Presence` (PRESENCE).
PRESENCE_DECODER = msgspec.json.Decoder(Presence)
#: :class:`NodePresence` (a node's presence).
NODE_PRESENCE_DECODER = msgspec.json.Decoder(NodePresence)
#: A JSON object with string keys (HEARTBEAT, ELVES).
OBJECT_DECODER = msgspec.json.Decoder(dict[str, Any])

_encode = JSON_ENCODER.encode


def error_reply(code: str, message: str) -> bytes:
    """The JSON answer of a failed call:
    ``{"error": {"code": code, "message": message}}``."""
    return _encode(ErrorReply(ErrorBody(str(code), message)))


def error_value(code: str, message: str) -> dict:
    """The same answer as a value, for code that encodes it later."""
    return {"error": {"code": str(code), "message": message}}


def as_error(body: Any) -> ErrorBody | None:
    """The :class:`ErrorBody` if ``body`` (a decoded REPLY or RETURN) is an
    error answer -- exactly ``{"error": {"code": str, "message": str}}`` --
    else ``None``."""
    if type(body) is ErrorReply:
        return body.error
    if type(body) is not dict or len(body) != 1:
        return None
    err = body.get("error")
    if type(err) is not dict:
        return None
    code = err.get("code")
    message = err.get("message")
    if type(code) is not str or type(message) is not str:
        return None
    return ErrorBody(code, message)
