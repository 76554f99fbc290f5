"""The agent against what a scheduler (or an app) can make it do: output
without end or with a million tags, runs without a timeout, more runs than
it has workers for.  Each must end in a clear result, in bounded memory,
without stalling the agent's event loop."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fleetrpc.agent import apps
from fleetrpc.agent.apps import parse_output, run_app

WORKER = textwrap.dedent(
    """\
    import base64, json, os, sys, time
    app, func, b64 = sys.argv[1], sys.argv[2], sys.argv[3]
    param = base64.b64decode(b64).decode()
    out = sys.stdout.buffer
    if func == "flood":          # output without end
        chunk = b"x" * 65536
        while True:
            out.write(chunk)
    elif func == "flood_err":    # the same on stderr
        chunk = b"x" * 65536
        while True:
            sys.stderr.buffer.write(chunk)
    elif func == "big":          # a result of n bytes
        n = int(param)
        out.write(b"<ElvesWFlag>true</ElvesWFlag><ElvesWResult>" + b"r" * n + b"</ElvesWResult>")
    elif func == "sleep":
        time.sleep(float(param))
        out.write(b"<ElvesWFlag>true</ElvesWFlag><ElvesWResult>slept</ElvesWResult>")
    """
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "apps" / "ops"
    folder.mkdir(parents=True)
    (folder / "worker.py").write_text(WORKER)
    return tmp_path


PROXY = f"{sys.executable}|worker.py"


def test_parse_output_is_linear_in_unclosed_tags():
    # An opening tag repeated without its closing tag made the lazy regex
    # scan to the end from every one of them: 240 KB took 20 s.
    for stdout in (b"<ElvesWFlag>" * 200_000,
                   b"<ElvesWFlag>true</ElvesWFlag>" + b"<ElvesWResult>" * 200_000):
        started = time.perf_counter()
        flag, result = parse_output(stdout)
        assert time.perf_counter() - started < 0.5
        assert flag == -1 and len(result) < 5000


def test_parse_output_keeps_its_answers():
    assert parse_output(b"a<ElvesWFlag> TRUE </ElvesWFlag>b<ElvesWResult>r\ns</ElvesWResult>") == (1, "r\ns")
    assert parse_output(b"<ElvesWResult>x</ElvesWResult><ElvesWFlag>no</ElvesWFlag>") == (0, "x")
    assert parse_output(b"<ElvesWFlag>true</ElvesWFlag><ElvesWResult></ElvesWResult>") == (1, "")
    assert parse_output(b"<ElvesWFlag>x<ElvesWFlag>true</ElvesWFlag><ElvesWResult>r</ElvesWResult>") == (0, "r")
    assert parse_output(b"<ElvesWFlag>true</ElvesWFlag>")[0] == -1
    assert parse_output(b"hello")[0] == -1


@pytest.mark.parametrize("func", ["flood", "flood_err"])
async def test_output_without_end_is_cut_and_the_worker_killed(root, monkeypatch, func):
    monkeypatch.setattr(apps, "MAX_OUTPUT", 1 << 20)
    started = time.perf_counter()
    res = await run_app(root, "ops", func, "", 20, PROXY)
    # Not read to the timeout (20 s, gigabytes of it held in memory).
    assert time.perf_counter() - started < 10
    assert res.worker_flag == -1
    assert "output" in res.worker_result and str(1 << 20) in res.worker_result
    assert len(res.worker_result) < 10_000


async def test_output_under_the_limit_is_read_whole(root, monkeypatch):
    monkeypatch.setattr(apps, "MAX_OUTPUT", 1 << 20)
    res = await run_app(root, "ops", "big", str(500_000), 20, PROXY)
    assert res.worker_flag == 1 and res.worker_result == "r" * 500_000


# -- the agent: runs without end, more runs than workers, results too large ---

from fleetrpc.agent import ElvesAgent  # noqa: E402


def _agent(root: Path, **kw) -> ElvesAgent:
    # Not connected: these tests drive its run path directly.
    kw.setdefault("heartbeat_interval", 0)
    return ElvesAgent("10.0.0.1", "mqtt://127.0.0.1:1", root=root, **kw)


@pytest.mark.parametrize("timeout", [0, -1, 1e308, float("nan"), float("inf")])
async def test_a_run_without_a_usable_timeout_ends_at_the_agents_most(root, timeout):
    a = _agent(root, max_run_timeout=0.5)
    started = time.perf_counter()
    res = await a.execute("ops", "sleep", "30", timeout, PROXY)
    assert res.worker_flag == -1 and res.worker_result == "app exec timeout"
    assert time.perf_counter() - started < 5

    async def forever(param):
        await asyncio.Event().wait()

    a.add_function("ops", "forever", forever)
    res = await a.execute("ops", "forever", "", timeout)
    assert res.worker_result == "app exec timeout"


async def test_runs_beyond_workers_and_waiting_room_are_refused_at_once(root):
    a = _agent(root, max_workers=1, max_waiting=2)
    gate = asyncio.Event()

    async def slow(param):
        await gate.wait()
        return True, "done"

    a.add_function("ops", "slow", slow)
    ins = {"id": "t", "app": "ops", "func": "slow", "param": "", "timeout": 60, "async": True}
    answers = [a._on_run({**ins, "id": f"t{i}"}) for i in range(10)]
    assert answers[:3] == [{"accepted": True}] * 3
    for refused in answers[3:]:
        assert refused["error"]["code"] == "APPLICATION_ERROR" and "busy" in refused["error"]["message"]
    assert len(a._tasks) == 3
    sync = a._on_run({**ins, "id": "s", "async": False})
    assert isinstance(sync, dict) and "busy" in sync["error"]["message"]
    a._report = lambda body: asyncio.sleep(0)  # not connected: nothing to report to
    gate.set()
    await asyncio.gather(*list(a._tasks))
    assert a._on_run({**ins, "id": "again"}) == {"accepted": True}
    await asyncio.gather(*list(a._tasks))


async def test_a_self_cron_does_not_start_a_run_while_its_previous_one_runs():
    # Every second, a run that lasts longer: each firing became one more
    # task (waiting for a worker), without end.
    from fleetrpc.agent.crons import SelfCrons
    from fleetrpc.services.elves.clock import ManualClock

    gate = asyncio.Event()
    started = []

    async def run(cron_id, entry):
        started.append(cron_id)
        await gate.wait()

    clock = ManualClock(1.9e9)
    crons = SelfCrons(None, run, clock=clock, timezone="UTC")
    assert crons.on_set({"id": "c1", "cron": {"Rule": "* * * * * ?", "App": "ops", "Func": "f"}}) == {"ok": True}
    crons.start()
    try:
        for _ in range(10):
            clock.advance(1)
            for _ in range(5):
                await asyncio.sleep(0)
        assert len(started) == 1 and len(crons._runs) == 1
        assert crons.skipped >= 9
        gate.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        clock.advance(1)
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(started) == 2
    finally:
        await crons.close()


async def test_a_param_nested_too_deep_for_json_reaches_the_function_as_text(root):
    # json.loads raised RecursionError (not a ValueError): out of execute,
    # so an async run died with "Task exception was never retrieved" at
    # ERROR and was never reported.
    a = _agent(root)
    seen = []
    a.add_function("ops", "f", lambda param: seen.append(param) or (True, "ok"))
    deep = "[" * 200_000
    res = await a.execute("ops", "f", deep, 5)
    assert (res.worker_flag, res.worker_result) == (1, "ok") and seen == [deep]
    reported = []

    async def report(body):
        reported.append(body)

    a._report = report
    assert a._on_run({"id": "t1", "app": "ops", "func": "f", "param": deep, "async": True}) == {"accepted": True}
    await asyncio.gather(*list(a._tasks))
    assert reported and reported[0]["worker_flag"] == 1


def test_a_self_cron_entry_is_at_most_max_self_cron_bytes():
    # 1000 entries (the most) of a payload's size each (256 KB): 256 MB kept,
    # the whole file rewritten at every set, and listed in each heartbeat.
    from fleetrpc.agent.crons import MAX_SELF_CRON_BYTES, SelfCrons

    async def run(cron_id, entry):
        pass

    crons = SelfCrons(None, run, timezone="UTC")
    cron = {"Rule": "0 0 0 1 1 ? 2099", "App": "ops", "Func": "f"}
    big = crons.on_set({"id": "c1", "cron": {**cron, "Param": "p" * MAX_SELF_CRON_BYTES}})
    assert big["error"]["code"] == "INVALID_PARAMS" and str(MAX_SELF_CRON_BYTES) in big["error"]["message"]
    assert crons.entries == {}
    assert crons.on_set({"id": "c1", "cron": {**cron, "Param": "p" * (MAX_SELF_CRON_BYTES - 500)}}) == {"ok": True}
