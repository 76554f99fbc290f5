"""The envelope codec: both variants (``core`` fixture), every kind, every
way a topic or payload can be wrong.  Error texts are pinned exactly, so the
two variants agree by construction; test_codec_hypothesis.py checks the
agreement on random input."""

from __future__ import annotations

import array

import msgspec
import pytest

from fleetrpc import wire as protocol
from fleetrpc._core.constants import DEFAULT_MAX_PAYLOAD, Kind
from fleetrpc.errors import CodecError, ValidationError
from fleetrpc.wire import Presence, RpcRequest

P = "fleetrpc"


@pytest.fixture
def codec(core):
    if not hasattr(core, "Codec"):
        pytest.skip(f"no {core.name} codec")
    return core.Codec()


def fields(m):
    return (m.kind, m.device, m.node, m.rid, m.body, m.error)


def show(s: str) -> str:
    """How an error message shows a topic: repr, cut after 77 characters."""
    return repr(s if len(s) <= 80 else s[:77] + "...")


def err(codec, topic, payload=b"") -> str:
    with pytest.raises(CodecError) as info:
        codec.decode(topic, payload)
    assert type(info.value) is CodecError
    return str(info.value)


# -- valid messages -------------------------------------------------------------


@pytest.mark.parametrize(
    "topic, payload, expected",
    [
        (f"{P}/d/dev-00042/res/n1/123456", b'{"ok":true,"v":42}',
         (Kind.REPLY, "dev-00042", "n1", 123456, {"ok": True, "v": 42}, None)),
        (f"{P}/d/dev/res/n1/1", b"[1, 2.5, null]", (Kind.REPLY, "dev", "n1", 1, [1, 2.5, None], None)),
        (f"{P}/d/dev/res/n1/1", b'"text"', (Kind.REPLY, "dev", "n1", 1, "text", None)),
        (f"{P}/d/dev/res/n1/1", b"null", (Kind.REPLY, "dev", "n1", 1, None, None)),
        (f"{P}/d/dev/res/n1/1", b" 17 ", (Kind.REPLY, "dev", "n1", 1, 17, None)),
        (f"{P}/d/dev/ack/n1/9", b"", (Kind.ACK, "dev", "n1", 9, None, None)),
        (f"{P}/d/dev/ack/n1/9", b"anything at all", (Kind.ACK, "dev", "n1", 9, None, None)),
        (f"{P}/d/dev/req/node-2/77", b'{"method":"reboot","params":{"delay":5}}',
         (Kind.REQUEST, "dev", "node-2", 77, RpcRequest("reboot", {"delay": 5}), None)),
        (f"{P}/d/dev/call/3", b'{"method":"getTime"}',
         (Kind.CALL, "dev", None, 3, RpcRequest("getTime", {}), None)),
        (f"{P}/d/dev/call/0", b'{"method":"m","params":null}',
         (Kind.CALL, "dev", None, 0, RpcRequest("m", None), None)),
        (f"{P}/d/dev/call/5", b'{"method":"m","params":[1],"extra":true}',
         (Kind.CALL, "dev", None, 5, RpcRequest("m", [1]), None)),
        (f"{P}/d/dev/ret/5", b'{"error":{"code":"X","message":"y"}}',
         (Kind.RETURN, "dev", None, 5, {"error": {"code": "X", "message": "y"}}, None)),
        (f"{P}/d/dev/ret/5", b"42", (Kind.RETURN, "dev", None, 5, 42, None)),
        (f"{P}/d/dev/presence", b'{"status":"online","ts":1700000000000}',
         (Kind.PRESENCE, "dev", None, 0, Presence("online", 1700000000000), None)),
        (f"{P}/d/dev/presence", b'{"status":"offline"}',
         (Kind.PRESENCE, "dev", None, 0, Presence("offline"), None)),
        (f"{P}/d/agent-1/presence", b'{"status":"online","ts":1,"ip":"10.0.0.7","os":"linux","new":1}',
         (Kind.PRESENCE, "agent-1", None, 0, Presence("online", 1, ip="10.0.0.7", os="linux"), None)),
        (f"{P}/d/dev/hb", b'{"cpu":0.5,"tasks":[1,2]}',
         (Kind.HEARTBEAT, "dev", None, 0, {"cpu": 0.5, "tasks": [1, 2]}, None)),
        (f"{P}/d/dev/hb", b"{}", (Kind.HEARTBEAT, "dev", None, 0, {}, None)),
        (f"{P}/elves/ops-app/call", b'{"mqt":"call","mqs":"heartbeat","mqf":"getstatbyip","agentip":"1.2.3.4"}',
         (Kind.ELVES, "ops-app", "call",
          0, {"mqt": "call", "mqs": "heartbeat", "mqf": "getstatbyip", "agentip": "1.2.3.4"}, None)),
        (f"{P}/elves/ops-app/back/17", b'{"mqt":"back","mqs":"sheduler","mqf":"sendsync","info":{}}',
         (Kind.ELVES, "ops-app", "back/17", 0, {"mqt": "back", "mqs": "sheduler", "mqf": "sendsync", "info": {}}, None)),
        (f"{P}/elves/app", b'{"mqt":"call","mqs":"s","mqf":"f"}',
         (Kind.ELVES, "app", None, 0, {"mqt": "call", "mqs": "s", "mqf": "f"}, None)),
    ],
)
def test_decode_valid(codec, core, topic, payload, expected):
    m = codec.decode(topic, payload)
    assert type(m) is core.Message
    assert fields(m) == expected
    assert m.kind is expected[0]
    assert type(m.rid) is int and type(m.device) is str


