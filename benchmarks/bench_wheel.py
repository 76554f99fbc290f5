"""Timing wheel vs. loop.call_later: schedule, cancel, advance.

Run (not part of the default test run)::

    PYTHONPATH=src python -m pytest benchmarks/bench_wheel.py benchmarks/bench_pending.py \\
        -o python_files='bench_*.py' -p no:cacheprovider -q --benchmark-json=/tmp/timers.json
    python benchmarks/bench_wheel.py /tmp/timers.json      # per-op table and ratios

Every timed body runs ``N`` operations with bound methods looked up once, so
a figure is per operation, the loop overhead included for every contender.
Compare ratios from one run, never absolute times (the machine is shared).
The ``asyncio``/``uvloop`` rows use ``loop.call_later`` + ``TimerHandle.cancel``;
between rounds the loop runs once, so asyncio purges its cancelled handles as
a live loop would.
"""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from fleetrpc import _core

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
    uvloop = None

N = 10_000
ROUNDS = 30

WHEELS = {name: v["TimingWheel"] for name, v in _core.VARIANTS.items() if "TimingWheel" in v}
LOOPS = ["asyncio"] + (["uvloop"] if uvloop else [])
DEADLINES = [1.0 + (i % 1000) * 0.013 for i in range(N)]  # 1-14 s: levels 0 and 1


def noop(*args):
    pass


def new_loop(name):
    return uvloop.new_event_loop() if name == "uvloop" else asyncio.new_event_loop()


def settle(loop):
    # One loop iteration: asyncio drops cancelled TimerHandles from its heap here.
    loop.run_until_complete(asyncio.sleep(0))


@pytest.fixture(params=LOOPS)
def loop(request):
    lp = new_loop(request.param)
    lp.name = request.param
    yield lp
    lp.close()


def run(benchmark, body, setup=None, group=None, label=None):
    benchmark.group = group
    benchmark.extra_info["ops"] = N
    benchmark.extra_info["label"] = label
    benchmark.pedantic(body, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=2)


# -- schedule + cancel ---------------------------------------------------------------------


@pytest.mark.parametrize("impl", sorted(WHEELS))
def test_schedule_cancel(benchmark, impl):
    w = WHEELS[impl](0.005)
    schedule, cancel = w.schedule, w.cancel

    def body():
        for d in DEADLINES:
            cancel(schedule(d, 7))

    run(benchmark, body, group="wheel: schedule+cancel", label=f"TimingWheel {impl}")


def test_schedule_cancel_call_later(benchmark, loop):
    call_later = loop.call_later

    def body():
        for d in DEADLINES:
            call_later(d, noop).cancel()

    run(benchmark, body, lambda: settle(loop), "wheel: schedule+cancel",
        f"{loop.name} call_later+cancel")


# -- schedule + cancel with 100,000 timers pending -------------------------------------------------

BACKLOG = 100_000  # pending timers, 10-1000 s out, while the timed body runs


@pytest.mark.parametrize("impl", sorted(WHEELS))
def test_schedule_cancel_backlog(benchmark, impl):
    w = WHEELS[impl](0.005)
    for i in range(BACKLOG):
        w.schedule(10.0 + i * 0.0099, i)
    schedule, cancel = w.schedule, w.cancel

    def body():
        for d in DEADLINES:
            cancel(schedule(d, 7))

    run(benchmark, body, group="wheel: schedule+cancel, 100k pending", label=f"TimingWheel {impl}")


def test_schedule_cancel_backlog_call_later(benchmark, loop):
    backlog = [loop.call_later(10.0 + i * 0.0099, noop) for i in range(BACKLOG)]
    call_later = loop.call_later

    def body():
        for d in DEADLINES:
            call_later(d, noop).cancel()

    run(benchmark, body, lambda: settle(loop), "wheel: schedule+cancel, 100k pending",
        f"{loop.name} call_later+cancel")
    for h in backlog:
        h.cancel()


# -- schedule alone, cancel alone -------------------------------------------------------------


@pytest.mark.parametrize("impl", sorted(WHEELS))
def test_schedule(benchmark, impl):
    w = WHEELS[impl](0.005)
    schedule = w.schedule

    def body():
        for d in DEADLINES:
            schedule(d, 7)

    run(benchmark, body, w.clear, "wheel: schedule", f"TimingWheel {impl}")


def test_schedule_call_later(benchmark, loop):
    call_later = loop.call_later
    handles = []

    def setup():
        for h in handles:
            h.cancel()
        handles.clear()
        settle(loop)

    def body():
        append = handles.append
        for d in DEADLINES:
            append(call_later(d, noop))

    run(benchmark, body, setup, "wheel: schedule", f"{loop.name} call_later")


@pytest.mark.parametrize("impl", sorted(WHEELS))
def test_cancel(benchmark, impl):
    w = WHEELS[impl](0.005)
    cancel = w.cancel
    handles = []

    def setup():
        handles[:] = [w.schedule(d, 7) for d in DEADLINES]

    def body():
        for h in handles:
            cancel(h)

    run(benchmark, body, setup, "wheel: cancel", f"TimingWheel {impl}")


def test_cancel_call_later(benchmark, loop):
    handles = []

    def setup():
        settle(loop)
        handles[:] = [loop.call_later(d, noop) for d in DEADLINES]

    def body():
        for h in handles:
            h.cancel()

    run(benchmark, body, setup, "wheel: cancel", f"{loop.name} TimerHandle.cancel")


# -- advance with many due ---------------------------------------------------------------------


@pytest.mark.parametrize("impl", sorted(WHEELS))
def test_advance_many_due(benchmark, impl):
    """N entries spread over 200 ticks (1 s) all fire; each payload is dispatched."""
    w = WHEELS[impl](0.005)
    advance = w.advance
    target = []

    def setup():
        t = w.now
        for i in range(N):
            w.schedule(t + 0.001 + (i % 200) * 0.005, i)
        target[:] = [t + 1.5]

    def body():
        for p in advance(target[0]):
            noop(p)

    run(benchmark, body, setup, "wheel: advance, N due", f"TimingWheel {impl}")


def test_advance_many_due_loop(benchmark, loop):
    """N timers already due: one loop iteration pops and runs them all."""

    def setup():
        now = loop.time()
        for i in range(N):
            loop.call_at(now - 1.0 + (i % 200) * 0.005, noop, i)

    def body():
        settle(loop)

    run(benchmark, body, setup, "wheel: advance, N due", f"{loop.name} loop iteration")


# -- summary ---------------------------------------------------------------------------------------


def summarize(path: str) -> str:
    """Markdown table: ns per operation (median of rounds) and ratio to the compiled core."""
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, list[tuple[str, float, float]]] = {}
    for b in data["benchmarks"]:
        ops = b["extra_info"]["ops"]
        stats = b["stats"]
        groups.setdefault(b["group"], []).append(
            (b["extra_info"]["label"], stats["median"] / ops * 1e9, stats["min"] / ops * 1e9)
        )
    lines = [
        (
            "| operation | contender | median ns/op | min ns/op | x compiled (median) "
            "| x compiled (min) |"
        ),
        "|---|---|---:|---:|---:|---:|",
    ]
    for group, rows in groups.items():
        ref = [r for r in rows if r[0].endswith(" c")]
        base, base_min = (ref[0][1], ref[0][2]) if ref else (rows[0][1], rows[0][2])
        for label, med, mn in sorted(rows, key=lambda r: r[1]):
            lines.append(f"| {group} | {label} | {med:,.0f} | {mn:,.0f} | {med / base:.1f} "
                         f"| {mn / base_min:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1]))
