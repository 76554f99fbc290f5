"""The wire contract: payload Structs, error replies, topic builders,
subscription filters, id validation, and round trips through the codec."""

from __future__ import annotations

import msgspec
import pytest

from fleetrpc import wire as protocol
from fleetrpc.wire import Kind
from fleetrpc.errors import ValidationError
from fleetrpc.wire import ErrorBody, ErrorReply, Presence, RpcRequest

P = "fleetrpc"


def matches(filter_: str, topic: str) -> bool:
    """MQTT topic matching (shared subscriptions match their inner filter)."""
    if filter_.startswith("$share/"):
        filter_ = filter_.split("/", 2)[2]
    f, t = filter_.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def test_matcher_itself():
    assert matches("a/+/c", "a/b/c") and not matches("a/+/c", "a/b/c/d")
    assert matches("a/#", "a") and matches("a/#", "a/b/c") and not matches("a/+", "a")
    assert matches("$share/g/a/+", "a/b")


# -- payloads -------------------------------------------------------------------


def test_rpc_request():
    assert RpcRequest("m").params == {}
    a, b = RpcRequest("m"), RpcRequest("m")
    a.params["x"] = 1
    assert b.params == {}, "the default must not be shared"
    assert msgspec.json.encode(RpcRequest("m", [1])) == b'{"method":"m","params":[1]}'
    assert msgspec.json.encode(RpcRequest("m")) == b'{"method":"m","params":{}}'
    assert protocol.REQUEST_DECODER.decode(b'{"method":"m"}') == RpcRequest("m", {})
    assert protocol.REQUEST_DECODER.decode(b'{"params":1,"method":"m","x":[]}') == RpcRequest("m", 1)
    with pytest.raises(msgspec.ValidationError):
        protocol.REQUEST_DECODER.decode(b'{"method":""}')


def test_presence():
    assert msgspec.json.encode(Presence("online", 5)) == b'{"status":"online","ts":5}'
    assert msgspec.json.encode(Presence("offline")) == b'{"status":"offline"}'
    full = Presence("online", 1, ip="10.1.2.3", os="linux", version="1.2", started=0)
    assert protocol.PRESENCE_DECODER.decode(msgspec.json.encode(full)) == full
    with pytest.raises(msgspec.ValidationError):
        protocol.PRESENCE_DECODER.decode(b'{"status":"busy"}')


def test_structs_are_not_gc_tracked():
    import gc

    for obj in (RpcRequest("m", {}), Presence("online"), ErrorBody("c", "m")):
        assert not gc.is_tracked(obj)


def test_error_reply():
    data = protocol.error_reply("METHOD_NOT_FOUND", "unknown method 'x'")
    assert data == b'{"error":{"code":"METHOD_NOT_FOUND","message":"unknown method \'x\'"}}'
    assert msgspec.json.decode(data, type=ErrorReply) == ErrorReply(ErrorBody("METHOD_NOT_FOUND", "unknown method 'x'"))
    assert protocol.error_reply("é", "\n") == '{"error":{"code":"é","message":"\\n"}}'.encode()


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"error": {"code": "X", "message": "m"}}, ErrorBody("X", "m")),
        ({"error": {"code": "X", "message": "m", "data": 1}}, ErrorBody("X", "m")),
        (ErrorReply(ErrorBody("a", "b")), ErrorBody("a", "b")),
        ({"error": {"code": 1, "message": "m"}}, None),
        ({"error": {"code": "X"}}, None),
        ({"error": "boom"}, None),
        ({"error": {"code": "X", "message": "m"}, "result": 1}, None),
        ([{"error": {}}], None),
        (None, None),
        ("error", None),
    ],
)
def test_as_error(body, expected):
    assert protocol.as_error(body) == expected


def test_as_error_of_decoded_reply():
    body = protocol.ANY_DECODER.decode(protocol.error_reply("C", "M"))
    assert protocol.as_error(body) == ErrorBody("C", "M")