def test_kind_is_the_enum_member(codec):
    m = codec.decode(f"{P}/d/x/hb", b"{}")
    assert m.kind is Kind.HEARTBEAT and isinstance(m.kind, Kind) and m.kind == 5


def test_call_params_default_is_a_fresh_dict(codec):
    a = codec.decode(f"{P}/d/x/call/1", b'{"method":"m"}').body
    b = codec.decode(f"{P}/d/x/call/2", b'{"method":"m"}').body
    assert a.params == {} and b.params == {}
    a.params["k"] = 1
    assert b.params == {}


@pytest.mark.parametrize(
    "device",
    ["d", "é", "设备-01", "🙂" * 32, "x" * 128, "a" * 126 + "é", "dev with spaces", "$dev", "D.E_V:1"],
)
def test_device_ids(codec, device):
    m = codec.decode(f"{P}/d/{device}/res/{device}/5", b"1")
    assert (m.device, m.node, m.rid, m.body) == (device, device, 5, 1)


def test_node_ids_alternate(codec):
    # The compiled codec reuses the last node str: it must never return a stale one.
    for i in range(5):
        for node in ("n1", "n2", "n1x", "n", "é", "n1"):
            m = codec.decode(f"{P}/d/dev{i}/res/{node}/{i}", b"0")
            assert (m.device, m.node, m.rid) == (f"dev{i}", node, i)


@pytest.mark.parametrize(
    "text, value",
    [("0", 0), ("00", 0), ("007", 7), ("9223372036854775807", 2**63 - 1),
     ("0000000000000000000009223372036854775807", 2**63 - 1), ("9007199254740993", 2**53 + 1)],
)
def test_ids_in_range(codec, text, value):
    assert codec.decode(f"{P}/d/x/ack/n/{text}", b"").rid == value
    assert codec.decode(f"{P}/d/x/call/{text}", b'{"method":"m"}').rid == value


def test_custom_prefix(core):
    if not hasattr(core, "Codec"):
        pytest.skip(f"no {core.name} codec")
    codec = core.Codec("acme/prod/rpc", 100)
    assert (codec.prefix, codec.max_payload) == ("acme/prod/rpc", 100)
    m = codec.decode("acme/prod/rpc/d/x/res/n/4", b"true")
    assert fields(m) == (Kind.REPLY, "x", "n", 4, True, None)
    assert err(codec, "fleetrpc/d/x/res/n/4") == (
        "topic 'fleetrpc/d/x/res/n/4' does not start with 'acme/prod/rpc/'"
    )
    assert err(codec, "acme/prod/d/x/res/n/4") == (
        "topic 'acme/prod/d/x/res/n/4' does not start with 'acme/prod/rpc/'"
    )
    assert err(codec, "acme/prod/rpc/d/x/res/n") == (
        "too few levels in topic 'acme/prod/rpc/d/x/res/n' "
        "(expected acme/prod/rpc/d/{device}/res/{node}/{rid})"
    )
    uni = core.Codec("флот")
    assert uni.decode("флот/d/устройство/hb", b"{}").device == "устройство"
    assert err(uni, "фло/d/x/hb") == "topic 'фло/d/x/hb' does not start with 'флот/'"


def test_repr(core, codec):
    m = codec.decode(f"{P}/d/x/res/n/4", b'{"a":1}')
    assert repr(m) == "<Message REPLY device='x' node='n' rid=4 body={'a': 1} error=None>"
    assert repr(codec) == "Codec(prefix='fleetrpc', max_payload=262144)"


def test_message_constructor(core):
    m = core.Message(Kind.ACK, "d", "n", 3)
    assert fields(m) == (Kind.ACK, "d", "n", 3, None, None)
    m = core.Message(Kind.REPLY, "d", "n", 3, None, "bad")
    assert m.error == "bad"


# -- malformed topics -----------------------------------------------------------


def few(topic: str, shape: str) -> str:
    return f"too few levels in topic {topic!r} (expected {shape})"


def many(topic: str, shape: str) -> str:
    return f"too many levels in topic {topic!r} (expected {shape})"


