"""Envelope codec benchmarks: compiled vs pure twin vs ``topic.split('/')``
+ ``json.loads``, in one pytest-benchmark run.

Each timed call decodes ``CALLS`` different messages (1000 devices, growing
request ids) with bound methods looked up once, so the per-message figure
is the benchmark's mean divided by ``CALLS``.  ``loop_only`` times the bare
loop over the same list, to show how much of each figure is the loop.

Run (from the repository root; see docs/bench/codec.md)::

    python -m pytest benchmarks/bench_codec.py -p no:cacheprovider \\
        --benchmark-json=/tmp/bench_codec.json
    python benchmarks/bench_codec.py /tmp/bench_codec.json   # ratios table
"""

from __future__ import annotations

import json
import sys

import pytest

CALLS = 1000
PREFIX = "fleetrpc"
REPLY_PAYLOAD = b'{"ok":true,"v":42}'


def _variants():
    from fleetrpc import _core

    out = {"py": _core.VARIANTS["py"]["Codec"]}
    codec_c = _core.VARIANTS.get("c", {}).get("Codec")
    if codec_c is not None:
        out["c"] = codec_c
    return out


def messages(kind: str) -> list[tuple[str, bytes]]:
    devices = [f"dev-{i:05d}" for i in range(CALLS)]
    rids = range(123456, 123456 + CALLS)
    if kind == "reply":
        return [(f"{PREFIX}/d/{d}/res/n1/{r}", REPLY_PAYLOAD) for d, r in zip(devices, rids)]
    if kind == "ack":
        return [(f"{PREFIX}/d/{d}/ack/n1/{r}", b"") for d, r in zip(devices, rids)]
    if kind == "call":
        return [(f"{PREFIX}/d/{d}/call/{r}", b'{"method":"getTime","params":{}}') for d, r in zip(devices, rids)]
    if kind == "presence":
        return [(f"{PREFIX}/d/{d}/presence", b'{"status":"online","ts":1700000000000}') for d in devices]
    raise ValueError(kind)


def split_json_decode(topic, payload, loads=json.loads):
    """The baseline: what a plain-Python receiver does for a reply."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != PREFIX or parts[1] != "d" or parts[3] != "res":
        raise ValueError(f"not a reply topic: {topic!r}")
    return parts[2], parts[4], int(parts[5]), loads(payload)


VARIANTS = _variants() if __name__ != "__main__" else {}  # the summary needs no codec
VARIANT_NAMES = sorted(VARIANTS)


def _run_decode(benchmark, decode, msgs):
    def body():
        for topic, payload in msgs:
            decode(topic, payload)

    benchmark.extra_info["calls"] = len(msgs)
    benchmark(body)


# -- the target: a reply ---------------------------------------------------------


@pytest.mark.benchmark(group="reply")
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_reply(benchmark, variant):
    msgs = messages("reply")
    decode = VARIANTS[variant]().decode
    m = decode(*msgs[0])
    assert (m.device, m.node, m.rid, m.body) == ("dev-00000", "n1", 123456, {"ok": True, "v": 42})
    _run_decode(benchmark, decode, msgs)


@pytest.mark.benchmark(group="reply")
def test_reply_split_json(benchmark):
    msgs = messages("reply")
    assert split_json_decode(*msgs[0]) == ("dev-00000", "n1", 123456, {"ok": True, "v": 42})
    _run_decode(benchmark, split_json_decode, msgs)


@pytest.mark.benchmark(group="reply")
def test_reply_loop_only(benchmark):
    msgs = messages("reply")

    def body():
        for topic, payload in msgs:
            pass

    benchmark.extra_info["calls"] = len(msgs)
    benchmark(body)


# -- other kinds, compiled vs pure -------------------------------------------------


@pytest.mark.benchmark(group="other kinds")
@pytest.mark.parametrize("kind", ["ack", "call", "presence"])
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_decode_kind(benchmark, variant, kind):
    _run_decode(benchmark, VARIANTS[variant]().decode, messages(kind))


@pytest.mark.benchmark(group="encode_request")
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_encode_request(benchmark, variant):
    encode = VARIANTS[variant]().encode_request
    params = [{"pin": i, "enabled": True} for i in range(CALLS)]

    def body():
        for p in params:
            encode("setGpio", p)

    benchmark.extra_info["calls"] = CALLS
    benchmark(body)


# -- summary ------------------------------------------------------------------------


def summarize(path: str) -> str:
    """A Markdown table of a --benchmark-json file: ns per message (min and
    median of the rounds), messages per second, and speed-ups: against the
    split+json.loads baseline (reply group) and against the pure twin.

    On a shared, noisy machine the min is the figure least disturbed by
    other processes; the median is shown too."""
    with open(path) as f:
        data = json.load(f)
    rows = []
    for b in data["benchmarks"]:
        calls = b["extra_info"].get("calls", 1)
        rows.append((b["group"], b["name"], b["stats"]["min"] / calls, b["stats"]["median"] / calls))
    by_name = {name: (best, med) for _, name, best, med in rows}

    def ratio(base: str, name: str) -> str:
        if base not in by_name or base == name:
            return ""
        (b_min, b_med), (n_min, n_med) = by_name[base], by_name[name]
        return f"{b_min / n_min:.1f}x / {b_med / n_med:.1f}x"

    lines = [
        (
            "| benchmark | min ns/msg | median ns/msg | msgs/s (min / median) "
            "| vs split+json.loads (min / median) | vs pure twin (min / median) |"
        ),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for group, name, best, med in rows:
        vs_split = ratio("test_reply_split_json", name) if group == "reply" and "loop" not in name else ""
        vs_pure = ratio(name.replace("[c", "[py"), name) if "[c" in name else ""
        lines.append(
            f"| {name} | {best * 1e9:.0f} | {med * 1e9:.0f} | {1 / best / 1e6:.2f} M / {1 / med / 1e6:.2f} M "
            f"| {vs_split} | {vs_pure} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1]))