# -- topics ---------------------------------------------------------------------


def test_topic_builders():
    assert protocol.request_topic(P, "dev", "n1", 7) == "fleetrpc/d/dev/req/n1/7"
    assert protocol.reply_topic(P, "dev", "n1", 7) == "fleetrpc/d/dev/res/n1/7"
    assert protocol.ack_topic(P, "dev", "n1", 7) == "fleetrpc/d/dev/ack/n1/7"
    assert protocol.call_topic(P, "dev", 3) == "fleetrpc/d/dev/call/3"
    assert protocol.return_topic(P, "dev", 3) == "fleetrpc/d/dev/ret/3"
    assert protocol.presence_topic(P, "dev") == "fleetrpc/d/dev/presence"
    assert protocol.heartbeat_topic(P, "dev") == "fleetrpc/d/dev/hb"
    assert protocol.elves_topic(P, "app") == "fleetrpc/elves/app/call"
    assert protocol.elves_topic(P, "app", "back", 17) == "fleetrpc/elves/app/back/17"
    assert protocol.request_topic("a/b", "d", "n", 1) == "a/b/d/d/req/n/1"


def test_server_filters():
    assert protocol.server_filters(P, "n1") == [
        "fleetrpc/d/+/res/n1/+",
        "fleetrpc/d/+/ack/n1/+",
        "fleetrpc/d/+/call/+",
        "fleetrpc/d/+/presence",
        "fleetrpc/d/+/hb",
        "fleetrpc/elves/+/call/#",
    ]
    assert protocol.server_filters(P, "n1", share_group="grp") == [
        "fleetrpc/d/+/res/n1/+",
        "fleetrpc/d/+/ack/n1/+",
        "$share/grp/fleetrpc/d/+/call/+",
        "fleetrpc/d/+/presence",
        "fleetrpc/d/+/hb",
        "$share/grp/fleetrpc/elves/+/call/#",
    ]


def test_device_filters():
    assert protocol.device_filters(P, "dev-1") == ["fleetrpc/d/dev-1/req/#", "fleetrpc/d/dev-1/ret/+"]


def test_filters_validate():
    with pytest.raises(ValidationError, match="^node id 'n\\+' contains '\\+'"):
        protocol.server_filters(P, "n+")
    with pytest.raises(ValidationError, match="^share group id 'a/b' contains '/'"):
        protocol.server_filters(P, "n", share_group="a/b")
    with pytest.raises(ValidationError, match="device id is empty"):
        protocol.device_filters(P, "")
    with pytest.raises(ValidationError, match="topic prefix 'a/' has an empty level"):
        protocol.device_filters("a/", "d")


def test_filters_route_each_topic_to_the_right_side():
    """Every topic reaches exactly the subscriber it is meant for."""
    server = protocol.server_filters(P, "n1", share_group="g")
    other_node = protocol.server_filters(P, "n2")
    device = protocol.device_filters(P, "dev")
    other_device = protocol.device_filters(P, "dev2")

    def who(topic):
        return (
            any(matches(f, topic) for f in server),
            any(matches(f, topic) for f in other_node),
            any(matches(f, topic) for f in device),
            any(matches(f, topic) for f in other_device),
        )

    # server node n1 sends to dev; the device answers n1 only
    assert who(protocol.request_topic(P, "dev", "n1", 5)) == (False, False, True, False)
    assert who(protocol.reply_topic(P, "dev", "n1", 5)) == (True, False, False, False)
    assert who(protocol.ack_topic(P, "dev", "n1", 5)) == (True, False, False, False)
    # client-side calls go to the (shared) server side, returns to the caller
    assert who(protocol.call_topic(P, "dev", 9)) == (True, True, False, False)
    assert who(protocol.return_topic(P, "dev", 9)) == (False, False, True, False)
    # every node sees presence and heartbeats
    assert who(protocol.presence_topic(P, "dev")) == (True, True, False, False)
    assert who(protocol.heartbeat_topic(P, "dev")) == (True, True, False, False)
    # Elves: calls to the servers, backs not back to them
    assert who(protocol.elves_topic(P, "app")) == (True, True, False, False)
    assert who(protocol.elves_topic(P, "app", "call", 3)) == (True, True, False, False)
    assert who(protocol.elves_topic(P, "app", "back", 3)) == (False, False, False, False)