REPLY_SHAPE = "fleetrpc/d/{device}/res/{node}/{rid}"
ANY_SHAPE = "fleetrpc/d/{device}/{kind}/..."


@pytest.mark.parametrize(
    "topic, message",
    [
        # prefix
        ("", "topic '' does not start with 'fleetrpc/'"),
        ("fleetrpc", "topic 'fleetrpc' does not start with 'fleetrpc/'"),
        ("fleetrp/d/x/hb", "topic 'fleetrp/d/x/hb' does not start with 'fleetrpc/'"),
        ("fleetrpcx/d/x/hb", "topic 'fleetrpcx/d/x/hb' does not start with 'fleetrpc/'"),
        ("Fleetrpc/d/x/hb", "topic 'Fleetrpc/d/x/hb' does not start with 'fleetrpc/'"),
        ("/fleetrpc/d/x/hb", "topic '/fleetrpc/d/x/hb' does not start with 'fleetrpc/'"),
        # namespace
        ("fleetrpc/", "empty level in topic 'fleetrpc/'"),
        ("fleetrpc//x/hb", "empty level in topic 'fleetrpc//x/hb'"),
        ("fleetrpc/dev/x/hb", "unknown namespace 'dev' in topic 'fleetrpc/dev/x/hb' (expected 'd' or 'elves')"),
        ("fleetrpc/D/x/hb", "unknown namespace 'D' in topic 'fleetrpc/D/x/hb' (expected 'd' or 'elves')"),
        ("fleetrpc/elf/x", "unknown namespace 'elf' in topic 'fleetrpc/elf/x' (expected 'd' or 'elves')"),
        # device level
        ("fleetrpc/d", few("fleetrpc/d", ANY_SHAPE)),
        ("fleetrpc/d/", "empty level in topic 'fleetrpc/d/'"),
        ("fleetrpc/d//res/n/1", "empty level in topic 'fleetrpc/d//res/n/1'"),
        ("fleetrpc/d/x", few("fleetrpc/d/x", ANY_SHAPE)),
        ("fleetrpc/d/a+b/hb", "device id in topic 'fleetrpc/d/a+b/hb' contains '+', '#' or NUL"),
        ("fleetrpc/d/#/hb", "device id in topic 'fleetrpc/d/#/hb' contains '+', '#' or NUL"),
        ("fleetrpc/d/a\x00b/hb", "device id in topic 'fleetrpc/d/a\\x00b/hb' contains '+', '#' or NUL"),
        # kind level
        ("fleetrpc/d/x/", "empty level in topic 'fleetrpc/d/x/'"),
        ("fleetrpc/d/x//n/1", "empty level in topic 'fleetrpc/d/x//n/1'"),
        ("fleetrpc/d/x/rep/n/1", "unknown message kind 'rep' in topic 'fleetrpc/d/x/rep/n/1'"),
        ("fleetrpc/d/x/RES/n/1", "unknown message kind 'RES' in topic 'fleetrpc/d/x/RES/n/1'"),
        ("fleetrpc/d/x/resp/n/1", "unknown message kind 'resp' in topic 'fleetrpc/d/x/resp/n/1'"),
        ("fleetrpc/d/x/heartbeat", "unknown message kind 'heartbeat' in topic 'fleetrpc/d/x/heartbeat'"),
        ("fleetrpc/d/x/res/n/1/", many("fleetrpc/d/x/res/n/1/", REPLY_SHAPE)),
        # REPLY / ACK / REQUEST levels
        ("fleetrpc/d/x/res", few("fleetrpc/d/x/res", REPLY_SHAPE)),
        ("fleetrpc/d/x/res/", "empty level in topic 'fleetrpc/d/x/res/'"),
        ("fleetrpc/d/x/res/n", few("fleetrpc/d/x/res/n", REPLY_SHAPE)),
        ("fleetrpc/d/x/res//1", "empty level in topic 'fleetrpc/d/x/res//1'"),
        ("fleetrpc/d/x/res/n+/1", "node id in topic 'fleetrpc/d/x/res/n+/1' contains '+', '#' or NUL"),
        ("fleetrpc/d/x/res/n/", "empty level in topic 'fleetrpc/d/x/res/n/'"),
        ("fleetrpc/d/x/res/n/1/2", many("fleetrpc/d/x/res/n/1/2", REPLY_SHAPE)),
        ("fleetrpc/d/x/ack/n", few("fleetrpc/d/x/ack/n", "fleetrpc/d/{device}/ack/{node}/{rid}")),
        ("fleetrpc/d/x/req/n/1/x", many("fleetrpc/d/x/req/n/1/x", "fleetrpc/d/{device}/req/{node}/{rid}")),
        # CALL / RETURN
        ("fleetrpc/d/x/call", few("fleetrpc/d/x/call", "fleetrpc/d/{device}/call/{cid}")),
        ("fleetrpc/d/x/call/", "empty level in topic 'fleetrpc/d/x/call/'"),
        ("fleetrpc/d/x/call/1/2", many("fleetrpc/d/x/call/1/2", "fleetrpc/d/{device}/call/{cid}")),
        ("fleetrpc/d/x/ret/n/1", "call id 'n' in topic 'fleetrpc/d/x/ret/n/1' is not a decimal integer"),
        ("fleetrpc/d/x/ret", few("fleetrpc/d/x/ret", "fleetrpc/d/{device}/ret/{cid}")),
        # PRESENCE / HEARTBEAT
        ("fleetrpc/d/x/presence/", many("fleetrpc/d/x/presence/", "fleetrpc/d/{device}/presence")),
        ("fleetrpc/d/x/presence/1", many("fleetrpc/d/x/presence/1", "fleetrpc/d/{device}/presence")),
        ("fleetrpc/d/x/hb/x", many("fleetrpc/d/x/hb/x", "fleetrpc/d/{device}/hb")),
        # ELVES
        ("fleetrpc/elves", few("fleetrpc/elves", "fleetrpc/elves/{app}/...")),
        ("fleetrpc/elves/", "empty level in topic 'fleetrpc/elves/'"),
        ("fleetrpc/elves/app/", "empty level in topic 'fleetrpc/elves/app/'"),
        ("fleetrpc/elves/app/call//1", "empty level in topic 'fleetrpc/elves/app/call//1'"),
        ("fleetrpc/elves/a#p/call", "app id in topic 'fleetrpc/elves/a#p/call' contains '+', '#' or NUL"),
        ("fleetrpc/elves/app/call/+", "a level of topic 'fleetrpc/elves/app/call/+' contains '+', '#' or NUL"),
        # left to right: the first problem is the one reported
        ("fleetrpc/d/a+b/zzz/n/1", "device id in topic 'fleetrpc/d/a+b/zzz/n/1' contains '+', '#' or NUL"),
        ("fleetrpc/d/x/zzz//", "unknown message kind 'zzz' in topic 'fleetrpc/d/x/zzz//'"),
        ("fleetrpc/d/x/res/n#/abc/1", "node id in topic 'fleetrpc/d/x/res/n#/abc/1' contains '+', '#' or NUL"),
        ("fleetrpc/d/x/res/n/abc/1", "request id 'abc' in topic 'fleetrpc/d/x/res/n/abc/1' is not a decimal integer"),
    ],
)
def test_malformed_topic(codec, topic, message):
    assert err(codec, topic, b"{}") == message


