"""DeviceQueues benchmarks: compiled vs pure twin vs the plain way (a dict of
``collections.deque`` and a dict of in-flight counters), in one
pytest-benchmark run.

Time (1000 devices, bound methods looked up once, many calls per timed body):

- ``cycle``: every device gets one call and its end -- ``submit`` then
  ``on_end(acked=False)`` -- the common case of an idle device: state is
  created and dropped again each time.  2 calls per device.
- ``queued``: every device gets 4 calls at once (so that 3 are held under the
  sequential strategies, 2 under BURST with window 2), then 4 times
  ``on_ack`` + ``on_end(acked=True)``, which release the held ones.  12 calls
  per device.

Memory (tracemalloc, every byte the Python allocators hand out, PyMem arrays
of the compiled variant included; device ids and items are created before
measuring, as the caller owns them):

- ``idle``: 10,000 devices that each finished a call, 100 of them (1%) with a
  call in flight now.
- ``held``: 10,000 devices with one call in flight and 10 held each
  (SEQUENTIAL_ON_RESPONSE).
- ``held_fresh``: the same with items made on the fly and not kept by the
  caller: the deques then keep one int object alive per held item, the
  compiled ring buffer keeps none.

Run (from the repository root; see docs/bench/queues.md)::

    python -m pytest benchmarks/bench_queues.py -p no:cacheprovider \\
        --benchmark-json=/tmp/bench_queues.json
    python benchmarks/bench_queues.py /tmp/bench_queues.json   # the tables
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tracemalloc
from collections import defaultdict, deque

import pytest

BURST, ON_ACK, ON_RESPONSE = 0, 1, 2
STRATEGY_NAMES = {BURST: "burst", ON_ACK: "on_ack", ON_RESPONSE: "on_response"}
DEVICES = [f"dev-{i:05d}" for i in range(1000)]
PER_DEVICE = 4  # calls per device in the queued scenario
ITEM_BASE = 10**9  # request-id-like ints, beyond the small-int cache


class PlainQueues:
    """The plain way: a dict of deques and a dict of slots in use, dropping
    both entries when a device is idle again.  No argument checks, no
    presence, no per-device configuration: a lower bound on what the same
    behaviour costs in plain Python."""

    def __init__(self, strategy=BURST, cap=100, window=0):
        self.strategy = strategy
        self.cap = cap
        self.slots = (window or sys.maxsize) if strategy == BURST else 1
        self.queues: dict[str, deque[int]] = {}  # only non-empty deques
        self.busy: dict[str, int] = {}  # slots in use

    def submit(self, device, item):
        queue = self.queues.get(device)
        if queue is None:
            used = self.busy.get(device, 0)
            if used < self.slots:
                self.busy[device] = used + 1
                return True
            queue = self.queues[device] = deque()
        if len(queue) >= self.cap:
            raise OverflowError(f"queue of device {device!r} is full ({self.cap} calls)")
        queue.append(item)
        return False

    def _free(self, device):
        queue = self.queues.get(device)
        if queue is not None:  # the slot passes on to the next held item
            item = queue.popleft()
            if not queue:
                del self.queues[device]
            return item
        used = self.busy[device] - 1
        if used:
            self.busy[device] = used
        else:
            del self.busy[device]
        return None

    def on_ack(self, device):
        return self._free(device) if self.strategy == ON_ACK else None

    def on_end(self, device, acked):
        if self.strategy == ON_ACK and acked:
            return None
        return self._free(device)

    def __len__(self):
        return len(self.busy.keys() | self.queues.keys())


class NaiveQueues(PlainQueues):
    """The plain way without the clean-up (``defaultdict(deque)`` and
    counters that stay at 0): for the memory comparison only."""

    def __init__(self, strategy=BURST, cap=100, window=0):
        super().__init__(strategy, cap, window)
        self.queues = defaultdict(deque)
        self.busy = defaultdict(int)

    def submit(self, device, item):
        queue = self.queues[device]
        if not queue and self.busy[device] < self.slots:
            self.busy[device] += 1
            return True
        if len(queue) >= self.cap:
            raise OverflowError(f"queue of device {device!r} is full ({self.cap} calls)")
        queue.append(item)
        return False

    def _free(self, device):
        queue = self.queues[device]
        if queue:
            return queue.popleft()
        self.busy[device] -= 1
        return None


def _variants():
    from fleetrpc import _core

    out = {"py": _core.VARIANTS["py"]["DeviceQueues"], "plain": PlainQueues}
    compiled = _core.VARIANTS.get("c", {}).get("DeviceQueues")
    if compiled is not None:
        out["c"] = compiled
    return out


VARIANTS = _variants() if __name__ != "__main__" else {}  # the summary needs none
VARIANT_NAMES = sorted(VARIANTS)


def make(variant, strategy, window=0):
    return VARIANTS[variant](strategy, 100, window)


# -- time ---------------------------------------------------------------------------


@pytest.mark.benchmark(group="cycle")
@pytest.mark.parametrize("strategy", [BURST, ON_ACK, ON_RESPONSE], ids=STRATEGY_NAMES.get)
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_cycle(benchmark, variant, strategy):
    q = make(variant, strategy)
    pairs = [(d, ITEM_BASE + n) for n, d in enumerate(DEVICES)]
    submit, on_end = q.submit, q.on_end

    def body():
        for device, item in pairs:
            submit(device, item)
            on_end(device, False)

    assert submit("x", 1) is True and on_end("x", False) is None
    body()
    assert len(q) == 0
    benchmark.extra_info["calls"] = 2 * len(pairs)
    benchmark(body)


@pytest.mark.benchmark(group="cycle")
def test_cycle_loop_only(benchmark):
    """The bare loop of test_cycle, per call: part of every cycle figure."""
    pairs = [(d, ITEM_BASE + n) for n, d in enumerate(DEVICES)]

    def body():
        for device, item in pairs:
            pass

    benchmark.extra_info["calls"] = 2 * len(pairs)
    benchmark(body)


@pytest.mark.benchmark(group="queued")
@pytest.mark.parametrize("strategy", [BURST, ON_ACK, ON_RESPONSE], ids=STRATEGY_NAMES.get)
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_queued(benchmark, variant, strategy):
    q = make(variant, strategy, window=2)  # the window matters for BURST only
    batches = [
        [(d, ITEM_BASE + k * len(DEVICES) + n) for n, d in enumerate(DEVICES)]
        for k in range(PER_DEVICE)
    ]
    submit, on_ack, on_end = q.submit, q.on_ack, q.on_end

    def body():
        for batch in batches:
            for device, item in batch:
                submit(device, item)
        for _ in range(PER_DEVICE):
            for device in DEVICES:
                on_ack(device)
                on_end(device, True)

    sent = [submit("x", i) for i in range(PER_DEVICE)]
    released = [r for _ in range(PER_DEVICE) for r in (on_ack("x"), on_end("x", True))]
    released = [r for r in released if r is not None]
    assert sent.count(True) + len(released) == PER_DEVICE and released == sorted(released)
    body()
    assert len(q) == 0
    benchmark.extra_info["calls"] = 3 * PER_DEVICE * len(DEVICES)
    benchmark(body)


# -- memory -------------------------------------------------------------------------

MEMORY_DEVICES = 10_000
MEMORY_SCENARIOS = ["idle", "held", "held_fresh"]


def _with_counts(q):
    """Give the plain queues the two queries the memory case checks with."""
    q.held = lambda d: len(q.queues.get(d, ()))
    q.inflight = lambda d: q.busy.get(d, 0)
    return q


def memory_case(variant: str, scenario: str) -> dict[str, float]:
    """Bytes the queues of ``variant`` keep for ``scenario`` (tracemalloc)."""
    classes = {**_variants(), "naive": NaiveQueues}

    def factory(strategy):
        q = classes[variant](strategy)
        return _with_counts(q) if variant in ("plain", "naive") else q

    devices = [f"dev-{i:05d}" for i in range(MEMORY_DEVICES)]
    items = list(range(ITEM_BASE, ITEM_BASE + 11 * MEMORY_DEVICES))

    def idle():
        q = factory(BURST)
        for d, item in zip(devices, items):
            q.submit(d, item)
            q.on_end(d, False)
        for d, item in zip(devices[::100], items):  # 1% busy now
            q.submit(d, item)
        assert q.inflight(devices[0]) == 1 and q.inflight(devices[1]) == 0
        return q

    def held(fresh=False):
        q = factory(ON_RESPONSE)
        k = 0
        for d in devices:
            for _ in range(11):  # 1 sent, 10 held
                q.submit(d, ITEM_BASE + k if fresh else items[k])
                k += 1
        assert q.inflight(devices[0]) == 1 and q.held(devices[0]) == 10
        return q

    build = {"idle": idle, "held": held, "held_fresh": lambda: held(fresh=True)}[scenario]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = build()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del keep
    return {"bytes": used, "devices": MEMORY_DEVICES}


@pytest.mark.benchmark(group="memory")
@pytest.mark.parametrize("scenario", MEMORY_SCENARIOS)
@pytest.mark.parametrize("variant", VARIANT_NAMES + ["naive"])
def test_memory(benchmark, variant, scenario):
    """Each case runs in a fresh interpreter, so that no free list (the
    compiled variant's, CPython's own for dicts and deques) filled by an
    earlier benchmark hides allocations.  The recorded time is that of the
    subprocess and means nothing."""

    def run():
        proc = subprocess.run(
            [sys.executable, __file__, "--memory", variant, scenario],
            capture_output=True, text=True, check=True,
        )
        return json.loads(proc.stdout)

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result)


# -- summary ------------------------------------------------------------------------


def summarize(path: str) -> str:
    """Markdown tables of a --benchmark-json file: ns per call (min and
    median of the rounds) with the speed-up of the compiled variant over the
    pure twin and over the plain way, and the memory figures."""
    with open(path) as f:
        data = json.load(f)
    time_rows = []
    memory = {}
    for b in data["benchmarks"]:
        extra = b["extra_info"]
        if b["group"] == "memory":
            memory[(b["params"]["scenario"], b["params"]["variant"])] = extra["bytes"] / extra["devices"]
            continue
        calls = extra["calls"]
        time_rows.append((b["name"], b["stats"]["min"] / calls, b["stats"]["median"] / calls))
    by_name = {name: (best, med) for name, best, med in time_rows}

    def ratio(base: str, name: str) -> str:
        if base not in by_name:
            return ""
        (b_min, b_med), (n_min, n_med) = by_name[base], by_name[name]
        return f"{b_min / n_min:.1f}x / {b_med / n_med:.1f}x"

    lines = [
        (
            "| benchmark | min ns/call | median ns/call | c vs py (min / median) "
            "| c vs plain (min / median) | py vs plain (min / median) |"
        ),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, best, med in time_rows:
        vs = ["", "", ""]
        if "[c-" in name:
            vs[0] = ratio(name.replace("[c-", "[py-"), name)
            vs[1] = ratio(name.replace("[c-", "[plain-"), name)
        if "[py-" in name:
            vs[2] = ratio(name.replace("[py-", "[plain-"), name)
        lines.append(f"| {name} | {best * 1e9:.0f} | {med * 1e9:.0f} | " + " | ".join(vs) + " |")
    lines += [
        "",
        "| memory, 10,000 devices | c | py | plain | naive plain | py / c | plain / c |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, title in (
        ("idle", "mostly idle (1% busy)"),
        ("held", "10 held + 1 in flight each"),
        ("held_fresh", "the same, items not kept by the caller"),
    ):
        row = {v: memory.get((scenario, v)) for v in ("c", "py", "plain", "naive")}
        cells = [f"{row[v]:.1f} B/device" if row[v] is not None else "" for v in row]
        ratios = [
            f"{row[v] / row['c']:.1f}x" if row[v] is not None and row["c"] else ""
            for v in ("py", "plain")
        ]
        lines.append(f"| {title} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--memory":  # one memory case, for test_memory
        print(json.dumps(memory_case(sys.argv[2], sys.argv[3])))
    else:
        print(summarize(sys.argv[1]))