# -- validation -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["d", "dev-001", "é" * 64, "x" * 128, "设备", "a b", "$x", "🙂" * 32])
def test_validate_id_ok(value):
    assert protocol.validate_id("device", value) is value


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "device id is empty"),
        (None, "device id must be a string, not NoneType"),
        (5, "device id must be a string, not int"),
        (b"dev", "device id must be a string, not bytes"),
        ("a/b", "device id 'a/b' contains '/', which cannot appear in a topic level"),
        ("a+", "device id 'a+' contains '+', which cannot appear in a topic level"),
        ("#", "device id '#' contains '#', which cannot appear in a topic level"),
        ("a\x00", "device id 'a\\x00' contains '\\x00', which cannot appear in a topic level"),
        ("x" * 129, f"device id {'x' * 77 + '...'!r} is 129 bytes long in UTF-8 (at most 128)"),
        ("é" * 65, f"device id {'é' * 65!r} is 130 bytes long in UTF-8 (at most 128)"),
        ("\ud800", "device id '\\ud800' is not valid UTF-8"),
        ("a" * 40 + "\udc00", f"device id {'a' * 40 + chr(0xDC00)!r} is not valid UTF-8"),
    ],
)
def test_validate_id_bad(value, message):
    with pytest.raises(ValidationError) as info:
        protocol.validate_id("device", value)
    assert str(info.value) == message


def test_validate_id_str_subclass():
    class Sub(str):
        def __repr__(self):
            return "wrong"

    assert protocol.validate_id("device", Sub("d")) == "d"
    with pytest.raises(ValidationError, match="^device id 'a/b' contains '/'"):
        protocol.validate_id("device", Sub("a/b"))


def test_validate_id_kind_names_the_id():
    with pytest.raises(ValidationError, match="^node id is empty$"):
        protocol.validate_id("node", "")


@pytest.mark.parametrize("prefix", ["fleetrpc", "a/b/c", "é", "x" * 1024])
def test_validate_prefix_ok(prefix):
    assert protocol.validate_prefix(prefix) is prefix


@pytest.mark.parametrize(
    "prefix, message",
    [
        ("", "topic prefix is empty"),
        ("a//b", "topic prefix 'a//b' has an empty level"),
        ("/", "topic prefix '/' has an empty level"),
        ("a/#", "topic prefix 'a/#' contains '#'"),
        ("$share/g", "topic prefix '$share/g' starts with '$', which is reserved for the broker"),
        ("x" * 1025, f"topic prefix {'x' * 77 + '...'!r} is longer than 1024 bytes"),
        (None, "topic prefix must be a string, not NoneType"),
    ],
)
def test_validate_prefix_bad(prefix, message):
    with pytest.raises(ValidationError) as info:
        protocol.validate_prefix(prefix)
    assert str(info.value) == message


# -- round trips through the codec (both variants) ------------------------------


@pytest.fixture
def codec(core):
    if not hasattr(core, "Codec"):
        pytest.skip(f"no {core.name} codec")
    return core.Codec()


IDS = ["d", "dev-00042", "é", "设备-7", "x" * 128, "🙂" * 32, "a.b:c_d e", "$d"]