@pytest.mark.parametrize(
    "rid",
    ["abc", "-1", "+1", "1.5", "1e3", " 1", "1 ", "0x10", "1_000", "١٢", "²", "12a", "-0",
     "9223372036854775807x"],
)
def test_id_not_decimal(codec, rid):
    topic = f"{P}/d/x/res/n/{rid}"
    assert err(codec, topic) == f"request id {rid!r} in topic {topic!r} is not a decimal integer"
    topic = f"{P}/d/x/call/{rid}"
    assert err(codec, topic) == f"call id {rid!r} in topic {topic!r} is not a decimal integer"


@pytest.mark.parametrize(
    "rid",
    ["9223372036854775808", "9223372036854775809", "9223372036854775810", "18446744073709551616",
     "99999999999999999999", "1" + "0" * 30, "7" * 5000],
)
def test_id_out_of_range(codec, rid):
    topic = f"{P}/d/x/ack/n/{rid}"
    shown_rid = repr(rid if len(rid) <= 40 else rid[:37] + "...")
    assert err(codec, topic) == (
        f"request id {shown_rid} in topic {show(topic)} is out of range (must be below 2**63)"
    )


def test_id_too_long(codec):
    ok = "x" * 128
    assert codec.decode(f"{P}/d/{ok}/hb", b"{}").device == ok
    long_topic = f"{P}/d/{'x' * 129}/hb"
    shown = repr(long_topic[:77] + "...")
    assert err(codec, long_topic) == f"device id in topic {shown} is longer than 128 bytes"
    # 65 two-byte characters: 65 characters but 130 bytes
    topic = f"{P}/d/x/res/{'é' * 65}/1"
    assert err(codec, topic) == f"node id in topic {show(topic)} is longer than 128 bytes"
    topic = f"{P}/elves/{'🙂' * 33}/call"
    assert err(codec, topic) == f"app id in topic {show(topic)} is longer than 128 bytes"
    assert codec.decode(f"{P}/elves/{'🙂' * 32}/call", b'{"mqt":"call","mqs":"s","mqf":"f"}').device == "🙂" * 32


def test_long_topic_is_cut_in_messages(codec):
    topic = f"{P}/d/x/" + "k" * 70000
    msg = err(codec, topic)
    assert msg == f"unknown message kind {'k' * 37 + '...'!r} in topic {topic[:77] + '...'!r}"
    assert len(msg) < 200


