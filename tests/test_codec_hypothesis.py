"""Property tests: the compiled and the pure codec agree on every input.

Random topics (made of valid pieces, then mutated, or plain random text) and
random payloads (valid envelopes, random JSON, mutated JSON, random bytes,
bytes-likes and non-bytes) go to both variants; each outcome -- the
Message's fields, or the CodecError's message -- must be the same, and no
other exception may escape.  Also: encoding agrees, and topics built by
:mod:`fleetrpc.wire` decode back to their ids in both variants.
"""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetrpc import _core
from fleetrpc import wire as protocol
from fleetrpc._core.constants import Kind
from fleetrpc.errors import CodecError

CodecC = _core.VARIANTS.get("c", {}).get("Codec")
CodecPy = _core.VARIANTS["py"]["Codec"]

pytestmark = pytest.mark.skipif(CodecC is None, reason="the compiled codec is not built")

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    database=None,  # nothing written into the source tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# (prefix, max_payload) of the codec pairs under test.
CONFIGS = [("fleetrpc", 256 * 1024), ("a/b", 48), ("é", 0)]


def pairs():
    return [(CodecC(p, m), CodecPy(p, m)) for p, m in CONFIGS] if CodecC is not None else []


PAIRS = pairs()


# fleetrpc's own reasons for a payload that does not decode (_core/reasons.py,
# and the Elves checks of the codec); anything else would be a dependency's
# text passed through.
PAYLOAD_REASON = re.compile(
    r"(reply is not valid JSON|invalid [A-Z]+ payload): "
    r"(empty payload|invalid UTF-8 at byte \d+|malformed JSON( at byte \d+)?|nested too deep|number too large"
    r"|\$\S*: (missing|expected [a-z ]+, got [a-z]+|must be one of .+|length must be .+)"
    r"|missing '\w+'|'\w+' must be .+|'\w+' is empty)\Z"
)


def check_reason(text):
    if text.startswith(("reply is not valid JSON:", "invalid ")):
        assert PAYLOAD_REASON.match(text), text


def outcome(codec, topic, payload):
    try:
        m = codec.decode(topic, payload)
    except CodecError as exc:
        assert type(exc) is CodecError
        check_reason(str(exc))
        return ("error", str(exc))
    assert isinstance(m.kind, Kind) and type(m.device) is str and type(m.rid) is int
    if m.error is not None:
        check_reason(m.error)
    return ("ok", m.kind, m.device, m.node, m.rid, m.body, m.error)


def same(topic, payload):
    """Both variants, every configuration: the same outcome."""
    for c, py in PAIRS:
        a = outcome(c, topic, payload)
        b = outcome(py, topic, payload)
        assert a == b, (topic, payload, a, b)
        assert repr(a) == repr(b)


# -- topics ---------------------------------------------------------------------

any_text = st.text(max_size=12)
special = st.sampled_from(["/", "+", "#", "\x00", "é", "\ud800", "\udcff", "🙂", "0", "9", " ", "$"])

id_level = st.one_of(
    st.sampled_from(["dev", "n1", "é", "", "a+b", "#", "a\x00", "x" * 128, "x" * 129, "é" * 64,
                     "é" * 65, "🙂" * 32, "🙂" * 33, "\ud800", "dev-00042"]),
    any_text,
    st.text(alphabet="ab/+#\x00é", max_size=8),
)
num_level = st.one_of(
    st.integers(min_value=-10, max_value=2**64 + 5).map(str),
    st.sampled_from(["", "0", "00", "-0", "+1", "9223372036854775807", "9223372036854775808",
                     "09223372036854775807", "99999999999999999999", "١٢", "²", "1_0", " 1", "1 ",
                     "abc", "1e3", "0x1", "1" * 400]),
    st.text(alphabet="0123456789", min_size=1, max_size=25),
    st.text(alphabet="0123456789-+ a", max_size=6),
)
word = st.one_of(
    st.sampled_from(["req", "res", "ack", "call", "ret", "presence", "hb", "", "RES", "resp",
                     "re", "hbx", "presenc", "calls"]),
    st.text(max_size=6),
)
namespace = st.one_of(st.sampled_from(["d", "d", "d", "elves", "elves", "", "D", "elf", "dd"]), st.text(max_size=4))
prefix_level = st.sampled_from(["fleetrpc", "fleetrpc", "a/b", "é", "a", "fleetrpcx", "", "b"])