@pytest.mark.parametrize("device", IDS)
@pytest.mark.parametrize("node", ["n1", "node-é", "N" * 128])
@pytest.mark.parametrize("rid", [0, 1, 2**53 - 1, 2**63 - 1])
def test_round_trip_request_reply_ack(codec, device, node, rid):
    for build, kind, payload, body in [
        (protocol.request_topic, Kind.REQUEST, b'{"method":"m"}', RpcRequest("m")),
        (protocol.reply_topic, Kind.REPLY, b"[1]", [1]),
        (protocol.ack_topic, Kind.ACK, b"", None),
    ]:
        m = codec.decode(build(P, device, node, rid), payload)
        assert (m.kind, m.device, m.node, m.rid, m.body, m.error) == (kind, device, node, rid, body, None)


@pytest.mark.parametrize("device", IDS)
@pytest.mark.parametrize("cid", [0, 5, 2**63 - 1])
def test_round_trip_call_return(codec, device, cid):
    m = codec.decode(protocol.call_topic(P, device, cid), codec.encode_request("getTime", None))
    assert (m.kind, m.device, m.node, m.rid, m.body) == (Kind.CALL, device, None, cid, RpcRequest("getTime", None))
    m = codec.decode(protocol.return_topic(P, device, cid), protocol.error_reply("E", "boom"))
    assert (m.kind, m.device, m.rid) == (Kind.RETURN, device, cid)
    assert protocol.as_error(m.body) == ErrorBody("E", "boom")


@pytest.mark.parametrize("device", IDS)
def test_round_trip_presence_heartbeat(codec, device):
    m = codec.decode(protocol.presence_topic(P, device), codec.encode(Presence("offline", 12)))
    assert (m.kind, m.device, m.node, m.rid, m.body) == (Kind.PRESENCE, device, None, 0, Presence("offline", 12))
    m = codec.decode(protocol.heartbeat_topic(P, device), b'{"load":[0.1,0.2]}')
    assert (m.kind, m.device, m.body) == (Kind.HEARTBEAT, device, {"load": [0.1, 0.2]})


@pytest.mark.parametrize("app", IDS)
def test_round_trip_elves(codec, app):
    envelope = codec.encode({"mqt": "call", "mqs": "heartbeat", "mqf": "getstatbyip", "agentip": "10.0.0.1"})
    m = codec.decode(protocol.elves_topic(P, app), envelope)
    assert (m.kind, m.device, m.node, m.rid) == (Kind.ELVES, app, "call", 0)
    assert m.body["mqf"] == "getstatbyip"
    m = codec.decode(protocol.elves_topic(P, app, protocol.ELVES_BACK, 42), envelope)
    assert (m.device, m.node) == (app, "back/42")


def test_round_trip_custom_prefix(core):
    if not hasattr(core, "Codec"):
        pytest.skip(f"no {core.name} codec")
    prefix = "acme/prod/é"
    codec = core.Codec(prefix)
    m = codec.decode(protocol.reply_topic(prefix, "dev", "n1", 3), b"{}")
    assert (m.kind, m.device, m.node, m.rid) == (Kind.REPLY, "dev", "n1", 3)
    for f in protocol.server_filters(prefix, "n1"):
        assert f.startswith(prefix + "/")


# -- one home for the contract ----------------------------------------------------


def test_protocol_md_is_generated_from_the_wire_package():
    import pathlib

    from fleetrpc.wire import docs

    # The checkout's document, also when fleetrpc is installed as a wheel
    # (tools/dev test --latest): the package then has no docs/ beside it.
    doc = pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
    assert docs.main(["--check", "--doc", str(doc)]) == 0, "run: python -m fleetrpc.wire.docs"