@pytest.mark.parametrize("topic", [b"fleetrpc/d/x/hb", None, 5, ["fleetrpc", "d"], bytearray(b"x")])
def test_topic_not_str(codec, topic):
    assert err(codec, topic, b"{}") == f"topic must be str, not {type(topic).__name__}"


class Sub(str):
    def __str__(self):  # must not be used
        return "wrong"

    def __repr__(self):
        return "wrong"


def test_topic_str_subclass(codec):
    m = codec.decode(Sub(f"{P}/d/x/res/n/1"), b"1")
    assert (m.device, m.node, m.rid) == ("x", "n", 1) and type(m.device) is str and type(m.node) is str
    # error paths too
    assert err(codec, Sub("zz")) == "topic 'zz' does not start with 'fleetrpc/'"
    assert err(codec, Sub(f"{P}/d/x/res/n/abc")) == (
        f"request id 'abc' in topic '{P}/d/x/res/n/abc' is not a decimal integer"
    )
    assert err(codec, Sub(f"{P}/d/x/zz")) == f"unknown message kind 'zz' in topic '{P}/d/x/zz'"
    assert err(codec, Sub(f"{P}/d/\ud800/hb")) == f"topic '{P}/d/\\ud800/hb' is not valid UTF-8"


def test_str_subclass_arguments(core):
    if not hasattr(core, "Codec"):
        pytest.skip(f"no {core.name} codec")
    codec = core.Codec(Sub("pre"))
    assert codec.prefix == "pre" and type(codec.prefix) is str
    assert codec.decode("pre/d/x/hb", b"{}").device == "x"
    assert err(codec, "x") == "topic 'x' does not start with 'pre/'"
    assert core.Message(Kind.ACK, Sub("d")).device == "d"
    assert codec.encode_request(Sub("m"), "p") == b'{"method":"m","params":"p"}'
    with pytest.raises(CodecError) as info:
        codec.encode_request(Sub("m"), Sub("p"))  # msgspec refuses str subclasses as values
    assert str(info.value) == "cannot encode the params of 'm': unsupported type Sub at $.params"


def test_topic_not_utf8(codec):
    topic = f"{P}/d/\udcff/hb"
    assert err(codec, topic) == f"topic {topic!r} is not valid UTF-8"
    assert err(codec, "\ud800") == "topic '\\ud800' is not valid UTF-8"


# -- payloads -------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b)), lambda b: memoryview(b"xx" + b + b"yy")[2:-2],
     lambda b: array.array("B", b), lambda b: memoryview(b).cast("c")],
)
def test_bytes_like_payloads(codec, wrap):
    m = codec.decode(f"{P}/d/x/res/n/1", wrap(b'{"a":[1,2]}'))
    assert m.body == {"a": [1, 2]} and m.error is None
    m = codec.decode(f"{P}/d/x/call/1", wrap(b'{"method":"m"}'))
    assert m.body == RpcRequest("m")


def test_strided_and_wide_memoryviews(codec):
    strided = memoryview(b'{{""aa""::11}}')[::2]  # not contiguous: '{"a":1}'
    assert codec.decode(f"{P}/d/x/hb", strided).body == {"a": 1}
    wide = memoryview(array.array("I", [0x31313131]))  # one item of 4 bytes: b"1111"
    assert len(wide) == 1 and wide.nbytes == 4
    assert codec.decode(f"{P}/d/x/res/n/1", wide).body == 1111
    # the size limit counts bytes, not items
    assert err(type(codec)(max_payload=3), f"{P}/d/x/res/n/1", wide) == (
        "REPLY payload of 4 bytes exceeds the limit of 3 bytes"
    )


def test_released_memoryview(codec):
    mv = memoryview(b"{}")
    mv.release()
    assert err(codec, f"{P}/d/x/hb", mv) == "payload must be bytes-like, not memoryview"


@pytest.mark.parametrize("payload", ["{}", None, 5, 1.5, ["{}"], object()])
def test_payload_not_bytes(codec, payload):
    for topic in (f"{P}/d/x/hb", f"{P}/d/x/ack/n/1", f"{P}/d/x/res/n/1"):
        assert err(codec, topic, payload) == f"payload must be bytes-like, not {type(payload).__name__}"


def test_topic_is_checked_before_payload(codec):
    assert err(codec, f"{P}/d/x/zz", None) == f"unknown message kind 'zz' in topic '{P}/d/x/zz'"


