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


@pytest.mark.parametrize("which", ["response_topic", "correlation_data"])
def test_properties_over_two_bytes_of_length_are_refused(fast, which):
    # A two-byte length prefix cannot say 65,536: the compiled encoder once
    # wrote the low 16 bits and a property the reader would misframe.
    Reader, encode = fast
    kwargs = {"response_topic": "r" * 65535, "correlation_data": b"c" * 65535}
    pkt = encode("t", b"x", 1, 1, False, True, **{which: kwargs[which]})
    r, got = _reader(Reader)
    r.feed(pkt)
    assert len(got) == 1 and got[0][0] == "props"
    too_long = {"response_topic": "r" * 65536, "correlation_data": b"c" * 65536}[which]
    with pytest.raises(CodecError, match="longer than 65535 bytes"):
        encode("t", b"x", 1, 1, False, True, **{which: too_long})


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


def _failing_reader(cls, v5=True, fail=("boom",)):
    """A reader whose every handler raises on the topics (or mids/cmds) in ``fail``."""
    got = []

    def record(*event):
        got.append(event)
        if event[1] in fail:
            raise RuntimeError(f"handler bug on {event[1]!r}")

    r = cls(lambda t, p, props: record("pub", t, p, props),
            lambda cmd, body: record("pkt", cmd, body), v5,
            lambda mid: record("puback", mid),
            lambda t, p, props: record("props", t, p, props))
    return r, got


def test_a_raising_handler_does_not_stop_the_stream(fast, caplog):
    Reader, encode = fast
    r, got = _failing_reader(Reader, True, fail=("boom", 7, 0xD0))
    data = (encode("boom", b"1", 1, 5, False, True) + encode("next", b"2", 0, 0, False, True)
            + b"\x40\x02\x00\x07" + b"\xd0\x00"  # a PUBACK and a PINGRESP whose handlers raise
            + encode("boom", b"3", 0, 0, False, True, "r/t") + encode("last", b"4", 1, 6, False, True))
    with caplog.at_level("ERROR", logger="fleetrpc.transport"):
        assert r.feed(data) == 6  # no exception: everything parsed in this one call
    assert [e[:2] for e in got] == [("pub", "boom"), ("pub", "next"), ("puback", 7), ("pkt", 0xD0),
                                   ("props", "boom"), ("pub", "last")]
    assert r.handler_errors == 4
    assert r.take_acks() == b"\x40\x02\x00\x05\x40\x02\x00\x06"  # a failed handler's message is still acked
    failures = [rec for rec in caplog.records if "handler failed" in rec.getMessage()]
    assert len(failures) == 4 and all(rec.exc_info[0] is RuntimeError for rec in failures)
    r.feed(b"")
    assert len(got) == 6  # nothing delivered twice
    assert r.buffered == 0


def test_a_raising_handler_in_the_middle_of_a_partial_stream(fast):
    Reader, encode = fast
    r, got = _failing_reader(Reader, False)
    stream = b"".join(encode(t, b"x" * 50, 0, 0, False, False) for t in ["a", "boom", "b", "boom", "c"])
    for k in range(0, len(stream), 7):
        r.feed(stream[k:k + 7])
    assert [e[1] for e in got] == ["a", "boom", "b", "boom", "c"]
    assert r.handler_errors == 2 and r.buffered == 0


def test_a_handler_that_feeds_again_is_refused(fast, caplog):
    Reader, encode = fast
    holder = []
    r = Reader(lambda t, p, props: holder[0].feed(b"\x30"), lambda c, b: None, False)
    holder.append(r)
    with caplog.at_level("ERROR", logger="fleetrpc.transport"):
        r.feed(encode("t", b"", 0, 0, False, False))
    assert r.handler_errors == 1
    assert "not re-entrant" in caplog.records[-1].exc_text
    r.feed(encode("u", b"", 0, 0, False, False))  # the reader still works


def test_big_streams_in_uneven_chunks(fast):
    """Packets spanning reads, a consumed prefix past the compaction size,
    leftovers of every length: every packet once, in order."""
    Reader, encode = fast
    sizes = [0, 1, 1000, 70_000, 5, 200_000, 3, 65_536, 2]
    packets = [encode(f"t/{i}", bytes([i]) * n, i % 2, i + 1, False, True) for i, n in enumerate(sizes * 3)]
    stream = b"".join(packets)
    for chunk in (1, 4093, 65_536, 131_071, len(stream)):
        r, got = _reader(Reader)
        if chunk == 1:
            stream_part = b"".join(packets[:3])  # byte by byte: only the small ones
        else:
            stream_part = stream
        for k in range(0, len(stream_part), chunk):
            r.feed(memoryview(stream_part)[k:k + chunk])
        expected = [(f"t/{i}", bytes([i]) * n) for i, n in enumerate(sizes * 3)][:len(got)]
        assert [(g[1], g[2]) for g in got] == expected
        assert len(got) == (3 if chunk == 1 else len(packets))
        assert r.buffered == 0


def test_partial_reads_keep_one_buffer():
    """White box (pure twin; the compiled one does the same in C): a partial
    packet is kept in one bytearray that later reads extend, read from an
    offset; the bytes already buffered are not copied again on every read."""
    Reader, encode = VARIANTS["py"]
    r, got = _reader(Reader, False)
    pkt = encode("t", b"p" * 300_000, 0, 0, False, False)
    small = encode("s", b"", 0, 0, False, False)
    r.feed(small + pkt[:1000])
    buffer = r._buf
    assert r._pos == 0 and len(buffer) == 1000
    for k in range(1000, len(pkt), 50_000):
        r.feed(pkt[k:k + 50_000])
        assert r._buf is buffer
    assert [g[1] for g in got] == ["s", "t"] and r.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.just("boom"), st.text(min_size=1, max_size=30)), st.binary(max_size=40),
                          st.integers(0, 1), st.integers(1, 65535), st.booleans()), max_size=8),
       st.booleans(), st.lists(st.integers(1, 64), max_size=10), st.binary(max_size=12))
def test_variants_agree(messages, v5, cuts, junk):
    """Same stream, cut anywhere, maybe with garbage, handlers failing on
    "boom": same events, same handler errors, same error."""
    outcomes = []
    for Reader, encode in VARIANTS.values():
        stream = b"".join(encode(t, p, q, m, r, v5) for t, p, q, m, r in messages) + junk
        r, got = _failing_reader(Reader, v5)
        error = None
        pos = 0
        try:
            for c in cuts + [len(stream)]:
                r.feed(stream[pos:pos + c])
                pos += c
        except CodecError as exc:
            error = str(exc)
        outcomes.append((got, r.take_acks(), error, r.handler_errors))
        if not junk and error is None:
            assert [g[1] for g in got] == [m[0] for m in messages]
            assert r.handler_errors == [m[0] for m in messages].count("boom")
    assert all(o == outcomes[0] for o in outcomes)