def test_no_topic_is_assembled_outside_the_wire_package():
    import pathlib
    import re

    import fleetrpc

    root = pathlib.Path(fleetrpc.__file__).parent
    pattern = re.compile(r"""f["'][^"'\n]*(/d/|/req/|/res/|/ret/|/ack/|/call/|/presence|/hb\b|elves/)""")
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("wire/"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


def test_the_wire_package_does_not_import_the_core():
    import subprocess
    import sys

    code = "import sys, fleetrpc.wire; print(any(m.startswith('fleetrpc._core') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # fleetrpc/__init__ imports the core; the wire modules themselves must not.
    import ast
    import pathlib

    import fleetrpc.wire as wire

    for path in pathlib.Path(wire.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and "_core" in node.module:
                raise AssertionError(f"{path.name} imports {node.module}")
    assert out.returncode == 0


def test_node_level_has_a_boot_id_that_differs_every_run():
    from fleetrpc.wire import new_boot_id, node_level

    boots = {new_boot_id() for _ in range(1000)}
    assert len(boots) == 1000
    assert node_level("node-a", "abc") == "node-a.abc"
    with pytest.raises(ValidationError):
        node_level("n" * 128, "abc")


@pytest.mark.parametrize("rt, honoured", [
    ("fleetrpc/d/dev/ret/7", True),
    ("fleetrpc/d/dev/ret/anything", True),
    ("fleetrpc/d/other/res/node/1", False),
    ("fleetrpc/d/dev/res/node/1", False),
    ("fleetrpc/d/dev/ret/7/more", False),
    ("fleetrpc/d/dev/ret/", False),
    ("fleetrpc/d/dev/ret/+", False),
    ("elsewhere", False),
])
def test_own_answer_target(rt, honoured):
    from fleetrpc.wire import own_answer_target

    topic, props, ok = own_answer_target(
        "fleetrpc/d/dev/ret/1", "fleetrpc/d/dev/ret/", {"response_topic": [rt], "correlation_data": [b"c"]}
    )
    assert ok is honoured
    assert topic == (rt if honoured else "fleetrpc/d/dev/ret/1")
    assert props == {"correlation_data": b"c"}


@pytest.mark.parametrize("topic, expected", [
    ("fleetrpc/d/dev/call/5", ("dev", "5")),
    ("fleetrpc/d/dev/call/x", None),
    ("fleetrpc/d/dev/call/99999999999999999999", None),
    ("fleetrpc/d/dev/res/n/5", None),
    ("fleetrpc/d//call/5", None),
    ("other/d/dev/call/5", None),
])
def test_parse_call_topic(topic, expected):
    from fleetrpc.wire import parse_call_topic

    assert parse_call_topic("fleetrpc", topic) == expected


from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

_levels = st.one_of(st.sampled_from(["dev", "other", "ret", "res", "call", "+", "#", "", "7", "\x00"]), st.text(max_size=6))
_topics = st.lists(_levels, min_size=0, max_size=7).map("/".join)


@hsettings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=500)
@given(st.one_of(_topics, st.builds(lambda t: "fleetrpc/d/" + t, _topics)), st.one_of(st.none(), st.binary(max_size=4)))
def test_answer_target_never_leaves_the_callers_subtree(rt, cd):
    from fleetrpc.wire import own_answer_target, parse_call_topic

    props = {"response_topic": [rt]}
    if cd is not None:
        props["correlation_data"] = [cd]
    topic, out, _ = own_answer_target("fleetrpc/d/dev/ret/1", "fleetrpc/d/dev/ret/", props)
    assert topic.startswith("fleetrpc/d/dev/ret/")
    rest = topic[len("fleetrpc/d/dev/ret/"):]
    assert rest and "/" not in rest and "+" not in rest and "#" not in rest
    parsed = parse_call_topic("fleetrpc", rt)
    if parsed is not None:
        device, cid = parsed
        assert rt == f"fleetrpc/d/{device}/call/{cid}" and int(cid) < 2**63


def _first_error(kind, values):
    for value in values:
        try:
            protocol.validate_id(kind, value)
        except ValidationError as exc:
            return str(exc)
    return None


_ids = st.one_of(
    st.sampled_from(["dev-1", "d" * 128, "d" * 129, "é" * 64, "é" * 65, "a/b", "a+b", "#", "\x00", "", "\ud800",
                     "ok\ud800", 7, None, b"dev"]),
    st.text(max_size=40),
)


@hsettings(deadline=None, max_examples=500)
@given(st.lists(_ids, max_size=8))
def test_validate_ids_is_validate_id_on_each(values):
    """The batch check accepts exactly what validate_id accepts, and names
    the first bad id as validate_id does."""
    expected = _first_error("device", values)
    if expected is None:
        assert protocol.validate_ids("device", values) is None
    else:
        with pytest.raises(ValidationError) as info:
            protocol.validate_ids("device", values)
        assert str(info.value) == expected


def test_validate_ids_checks_a_long_list_of_plain_ids_together():
    ids = [f"dev-{i:06d}" for i in range(10_000)]
    protocol.validate_ids("device", ids)  # no error
    for bad, message in [("x/y", "contains '/'"), ("", "is empty"), ("e" * 129, "129 bytes")]:
        with pytest.raises(ValidationError, match=message):
            protocol.validate_ids("device", ids[:5000] + [bad] + ids[5000:])


# -- check_json_depth: one nesting limit on every Python ----------------------------------


def _depth(value) -> int:
    """How deep ``value`` nests, without recursing (500 levels and the
    test runner's frames would pass Python's recursion limit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((v, depth) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


_tricky_text = st.text(alphabet='[]{}"\\ ab\n', max_size=12)
_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _tricky_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_tricky_text, inner, max_size=4)),
    max_leaves=30,
)


def _wrapped(value, levels: int, wide: int, as_object: bool):
    """``value`` under ``levels`` more lists or objects, each with ``wide``
    shallow siblings (so that the bracket count passes the quick test)."""
    for _ in range(levels):
        siblings = [[{}]] * wide
        value = {"k": value, "s": siblings} if as_object else [*siblings, value]
    return value


@hsettings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_json_values, st.integers(-12, 12), st.integers(0, 3), st.booleans())
def test_check_json_depth_refuses_exactly_what_nests_deeper_than_the_limit(value, offset, wide, as_object):
    """Against the depth of the decoded value, with brackets, quotes and
    backslashes inside strings and keys, near the limit from both sides."""
    levels = max(0, protocol.MAX_JSON_DEPTH - _depth(value) + offset)
    doc = _wrapped(value, levels, wide, as_object)
    data = msgspec.json.encode(doc)
    if _depth(doc) > protocol.MAX_JSON_DEPTH:
        with pytest.raises(protocol.JsonTooDeep, match="nested deeper than 500 levels"):
            protocol.check_json_depth(data)
    else:
        protocol.check_json_depth(data)


def test_check_json_depth_cases():
    limit = protocol.MAX_JSON_DEPTH
    ok = [
        b"[" * limit + b"]" * limit,
        b'{"a":' * limit + b"1" + b"}" * limit,
        b"[" + b"{}," * 100_000 + b"1]",  # wide: many brackets, two levels
        b'["' + b"[" * 2000 + b'"]',  # brackets in a string
        b'["\\"' + b"[" * 2000 + b'"]',  # after an escaped quote, still in the string
        b'{"]]]]]]":' * 3 + b"[" * (limit - 3) + b"]" * (limit - 3) + b"}" * 3,
    ]
    for data in ok:
        protocol.check_json_depth(data)
        protocol.check_json_depth(bytearray(data))
    deep = [
        b"[" * (limit + 1) + b"]" * (limit + 1),
        b"[" * 100_000,  # not even closed
        b'["' + b"]" * 600 + b'",' + b"[" * 600 + b"]" * 600 + b"]",  # closers in a string hide nothing
        b'["\\\\",' + b"[" * 600 + b"]" * 600 + b"]",  # an escaped backslash ends no string
        b"[" + b"[[]," * 600 + b"1" + b"]" * 601,  # a sibling at every level: peels slowly
    ]
    for data in deep:
        with pytest.raises(protocol.JsonTooDeep):
            protocol.check_json_depth(bytearray(data))
    # a RecursionError, as msgspec's own: every `except BAD_JSON` takes it
    assert issubclass(protocol.JsonTooDeep, protocol.BAD_JSON)