def test_payload_size_limit(core):
    if not hasattr(core, "Codec"):
        pytest.skip(f"no {core.name} codec")
    codec = core.Codec(max_payload=10)
    assert codec.decode(f"{P}/d/x/res/n/1", b"1234567890").body == 1234567890
    for topic, kind in [(f"{P}/d/x/res/n/1", "REPLY"), (f"{P}/d/x/ack/n/1", "ACK"),
                        (f"{P}/d/x/hb", "HEARTBEAT"), (f"{P}/elves/a/call", "ELVES")]:
        assert err(codec, topic, b"12345678901") == f"{kind} payload of 11 bytes exceeds the limit of 10 bytes"
    assert err(codec, f"{P}/d/x/hb", bytearray(11)) == "HEARTBEAT payload of 11 bytes exceeds the limit of 10 bytes"
    zero = core.Codec(max_payload=0)
    assert zero.decode(f"{P}/d/x/ack/n/1", b"").kind is Kind.ACK
    assert err(zero, f"{P}/d/x/ack/n/1", b" ") == "ACK payload of 1 bytes exceeds the limit of 0 bytes"


def test_default_size_limit(codec):
    assert codec.max_payload == DEFAULT_MAX_PAYLOAD == 262144
    big = b'"' + b"x" * (DEFAULT_MAX_PAYLOAD - 2) + b'"'
    assert len(codec.decode(f"{P}/d/x/res/n/1", big).body) == DEFAULT_MAX_PAYLOAD - 2
    huge = big + b" "
    assert err(codec, f"{P}/d/x/res/n/1", huge) == (
        f"REPLY payload of {DEFAULT_MAX_PAYLOAD + 1} bytes exceeds the limit of {DEFAULT_MAX_PAYLOAD} bytes"
    )
    assert err(codec, f"{P}/d/x/call/1", b" " * 10_000_000).startswith("CALL payload of 10000000 bytes exceeds")


@pytest.mark.parametrize(
    "payload, error",
    [
        (b"", "reply is not valid JSON: empty payload"),
        (b"ok", "reply is not valid JSON: malformed JSON at byte 0"),
        (b"{", "reply is not valid JSON: malformed JSON at byte 1"),
        (b'{"a":1}x', "reply is not valid JSON: malformed JSON at byte 7"),
        (b"\xff\xfe", "reply is not valid JSON: invalid UTF-8 at byte 0"),
        (b'"\xff"', "reply is not valid JSON: invalid UTF-8 at byte 1"),
        (b"NaN", "reply is not valid JSON: malformed JSON"),
        pytest.param(b"[" * 100_000, "reply is not valid JSON: nested too deep",
                     id="deep"),
        pytest.param(b"1" * 5000, "reply is not valid JSON: number too large", id="bigint"),
        pytest.param(b"[1e999]", "reply is not valid JSON: number too large", id="bigfloat"),
        pytest.param(b'"\\ud800"', "reply is not valid JSON: malformed JSON", id="lone-surrogate-escape"),
        pytest.param(b"[1,\n 2,,]", "reply is not valid JSON: malformed JSON at byte 7", id="position-in-bytes"),
        pytest.param('["é", x]'.encode(), "reply is not valid JSON: malformed JSON at byte 7", id="position-after-utf8"),
        pytest.param(b"  ", "reply is not valid JSON: malformed JSON at byte 2", id="blank"),
        (b"\xef\xbb\xbf{}", "reply is not valid JSON: malformed JSON at byte 0"),
    ],
)
def test_reply_not_json(codec, payload, error):
    m = codec.decode(f"{P}/d/dev/res/n1/8", payload)
    assert fields(m) == (Kind.REPLY, "dev", "n1", 8, None, error)


@pytest.mark.parametrize(
    "topic, kind",
    [(f"{P}/d/x/req/n/1", "REQUEST"), (f"{P}/d/x/call/1", "CALL"), (f"{P}/d/x/ret/1", "RETURN"),
     (f"{P}/d/x/presence", "PRESENCE"), (f"{P}/d/x/hb", "HEARTBEAT"), (f"{P}/elves/a/call", "ELVES")],
)
def test_empty_payload(codec, topic, kind):
    assert err(codec, topic, b"") == f"empty {kind} payload"


