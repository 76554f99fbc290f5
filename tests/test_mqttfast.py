"""The MQTT packet fast path: both variants, same packets, same errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from fleetrpc import _core
from fleetrpc.errors import CodecError

VARIANTS = {"py": (_core.MqttReaderPy, _core.encode_publish_py)}
if _core.MqttReaderC is not None:
    VARIANTS["c"] = (_core.MqttReaderC, _core.encode_publish_c)


@pytest.fixture(params=sorted(VARIANTS))
def fast(request):
    return VARIANTS[request.param]


def _reader(cls, v5=True):
    got = []
    r = cls(lambda t, p, props: got.append(("pub", t, p, props)),
            lambda cmd, body: got.append(("pkt", cmd, body)), v5,
            lambda mid: got.append(("puback", mid)),
            lambda t, p, props: got.append(("props", t, p, props)))
    return r, got


@pytest.mark.parametrize("v5", [True, False])
@pytest.mark.parametrize("qos", [0, 1])
def test_round_trip_byte_by_byte(fast, v5, qos):
    Reader, encode = fast
    pkt = encode("fleetrpc/d/a/res/n/7", b'{"ok":true}', qos, 513, False, v5)
    r, got = _reader(Reader, v5)
    for i in range(len(pkt)):
        r.feed(pkt[i:i + 1])
    assert got == [("pub", "fleetrpc/d/a/res/n/7", b'{"ok":true}', None)]
    assert r.take_acks() == (b"\x40\x02\x02\x01" if qos else b"")
    assert r.take_acks() == b"" and r.buffered == 0


def test_properties_go_to_on_props(fast):
    Reader, encode = fast
    pkt = encode("t", b"x", 1, 1, False, True, "r/t", b"17")
    r, got = _reader(Reader)
    r.feed(pkt)
    assert got == [("props", "t", b"x", b"\x08\x00\x03r/t\x09\x00\x0217")]


def test_puback_and_other_packets(fast):
    Reader, _ = fast
    r, got = _reader(Reader)
    r.feed(b"\x40\x02\x01\x02" + b"\xd0\x00" + b"\x34\x05\x00\x01t\x00\x09")  # PUBACK, PINGRESP, QoS 2 PUBLISH
    assert got == [("puback", 0x0102), ("pkt", 0xD0, b""), ("pkt", 0x34, b"\x00\x01t\x00\x09")]


def test_many_packets_in_one_chunk(fast):
    Reader, encode = fast
    data = b"".join(encode(f"t/{i}", bytes([i]) * i, 1, i + 1, False, False) for i in range(50))
    r, got = _reader(Reader, False)
    assert r.feed(data) == 50
    assert [g[1] for g in got] == [f"t/{i}" for i in range(50)]
    assert len(r.take_acks()) == 200


@pytest.mark.parametrize("bad, message", [
    (b"\x30\xff\xff\xff\xff\x01", "malformed MQTT remaining length"),
    (b"\x36\x03\x00\x01t", "malformed MQTT PUBLISH: QoS 3"),
    (b"\x30\x01\x00", "malformed MQTT PUBLISH: truncated topic length"),
    (b"\x30\x03\x00\x05t", "malformed MQTT PUBLISH: topic longer than the packet"),
    (b"\x30\x04\x00\x02\xff\xfe", "malformed MQTT PUBLISH: topic is not UTF-8"),
    (b"\x32\x04\x00\x01t\x00", "malformed MQTT PUBLISH: truncated packet id"),
    (b"\x30\x03\x00\x01t", "malformed MQTT PUBLISH: truncated properties"),
    (b"\x30\x04\x00\x01t\x05", "malformed MQTT PUBLISH: properties longer than the packet"),
])
def test_malformed_streams(fast, bad, message):
    Reader, _ = fast
    r, _ = _reader(Reader)
    with pytest.raises(CodecError, match=message):
        r.feed(bad)


def test_a_raising_handler_does_not_redeliver(fast):
    Reader, encode = fast
    calls = []

    def on_publish(t, p, props):
        calls.append(t)
        if t == "boom":
            raise RuntimeError("handler bug")

    r = Reader(on_publish, lambda c, b: None, False)
    data = encode("boom", b"", 0, 0, False, False) + encode("next", b"", 0, 0, False, False)
    with pytest.raises(RuntimeError):
        r.feed(data)
    r.feed(b"")
    assert calls == ["boom", "next"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=30), st.binary(max_size=40),
                          st.integers(0, 1), st.integers(1, 65535), st.booleans()), max_size=8),
       st.booleans(), st.lists(st.integers(1, 64), max_size=10), st.binary(max_size=12))
def test_variants_agree(messages, v5, cuts, junk):
    """Same stream, cut anywhere, maybe with garbage: same events, same error."""
    outcomes = []
    for Reader, encode in VARIANTS.values():
        stream = b"".join(encode(t, p, q, m, r, v5) for t, p, q, m, r in messages) + junk
        r, got = _reader(Reader, v5)
        error = None
        pos = 0
        try:
            for c in cuts + [len(stream)]:
                r.feed(stream[pos:pos + c])
                pos += c
        except CodecError as exc:
            error = str(exc)
        outcomes.append((got, r.take_acks(), error))
        if not junk and error is None:
            assert [g[1] for g in got] == [m[0] for m in messages]
    assert all(o == outcomes[0] for o in outcomes)