@st.composite
def structured_topics(draw):
    levels = [draw(prefix_level), draw(namespace), draw(id_level)]
    if draw(st.booleans()):
        levels.append(draw(word))
    for _ in range(draw(st.integers(0, 4))):
        levels.append(draw(st.one_of(id_level, num_level, word)))
    return "/".join(levels)


@st.composite
def mutated(draw, base):
    s = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["delete", "insert", "truncate", "double", "replace"]))
        i = draw(st.integers(0, len(s)))
        if op == "delete" and s:
            i = min(i, len(s) - 1)
            s = s[:i] + s[i + 1:]
        elif op == "insert":
            s = s[:i] + draw(special) + s[i:]
        elif op == "truncate":
            s = s[:i]
        elif op == "double":
            s = s[:i] + "/" + s[i:]
        elif op == "replace" and s:
            i = min(i, len(s) - 1)
            s = s[:i] + draw(special) + s[i + 1:]
    return s


topics = st.one_of(
    structured_topics(),
    mutated(structured_topics()),
    st.text(max_size=40),
    st.text(alphabet="fleetrpc/dé+#\x000123456789", max_size=40),
)

# -- payloads -------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=10),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)
field_values = st.one_of(st.sampled_from(["call", "back", "online", "offline", "", "m", "heartbeat"]), json_values)
envelopes = st.dictionaries(
    st.sampled_from(["method", "params", "status", "ts", "mqt", "mqs", "mqf", "ip", "x"]),
    field_values,
    max_size=5,
)
FIXED = [
    b"", b"{}", b"[]", b"null", b"1", b'"s"', b'{"ok":true,"v":42}', b'{"method":"m"}',
    b'{"method":"m","params":[1]}', b'{"method":1}', b'{"status":"online","ts":1}', b'{"status":"x"}',
    b'{"mqt":"call","mqs":"s","mqf":"f"}', b'{"mqt":"back","mqs":"s","mqf":"f","info":{}}',
    b'{"mqt":"x","mqs":"s","mqf":"f"}', b'{"mqs":"s","mqf":"f"}', b"\xff", b'"\xff"', b'{"a":"\xc3"}',
    b"{", b"[" * 300, b'{"a":1}x', b" " * 100,
]


@st.composite
def mutated_bytes(draw, base):
    b = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(b)))
        op = draw(st.sampled_from(["flip", "insert", "truncate"]))
        if op == "flip" and b:
            b[min(i, len(b) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=3))
        else:
            del b[i:]
    return bytes(b)


raw_payloads = st.one_of(
    st.sampled_from(FIXED),
    json_values.map(msgspec.json.encode),
    envelopes.map(msgspec.json.encode),
    mutated_bytes(st.one_of(st.sampled_from(FIXED), envelopes.map(msgspec.json.encode))),
    st.binary(max_size=40),
)
payloads = st.one_of(
    raw_payloads,
    raw_payloads.map(bytearray),
    raw_payloads.map(memoryview),
    st.sampled_from([None, "{}", 0, 1.5, [b"{}"], object()]),
)

# Topics that reach the payload checks: every kind, valid levels.
valid_topics = st.sampled_from([
    "fleetrpc/d/dev/res/n1/1", "fleetrpc/d/dev/ack/n1/2", "fleetrpc/d/dev/req/n1/3",
    "fleetrpc/d/dev/call/4", "fleetrpc/d/dev/ret/5", "fleetrpc/d/dev/presence", "fleetrpc/d/dev/hb",
    "fleetrpc/elves/app/call", "fleetrpc/elves/app/back/7",
    "a/b/d/dev/res/n1/1", "a/b/d/dev/call/4", "a/b/d/dev/hb", "a/b/elves/app/call",
    "é/d/dev/res/n1/1", "é/d/dev/ack/n1/1", "é/d/dev/presence",
])