@pytest.mark.parametrize(
    "topic, payload, message",
    [
        (f"{P}/d/x/call/1", b'{"method":1}', "invalid CALL payload: $.method: expected string, got integer"),
        (f"{P}/d/x/call/1", b'{"params":{}}', "invalid CALL payload: $.method: missing"),
        (f"{P}/d/x/call/1", b'{"method":""}', "invalid CALL payload: $.method: length must be 1 to 128"),
        pytest.param(f"{P}/d/x/call/1", b'{"method":"' + b"m" * 129 + b'"}',
                     "invalid CALL payload: $.method: length must be 1 to 128", id="long-method"),
        (f"{P}/d/x/call/1", b'["m", {}]', "invalid CALL payload: $: expected object, got array"),
        (f"{P}/d/x/call/1", b'{"method":"m"', "invalid CALL payload: malformed JSON at byte 13"),
        (f"{P}/d/x/call/1", b'{"method":"\xc3"}',
         "invalid CALL payload: invalid UTF-8 at byte 11"),
        (f"{P}/d/x/req/n/1", b'{"method":null}', "invalid REQUEST payload: $.method: expected string, got null"),
        (f"{P}/d/x/ret/1", b"[}", "invalid RETURN payload: malformed JSON at byte 1"),
        (f"{P}/d/x/presence", b'{"status":"away"}', 'invalid PRESENCE payload: $.status: must be one of "offline", "online"'),
        (f"{P}/d/x/presence", b'{"ts":1}', "invalid PRESENCE payload: $.status: missing"),
        (f"{P}/d/x/presence", b'{"status":"online","ts":"now"}',
         "invalid PRESENCE payload: $.ts: expected integer or null, got string"),
        (f"{P}/d/x/presence", b'"online"', "invalid PRESENCE payload: $: expected object, got string"),
        (f"{P}/d/x/hb", b"[]", "invalid HEARTBEAT payload: $: expected object, got array"),
        (f"{P}/d/x/hb", b"1", "invalid HEARTBEAT payload: $: expected object, got integer"),
        (f"{P}/d/x/hb", b"null", "invalid HEARTBEAT payload: $: expected object, got null"),
        (f"{P}/d/x/hb", b"\xff", "invalid HEARTBEAT payload: invalid UTF-8 at byte 0"),
        pytest.param(f"{P}/d/x/hb", b'{"a":' * 50_000,
                     "invalid HEARTBEAT payload: nested too deep",
                     id="deep"),
        # Elves envelopes
        (f"{P}/elves/a/call", b'{"mqs":"s","mqf":"f"}', "invalid ELVES payload: missing 'mqt'"),
        (f"{P}/elves/a/call", b'{"mqt":"call","mqf":"f"}', "invalid ELVES payload: missing 'mqs'"),
        (f"{P}/elves/a/call", b'{"mqt":"call","mqs":"s"}', "invalid ELVES payload: missing 'mqf'"),
        (f"{P}/elves/a/call", b"{}", "invalid ELVES payload: missing 'mqt'"),
        (f"{P}/elves/a/call", b'{"mqt":null,"mqs":"s","mqf":"f"}',
         "invalid ELVES payload: 'mqt' must be a string, not NoneType"),
        (f"{P}/elves/a/call", b'{"mqt":"call","mqs":1,"mqf":"f"}',
         "invalid ELVES payload: 'mqs' must be a string, not int"),
        (f"{P}/elves/a/call", b'{"mqt":"call","mqs":"s","mqf":["f"]}',
         "invalid ELVES payload: 'mqf' must be a string, not list"),
        (f"{P}/elves/a/call", b'{"mqt":"ask","mqs":"s","mqf":"f"}',
         "invalid ELVES payload: 'mqt' must be 'call' or 'back', not 'ask'"),
        (f"{P}/elves/a/call", b'{"mqt":"","mqs":"s","mqf":"f"}',
         "invalid ELVES payload: 'mqt' must be 'call' or 'back', not ''"),
        (f"{P}/elves/a/call", b'{"mqt":"back","mqs":"","mqf":"f"}', "invalid ELVES payload: 'mqs' is empty"),
        (f"{P}/elves/a/call", b'{"mqt":"back","mqs":"s","mqf":""}', "invalid ELVES payload: 'mqf' is empty"),
        (f"{P}/elves/a/call", b'["mqt","call"]', "invalid ELVES payload: $: expected object, got array"),
    ],
)
def test_invalid_payload(codec, topic, payload, message):
    assert err(codec, topic, payload) == message


@pytest.mark.parametrize(
    "topic, payload, message",
    [
        (f"{P}/d/x/presence", b'{"status":"online","ts":1.5}',
         "invalid PRESENCE payload: $.ts: expected integer or null, got number"),
        (f"{P}/d/x/presence", b'{"status":"online","ts":true}',
         "invalid PRESENCE payload: $.ts: expected integer or null, got boolean"),
        (f"{P}/d/x/presence", b'{"status":1}', 'invalid PRESENCE payload: $.status: must be one of "offline", "online"'),
        (f"{P}/d/x/call/1", b'{"method":"m","id":5}', "invalid CALL payload: $.id: expected string, got integer"),
        (f"{P}/d/x/call/1", b'{"method":"m","params":[1e999]}', "invalid CALL payload: number too large"),
        (f"{P}/d/x/call/1", b'{"method":"m","params":' + b"[" * 100_000, "invalid CALL payload: nested too deep"),
        # one level past MAX_JSON_DEPTH, which msgspec alone decodes (more so from Python 3.12 on)
        (f"{P}/d/x/call/1", b'{"method":"m","params":' + b"[" * 500 + b"]" * 500 + b"}",
         "invalid CALL payload: nested too deep"),
        (f"{P}/d/x/hb", b'{"a b":"\xe9"}', "invalid HEARTBEAT payload: invalid UTF-8 at byte 8"),
    ],
)
def test_payload_reasons_are_fleetrpcs(codec, topic, payload, message):
    """Each kind of bad input has one short reason in fleetrpc's words,
    whatever msgspec's release says about it."""
    assert err(codec, topic, payload) == message


# -- encode ---------------------------------------------------------------------


def test_encode_request_round_trip(codec):
    for params in ({"a": [1, 2.5, None, "é"]}, [], None, 7, "s", {}):
        data = codec.encode_request("setValue", params)
        assert data == msgspec.json.encode({"method": "setValue", "params": params})
        m = codec.decode(protocol.request_topic(P, "dev", "n1", 99), data)
        assert fields(m) == (Kind.REQUEST, "dev", "n1", 99, RpcRequest("setValue", params), None)
        m = codec.decode(protocol.call_topic(P, "dev", 5), data)
        assert m.body == RpcRequest("setValue", params)


@pytest.mark.parametrize("method", ["", None, 5, b"m", "m" * 129])
def test_encode_request_bad_method(codec, method):
    with pytest.raises(CodecError, match="^method must be a non-empty str of at most 128 characters$"):
        codec.encode_request(method, {})


def test_encode_request_bad_params(codec):
    with pytest.raises(CodecError) as info:
        codec.encode_request("m", {"x": object()})
    assert str(info.value) == "cannot encode the params of 'm': unsupported type object at $.params.x"
    loop: list = []
    loop.append(loop)
    with pytest.raises(CodecError) as info:
        codec.encode_request("m", loop)
    assert str(info.value) == "cannot encode the params of 'm': nested too deep"


def test_encode_reasons(codec):
    cases = [
        (("m", {"a": ["\ud800"]}), "cannot encode the params of 'm': lone surrogate in a string at $.params.a[0]"),
        (("m", {"\ud800": 1}), "cannot encode the params of 'm': lone surrogate in a key at $.params"),
        (("m", {"ok": {(1,): 2}}), "cannot encode the params of 'm': key of type tuple at $.params.ok"),
        (("m", [1, {"a b": type}]), "cannot encode the params of 'm': unsupported type type at $.params[1][\"a b\"]"),
        (("\ud800", 1), "cannot encode the params of '\\ud800': lone surrogate in a string at $.method"),
    ]
    for (method, params), message in cases:
        with pytest.raises(CodecError) as info:
            codec.encode_request(method, params)
        assert str(info.value) == message


def test_encode(codec):
    assert codec.encode({"a": 1}) == b'{"a":1}'
    assert codec.encode(Presence("online", 5)) == b'{"status":"online","ts":5}'
    assert codec.encode([1, "x", None]) == b'[1,"x",null]'
    with pytest.raises(CodecError) as info:
        codec.encode({1j: 2})
    assert str(info.value) == "cannot encode dict: key of type complex at $"
    with pytest.raises(CodecError) as info:
        codec.encode(object())
    assert str(info.value) == "cannot encode object: unsupported type object at $"


# -- construction ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prefix": ""}, "topic prefix is empty"),
        ({"prefix": "a//b"}, "topic prefix 'a//b' has an empty level"),
        ({"prefix": "a/"}, "topic prefix 'a/' has an empty level"),
        ({"prefix": "/a"}, "topic prefix '/a' has an empty level"),
        ({"prefix": "a/+"}, "topic prefix 'a/+' contains '+'"),
        ({"prefix": "a#"}, "topic prefix 'a#' contains '#'"),
        ({"prefix": "$SYS"}, "topic prefix '$SYS' starts with '$', which is reserved for the broker"),
        ({"prefix": "\ud800"}, "topic prefix '\\ud800' is not valid UTF-8"),
        ({"prefix": 5}, "topic prefix must be a string, not int"),
        ({"max_payload": -1}, "max_payload must be an int in [0, 9223372036854775807], not -1"),
        ({"max_payload": 1.5}, "max_payload must be an int in [0, 9223372036854775807], not 1.5"),
        ({"max_payload": True}, "max_payload must be an int in [0, 9223372036854775807], not True"),
        ({"max_payload": 2**63}, "max_payload must be an int in [0, 9223372036854775807], not 9223372036854775808"),
    ],
)
def test_bad_configuration(core, kwargs, message):
    if not hasattr(core, "Codec"):
        pytest.skip(f"no {core.name} codec")
    with pytest.raises(ValidationError) as info:
        core.Codec(**kwargs)
    assert str(info.value) == message


def test_positional_configuration(core):
    if not hasattr(core, "Codec"):
        pytest.skip(f"no {core.name} codec")
    codec = core.Codec("p", 5)
    assert (codec.prefix, codec.max_payload) == ("p", 5)