# -- properties -----------------------------------------------------------------


@SETTINGS
@given(topics, raw_payloads)
def test_random_topics_agree(topic, payload):
    same(topic, payload)


@SETTINGS
@given(valid_topics, payloads)
def test_random_payloads_agree(topic, payload):
    same(topic, payload)


class Sub(str):
    """Topics may be str subclasses; their own __str__/__repr__ must not matter."""

    def __str__(self):
        return "wrong"

    def __repr__(self):
        return "wrong"


@SETTINGS
@given(st.one_of(topics, valid_topics, topics.map(Sub), valid_topics.map(Sub)), payloads)
def test_random_messages_agree(topic, payload):
    same(topic, payload)


@settings(SETTINGS, max_examples=100)
@given(st.one_of(st.none(), st.integers(), st.binary(max_size=10), st.lists(st.text(max_size=3), max_size=3)),
       st.one_of(raw_payloads, st.none()))
def test_non_str_topics_agree(topic, payload):
    same(topic, payload)


ENCODE_REASON = re.compile(
    r"(^method must be .*|: (unsupported type \w+ at \$\S*|key of type \w+ at \$\S*"
    r"|lone surrogate in a (string|key) at \$\S*|nested too deep))\Z"
)
unencodable = st.sampled_from([object(), {1j: 1}, {(1,): 2}, b"\xff", type, "\ud800", {"\udcff": 1}])


@settings(SETTINGS, max_examples=200)
@given(st.one_of(st.text(max_size=130), st.sampled_from(["", "m" * 128, "m" * 129, None, 5, b"m", "\ud800"])),
       st.one_of(json_values, unencodable, st.lists(unencodable, max_size=2)))
def test_encode_agrees(method, params):
    results = []
    for codec in (CodecC(), CodecPy()):
        row = []
        for fn, args in ((codec.encode_request, (method, params)), (codec.encode, (params,))):
            try:
                row.append(("ok", fn(*args)))
            except CodecError as exc:
                assert ENCODE_REASON.search(str(exc)), str(exc)
                row.append(("error", str(exc)))
        results.append(row)
    assert results[0] == results[1]


ids = st.text(
    alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=128,
).filter(lambda s: len(s.encode()) <= 128)
rids = st.integers(min_value=0, max_value=2**63 - 1)


@settings(SETTINGS, max_examples=200)
@given(ids, ids, rids, st.sampled_from(["fleetrpc", "a/b", "é"]))
def test_built_topics_decode_back(device, node, rid, prefix):
    assert protocol.validate_id("device", device) == device
    for codec in (CodecC(prefix), CodecPy(prefix)):
        for build, kind, payload in [
            (protocol.request_topic, Kind.REQUEST, b'{"method":"m"}'),
            (protocol.reply_topic, Kind.REPLY, b"{}"),
            (protocol.ack_topic, Kind.ACK, b""),
        ]:
            m = codec.decode(build(prefix, device, node, rid), payload)
            assert (m.kind, m.device, m.node, m.rid) == (kind, device, node, rid)
        for build, kind in [(protocol.call_topic, Kind.CALL), (protocol.return_topic, Kind.RETURN)]:
            m = codec.decode(build(prefix, device, rid), b'{"method":"m"}')
            assert (m.kind, m.device, m.node, m.rid) == (kind, device, None, rid)
        m = codec.decode(protocol.presence_topic(prefix, device), b'{"status":"online"}')
        assert (m.kind, m.device) == (Kind.PRESENCE, device)
        m = codec.decode(protocol.heartbeat_topic(prefix, device), b"{}")
        assert (m.kind, m.device) == (Kind.HEARTBEAT, device)
        m = codec.decode(protocol.elves_topic(prefix, device, "back", rid), b'{"mqt":"back","mqs":"s","mqf":"f"}')
        assert (m.kind, m.device, m.node) == (Kind.ELVES, device, f"back/{rid}")
