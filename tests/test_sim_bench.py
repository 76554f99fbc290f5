"""The device simulator, the reference dispatcher and ``fleetrpc bench``,
against a real broker.  Nothing here asserts a throughput or a duration."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import signal
import uuid
from pathlib import Path

import pytest

from fleetrpc.errors import RemoteError, RpcTimeoutError
from fleetrpc.sim import Behaviour, Fleet, LeanClient
from fleetrpc.sim.leanmqtt import parse_url

pytestmark = pytest.mark.mqtt

ROOT = Path(__file__).resolve().parents[1]


def _reference():
    # Shipped in the package, so that `fleetrpc bench` works from a wheel.
    from fleetrpc.bench.reference import ReferenceDispatcher

    return ReferenceDispatcher


def _unique(tag: str) -> str:
    return f"t{tag}{uuid.uuid4().hex[:10]}"


async def _lean(mqtt_url: str, client_id: str, **kw) -> LeanClient:
    host, port, user, password = parse_url(mqtt_url)
    client = LeanClient(client_id, username=user, password=password, **kw)
    await client.connect(host, port)
    return client


# -- the lean client -----------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1])
async def test_lean_client_round_trip(mqtt_url, qos):
    topic = f"{_unique('lean')}/x"
    got: asyncio.Queue = asyncio.Queue()
    sub = await _lean(mqtt_url, _unique("sub"), on_message=lambda *m: got.put_nowait(m))
    pub = await _lean(mqtt_url, _unique("pub"))
    try:
        assert await sub.subscribe((topic, qos)) == [qos]
        payloads = [b"", b"a", b"x" * 300, bytes(range(256)) * 600]  # 0 B .. 150 KiB
        for p in payloads:
            if qos:
                await asyncio.wait_for(pub.publish_wait(topic, p, qos), 5)
            else:
                pub.publish(topic, p, qos)
        for p in payloads:
            t, payload, q, retain = await asyncio.wait_for(got.get(), 5)
            assert (t, payload, q, retain) == (topic, p, qos, False)
        assert pub.inflight == 0
    finally:
        await sub.disconnect()
        await pub.disconnect()
    assert not sub.connected


async def test_lean_client_will_fires_on_abrupt_disconnect(mqtt_url):
    topic = f"{_unique('will')}/presence"
    got: asyncio.Queue = asyncio.Queue()
    watcher = await _lean(mqtt_url, _unique("watch"), on_message=lambda *m: got.put_nowait(m))
    await watcher.subscribe((topic, 1))
    device = await _lean(mqtt_url, _unique("dev"), will=(topic, b'{"status":"offline"}', 1, False))
    try:
        device.abort()  # no DISCONNECT packet: the broker must publish the Will
        t, payload, _qos, _ = await asyncio.wait_for(got.get(), 10)
        assert (t, payload) == (topic, b'{"status":"offline"}')
    finally:
        await watcher.disconnect()


async def test_lean_client_graceful_disconnect_discards_will(mqtt_url):
    topic = f"{_unique('nowill')}/presence"
    got: asyncio.Queue = asyncio.Queue()
    watcher = await _lean(mqtt_url, _unique("watch"), on_message=lambda *m: got.put_nowait(m))
    await watcher.subscribe((topic, 1))
    device = await _lean(mqtt_url, _unique("dev"), will=(topic, b"gone", 1, False))
    await device.disconnect()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(got.get(), 0.5)
    await watcher.disconnect()


# -- the fleet and the reference dispatcher --------------------------------------


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "worker"])
async def test_fleet_answers_reference_dispatcher(mqtt_url, processes):
    prefix = _unique("p")
    fleet = Fleet(mqtt_url, 5, processes=processes, prefix=prefix, qos=1,
                  id_format=_unique("d") + "-{:03d}", lifetime=120)
    await fleet.start()
    ref = _reference()(mqtt_url, node_id=_unique("n"), prefix=prefix, qos=1, window=16)
    await ref.start()
    try:
        dev = fleet.device_ids[3]
        assert await ref.call(dev, "echo", {"a": [1, 2, "x"]}, timeout=5) == {"a": [1, 2, "x"]}
        results = await asyncio.gather(*(ref.call(d, "echo", i, timeout=5) for i, d in enumerate(fleet.device_ids)))
        assert results == list(range(5))
        with pytest.raises(RemoteError):
            await ref.call(dev, "fail", {}, timeout=5)
        assert await ref.call(dev, "notify", {}, oneway=True) is None
        for _ in range(100):  # one-way: nothing tells us when it arrived
            if (await fleet.stats())["notified"]:
                break
            await asyncio.sleep(0.05)

        await fleet.configure(drop_rate=1.0)
        with pytest.raises(RpcTimeoutError):
            await ref.call(dev, "echo", {}, timeout=0.3)
        await fleet.configure(drop_rate=0.0, error_rate=1.0)
        with pytest.raises(RemoteError):
            await ref.call(dev, "echo", {}, timeout=5)
        await fleet.configure(error_rate=0.0, latency_ms=20, ack=True)
        assert await ref.call(dev, "sleep", {"ms": 10}, timeout=5) == {"ms": 10}

        stats = await fleet.stats()
        assert stats["online"] == 5
        assert stats["notified"] == 1 and stats["dropped"] == 1 and stats["errors"] == 1
        assert stats["acks"] >= 1
        assert ref.stats["acks"] >= 1
    finally:
        await ref.close()
        final = await fleet.stop()
    assert final["online"] == 0


async def test_fleet_presence_and_churn(mqtt_url):
    prefix = _unique("p")
    events: asyncio.Queue = asyncio.Queue()
    watcher = await _lean(mqtt_url, _unique("watch"),
                          on_message=lambda t, p, q, r: events.put_nowait((t.split("/")[-2], json.loads(p)["status"])))
    await watcher.subscribe((f"{prefix}/d/+/presence", 1))
    fleet = Fleet(mqtt_url, 2, processes=0, prefix=prefix, id_format=_unique("d") + "-{:02d}",
                  behaviour=Behaviour(churn_interval_s=0.3, churn_fraction=1.0, offline_s=0.3))
    await fleet.start()
    try:
        seen: list[tuple[str, str]] = []
        # online on connect, then the Will (offline) on each abrupt drop, then online again
        while not ({(d, "offline") for d in fleet.device_ids} <= set(seen)
                   and sum(1 for e in seen if e[1] == "online") >= 4):
            seen.append(await asyncio.wait_for(events.get(), 10))
        stats = await fleet.stats()
        assert stats["churned"] >= 2 and stats["connects"] >= 4
    finally:
        await fleet.stop()
        await watcher.disconnect()


# -- the commands ----------------------------------------------------------------


def test_bench_direct_compares_the_endpoint_with_the_broker(tmp_path, mqtt_url):
    """``fleetrpc bench --direct``: the same simulated devices answer through
    the broker and then on fleetrpc's own endpoint; both paths carry calls,
    none fails, and the ratio is the two paths' throughputs."""
    from click.testing import CliRunner

    from fleetrpc.cli import main

    out = tmp_path / "direct.json"
    result = CliRunner().invoke(
        main, ["bench", "--direct", "--quick", "--devices", "6", "--window", "4", "--url", mqtt_url,
               "--json", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["config"]["devices"] == 6 and report["config"]["url"] == mqtt_url
    broker, direct = report["results"]["broker"], report["results"]["direct"]
    for path in (broker, direct):  # each at --window and at two calls per device, and fanning out
        assert set(path["sweep"]) == {"4", "12"} and path["errors"] == 0
        assert set(path["fanout_sweep"]) == {"12", "20"}  # two and sixteen per device, --quick's 20 at most
        assert path["round_trips_per_s"] == max([*path["sweep"].values(), *path["fanout_sweep"].values()]) > 0
        assert path["dispatcher_us_per_rt"] > 0 and path["sim0_us_per_rt"] > 0
    assert "broker_us_per_rt" not in broker  # a given broker is not this run's to measure
    assert report["ratios"]["direct"] == direct["round_trips_per_s"] / broker["round_trips_per_s"]
    assert "direct / broker:" in result.output and " direct: " in result.output


def test_the_endpoint_bench_compares_each_paths_peak_over_the_concurrencies(mqtt_url):
    """``benchmarks/bench_endpoint.py --concurrency 2,12``: each path runs the
    closed loop at each concurrency on the same connections; its best run
    is its figure, and the ratio is of the two peaks."""
    import uvloop

    from fleetrpc.bench.endpoint import EndpointBenchConfig, format_report, run_endpoint_bench
    from fleetrpc.runner import SERVER_GC_THRESHOLD

    cfg = EndpointBenchConfig(devices=12, url=mqtt_url, concurrency=(2, 12))
    cfg.quick()
    collector = gc.get_threshold()
    report = uvloop.run(run_endpoint_bench(cfg))
    # the paths ran with the server's collector threshold, given back after
    assert gc.get_threshold() == collector and report["config"]["gc_threshold"] == SERVER_GC_THRESHOLD
    results = report["results"]
    for path in (results["broker"], results["direct"]):
        assert set(path["sweep"]) == {2, 12} and min(path["sweep"].values()) > 0 and path["errors"] == 0
        assert path["round_trips_per_s"] == max(path["sweep"].values()) == path["sweep"][path["concurrency"]]
    assert report["ratios"]["direct"] == results["direct"]["round_trips_per_s"] / results["broker"]["round_trips_per_s"]
    for path in (results["broker"], results["direct"]):  # the collector's share of the window
        assert path["gc_us_per_rt"] >= 0 and path["gc_longest_ms"] >= 0
    text = format_report(report)
    assert text.count("garbage collector: ") == 2 and "gc_us_per_rt" not in text
    assert "concurrency=2,12 " in text and text.count(" in flight; rt/s by calls in flight: 2: ") == 2


def test_the_endpoint_report_sets_the_servers_cpu_against_dispatcher_and_broker():
    from fleetrpc.bench.endpoint import format_report, server_cpu_ratios

    def path(rps, us, **more):
        return {"round_trips_per_s": rps, "dispatcher_us_per_rt": us, "dispatcher_user_us_per_rt": us,
                "dispatcher_sys_us_per_rt": 0.0, "errors": 0, **more}

    results = {"broker": path(50_000, 7.5, broker_us_per_rt=17.5), "direct": path(70_000, 12.5)}
    assert server_cpu_ratios(results) == {"direct": 0.5}  # 12.5 / (7.5 + 17.5)
    report = {"config": {"devices": 1, "qos": 1, "concurrency": 1, "seconds": 1}, "results": results,
              "server_cpu_ratios": server_cpu_ratios(results)}
    assert "server-side CPU per round trip, direct / (dispatcher + broker): 0.50x" in format_report(report)
    del results["broker"]["broker_us_per_rt"]  # a broker given with --url: not measured, no ratio
    assert server_cpu_ratios(results) == {}


def test_the_endpoint_bench_takes_medians_over_rounds_and_each_ratio_from_one_round(monkeypatch):
    """``--rounds 3``: the paths take turns three times; each path's figure
    is its median round, and the ratio is the median of the per-round
    ratios (runs seconds apart), not the ratio of two medians from
    different moments of a shared machine."""
    import uvloop

    from fleetrpc.bench import endpoint as bench

    def path(rps, us):
        return {"round_trips_per_s": rps, "dispatcher_us_per_rt": us, "dispatcher_user_us_per_rt": us,
                "dispatcher_sys_us_per_rt": 0.0, "errors": 0}

    # round 2 was slow for both paths (another load on the machine)
    canned = iter([
        {"broker": path(20_000, 20.0) | {"broker_us_per_rt": 50.0}, "direct": path(50_000, 20.0)},
        {"broker": path(10_000, 30.0) | {"broker_us_per_rt": 70.0}, "direct": path(30_000, 30.0)},
        {"broker": path(18_000, 20.0) | {"broker_us_per_rt": 50.0}, "direct": path(36_000, 25.0)},
    ])
    calls = []

    async def run_paths(cfg):
        calls.append(cfg.rounds)
        return next(canned)

    monkeypatch.setattr(bench, "_run_paths", run_paths)
    report = uvloop.run(bench.run_endpoint_bench(bench.EndpointBenchConfig(rounds=3)))
    assert calls == [3, 3, 3]
    results = report["results"]
    assert results["broker"]["round_trips_per_s"] == 18_000 and results["direct"]["round_trips_per_s"] == 36_000
    assert results["broker"]["rounds_rt_s"] == [20_000, 10_000, 18_000]
    assert results["direct"]["rounds_rt_s"] == [50_000, 30_000, 36_000]
    # per round 2.5, 3.0, 2.0: the median is 2.5 (the medians' ratio would say 2.0)
    assert report["ratios"] == {"direct": 2.5} and report["ratios_rounds"] == {"direct": [2.5, 3.0, 2.0]}
    assert report["server_cpu_ratios"]["direct"] == 30.0 / 100.0  # median of 20/70, 30/100, 25/70
    text = bench.format_report(report)
    assert "direct / broker: 2.50x (median of 3 rounds: 2.50, 3.00, 2.00)" in text
    assert text.count("median of 3 rounds; rt/s by round: ") == 2
    one = bench.format_report({**report, "ratios_rounds": {}, "server_cpu_ratios_rounds": {}})
    assert "direct / broker: 2.50x\n" in one


def test_a_run_whose_calls_failed_is_no_peak_while_one_without_failures_exists(monkeypatch):
    """160,000 calls in flight through a broker that answers 17,000/s: most
    time out, and the answered ones are no sustainable peak."""
    import asyncio

    from fleetrpc.bench import endpoint as bench

    runs = {("calls", 100): (15_000, 0), ("fanout", 200): (16_000, 0), ("fanout", 1600): (17_000, 92_303)}

    async def load(d, devices, seconds, window, others, kind, fanout_slice=0):
        rps, errors = runs[(kind, window)]
        return {"round_trips_per_s": rps, "errors": errors}

    monkeypatch.setattr(bench, "_load", load)
    cfg = bench.EndpointBenchConfig(devices=100, concurrency=100, fanout=(200, 1600))
    best = asyncio.run(bench._peak(None, [], cfg, {}))
    assert (best["load"], best["concurrency"], best["round_trips_per_s"]) == ("fanout", 200, 16_000)
    assert best["fanout_sweep"] == {200: 16_000, 1600: 17_000} and best["sweep"] == {100: 15_000}
    runs[("fanout", 200)] = (16_000, 5)  # all failed somewhere: the most answered
    runs[("calls", 100)] = (15_000, 1)
    assert asyncio.run(bench._peak(None, [], cfg, {}))["round_trips_per_s"] == 17_000


def test_the_endpoint_bench_gives_every_path_the_same_dispatcher_window():
    from fleetrpc.bench.endpoint import EndpointBenchConfig, _settings
    from fleetrpc.config import Settings

    assert _settings(EndpointBenchConfig()).inflight_window == Settings().inflight_window
    wide = EndpointBenchConfig(inflight_window=160_000)
    assert _settings(wide).inflight_window == _settings(wide, mqtt_url="mqtt://x:1").inflight_window == 160_000


def test_bench_direct_rounds_take_turns_through_the_real_broker(tmp_path, mqtt_url):
    """``fleetrpc bench --direct --rounds 2 --inflight-window 50
    --fanout-slice 2``: both paths run twice with that window, fan-out in
    slices of two devices, every round carries calls, and the report keeps
    each round's figures."""
    from click.testing import CliRunner

    from fleetrpc.cli import main

    out = tmp_path / "rounds.json"
    result = CliRunner().invoke(
        main, ["bench", "--direct", "--quick", "--devices", "6", "--window", "4", "--url", mqtt_url,
               "--rounds", "2", "--inflight-window", "50", "--fanout-slice", "2", "--json", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["config"]["rounds"] == 2 and report["config"]["inflight_window"] == 50
    assert report["config"]["fanout_slice"] == 2 and "fanout_slice=2" in result.output
    for name in ("broker", "direct"):
        rounds = report["results"][name]["rounds_rt_s"]
        assert len(rounds) == 2 and min(rounds) > 0
        assert report["results"][name]["round_trips_per_s"] == min(rounds)  # the lower middle of two
    assert len(report["ratios_rounds"]["direct"]) == 2
    assert "(median of 2 rounds: " in result.output


def test_fan_out_in_slices_keeps_broadcasts_small_and_reaches_every_device():
    """``--fanout-slice 3``: concurrency / 3 broadcasts at once, each to the
    next three devices in turn (the last slice shorter), so that no wave
    waits for every device; every device is called."""
    import asyncio
    from types import SimpleNamespace

    from fleetrpc.bench import endpoint as bench

    class Wave:
        def __init__(self, n: int) -> None:
            self.n, self.succeeded = n, 0

        async def wait(self):
            await asyncio.sleep(0.001)
            self.succeeded = self.n
            return SimpleNamespace(succeeded=self.n, failed=0)

    class Dispatcher:
        targets: list[list[str]] = []
        call = None  # (single calls are not this load)

        def broadcast(self, devices, method, params, timeout):
            self.targets.append(list(devices))
            return Wave(len(devices))

    d = Dispatcher()
    devices = [f"d{i}" for i in range(10)]
    r = asyncio.run(bench._load(d, devices, 0.2, 6, {}, "fanout", 3))
    assert r["errors"] == 0 and r["round_trips_per_s"] > 0
    assert {len(t) for t in d.targets} == {3, 1}  # [d0-d2], [d3-d5], [d6-d8], [d9]
    assert set().union(*d.targets) == set(devices)
    assert d.targets[:2] == [devices[0:3], devices[3:6]]  # two broadcasters, each on its own slice
    cfg = bench.EndpointBenchConfig(devices=10, concurrency=10, fanout=(6,), fanout_slice=3)
    text = bench.format_report({"config": dict(vars(cfg)), "results": {}})
    assert text.startswith("devices=10 qos=1 concurrency=10 seconds=5.0 fanout=6 fanout_slice=3")


def test_the_endpoint_bench_fans_out_as_fleet_jobs_do(mqtt_url):
    """``--fanout 24``: after the single calls, each path also runs a fleet
    job's load, broadcasts to every device (two in flight at 24 calls over
    12 devices); every device answers every broadcast, the answers of
    broadcasts still under way when the window closes count too, and the
    peak is the better of the two loads."""
    import uvloop

    from fleetrpc.bench.endpoint import EndpointBenchConfig, format_report, run_endpoint_bench

    cfg = EndpointBenchConfig(devices=12, url=mqtt_url, concurrency=12, fanout=(24,))
    cfg.quick()
    report = uvloop.run(run_endpoint_bench(cfg))
    for name in ("broker", "direct"):
        path = report["results"][name]
        assert path["errors"] == 0 and min(path["sweep"].values()) > 0
        assert set(path["fanout_sweep"]) == {20} and path["fanout_sweep"][20] > 0  # quick(): at most 20
        best = max([(rps, "calls", c) for c, rps in path["sweep"].items()]
                   + [(rps, "fanout", c) for c, rps in path["fanout_sweep"].items()])
        assert (path["round_trips_per_s"], path["load"], path["concurrency"]) == best
    text = format_report(report)
    assert text.startswith("devices=12 qos=1 concurrency=12 seconds=0.5 fanout=20\n")
    assert text.count("; fan-out: 20: ") == 2


def test_the_relayed_path_carries_calls_through_another_nodes_endpoint(mqtt_url):
    """``benchmarks/bench_endpoint.py --relayed``: the devices are on the
    endpoint of a node in a child process, the calls come through the
    broker from this one; every call is answered and both nodes' CPU is
    measured."""
    import uvloop

    from fleetrpc.bench.endpoint import EndpointBenchConfig, format_report, run_endpoint_bench

    cfg = EndpointBenchConfig(devices=12, url=mqtt_url, paths=("relayed",))
    cfg.quick()
    report = uvloop.run(run_endpoint_bench(cfg))
    relayed = report["results"]["relayed"]
    assert relayed["round_trips_per_s"] > 0 and relayed["errors"] == 0
    assert relayed["dispatcher_us_per_rt"] > 0 and relayed["node_us_per_rt"] > 0
    assert "relayed:" in format_report(report)


def test_bench_quick_writes_json(tmp_path, mqtt_url):
    from click.testing import CliRunner

    from fleetrpc.cli import main

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main, ["bench", "--quick", "--devices", "20", "--url", mqtt_url, "--json", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report) >= {"meta", "fleet", "results", "ratios"}
    assert report["meta"]["devices"] == 20
    ref = report["results"]["reference"]
    assert "error" not in ref, ref.get("error")
    assert set(ref) >= {"peak", "latency", "oneway", "fanout", "sequential", "memory"}
    assert set(ref["peak"]) >= {"rps", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_rt", "errors"}
    assert set(ref["latency"]) >= {"target_rps", "p50_ms", "p99_ms", "p999_ms"}
    assert ref["peak"]["round_trips"] > 0 and ref["fanout"]["failed"] == 0
    assert ref["memory"]["bytes_per_pending"] is not None
    ours = report["results"]["fleetrpc"]
    assert "error" not in ours, ours.get("error")
    assert ours["peak"]["round_trips"] > 0 and ours["fanout"]["failed"] == 0
    assert set(ours) >= {"latency_same"}  # both targets at one rate
    assert set(report["ratios"]) >= {"peak.rps", "latency_same.p99_ms"}
    # The limit: throughput workloads only, and fleetrpc's share of it.
    limit = report["results"]["limit"]
    assert "error" not in limit, limit.get("error")
    assert set(limit) >= {"peak", "oneway"}
    assert not set(limit) & {"latency", "latency_same", "memory", "fanout", "sequential"}
    assert limit["peak"]["round_trips"] > 0 and limit["oneway"]["lost"] == 0
    peak = report["ratios"]["peak.rps"]
    assert peak["limit"] == limit["peak"]["rps"] and peak["reference"] == ref["peak"]["rps"]
    assert peak["of_limit"] == round(ours["peak"]["rps"] / limit["peak"]["rps"], 3) > 0
    assert "of_limit" not in report["ratios"]["peak.cpu_us_per_rt"]  # throughputs only
    assert "of_limit" in report["ratios"]["oneway.delivered_per_s"]
    # The table's two comparison columns: "1.23x" (gain) and "45%" (of limit).
    assert re.search(r"\d\.\d\dx", result.output) and re.search(r"\d+%", result.output)
    # A given broker is not ours to watch; the simulator's workers are.
    assert "broker_cpu" not in ours["peak"]
    assert ours["peak"]["fleet_cpu"] > 0


async def test_bench_reports_what_its_own_broker_and_fleet_used():
    """With the broker the run started, each peak and fixed-rate phase says
    how much of a core the broker and the simulator used (from /proc)."""
    from fleetrpc.bench import runner

    cfg = runner.BenchConfig(devices=20, workloads=("peak", "latency"), targets=("fleetrpc",)).quick()
    report = await runner.run_bench(cfg)
    assert report["meta"]["broker"].startswith("throwaway")
    for phase in ("peak", "latency"):
        r = report["results"]["fleetrpc"][phase]
        assert 0 < r["broker_cpu"] < 2.5 and 0 < r["fleet_cpu"] < 2.5, r
        assert r["broker_cpu_us_per_rt"] > 0, r


def test_cpu_of_processes_and_of_the_machine():
    import os
    import subprocess
    import sys
    import time

    from fleetrpc.bench.cpu import machine_cpu, process_cpu, processes_named
    from fleetrpc.bench.rig import cpu_seconds

    before, machine = process_cpu(os.getpid()), machine_cpu()
    t = time.process_time()
    while time.process_time() - t < 0.1:
        pass
    assert process_cpu(os.getpid()) > before
    busy, total = machine_cpu()
    assert busy > machine[0] and total > machine[1] and busy <= total
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_cpu(child.pid) is None  # reaped: gone from /proc
    assert cpu_seconds((os.getpid(), child.pid)) is None  # one gone: no sum
    assert cpu_seconds((os.getpid(), child.pid), gone_as_zero=True) >= process_cpu(os.getpid()) - 0.01
    assert os.getpid() in processes_named(open("/proc/self/comm").read().strip())


def test_percentiles():
    from fleetrpc.bench.rig import percentiles

    assert percentiles([]) == {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    samples = [i / 1000 for i in range(1000, 0, -1)]  # 1..1000 ms, unsorted
    assert percentiles(samples) == {"p50_ms": 501.0, "p99_ms": 991.0, "p999_ms": 1000.0, "max_ms": 1000.0}


async def test_limit_dispatcher_matches_replies(mqtt_url):
    from fleetrpc.bench.limit import LimitDispatcher
    from fleetrpc.errors import DispatcherClosedError

    prefix = _unique("p")
    fleet = Fleet(mqtt_url, 3, processes=0, prefix=prefix, qos=1,
                  id_format=_unique("d") + "-{:03d}", lifetime=120)
    await fleet.start()
    d = LimitDispatcher(mqtt_url, node_id=_unique("n"), prefix=prefix)
    try:
        await d.start()
        replies = await asyncio.wait_for(asyncio.gather(
            *(d.call(dev, "echo", {"i": i}) for i, dev in enumerate(fleet.device_ids * 3))), 10)
        # Raw reply bytes, each matched to its own call.
        assert [json.loads(r) for r in replies] == [{"i": i} for i in range(9)]
        assert d.stats == {"calls": 9, "replies": 9, "unknown": 0}
        assert await d.call(fleet.device_ids[0], "notify", oneway=True) is None
        silent = asyncio.ensure_future(d.call("nobody-there", "echo"))  # no timeout: waits
        await asyncio.sleep(0)
    finally:
        await d.close()
        await fleet.stop()
    with pytest.raises(DispatcherClosedError):
        await silent


def test_simulate_command_runs_and_stops(mqtt_url):
    from click.testing import CliRunner

    from fleetrpc.cli import main

    before = signal.getsignal(signal.SIGINT)
    result = CliRunner().invoke(
        main, ["simulate", "--devices", "3", "--url", mqtt_url, "--processes", "0",
               "--prefix", _unique("p"), "--duration", "1"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "3 devices online" in result.output
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C is this process's again


class _Echo:
    name = "echo"

    async def call(self, device, method, params, timeout=None, oneway=False):
        await asyncio.sleep(0)
        return params


async def test_fixed_rate_generator_wakes_on_the_pacer_instead_of_spinning(monkeypatch):
    """At 20k calls/s the open-loop generator must wake once per pacer period
    (0.5 ms), not spin: a sub-millisecond sleep is a zero-delay timer on
    uvloop, and a spinning generator steals the broker's CPU on the 2-core
    rig and inflates the tail it measures.  Counted, not timed."""
    from fleetrpc.bench import pacer, runner, throughput

    ticks = 0
    real_pacer = pacer.Pacer

    def counting_pacer(period, on_tick):
        def tick():
            nonlocal ticks
            ticks += 1
            on_tick()
        p = real_pacer(period, tick)
        assert p.precise  # a timerfd on Linux
        return p

    monkeypatch.setattr(throughput, "Pacer", counting_pacer)
    cfg = runner.BenchConfig(devices=10, duration=0.3, window=10, timeout=5.0, targets=("fleetrpc",))
    result = await throughput.fixed_rate(_Echo(), [f"d{i}" for i in range(10)], cfg,
                                      lambda *a: None, peak_rps=40_000)
    assert result["calls"] == 6000 and not result["errors"] and result["shed"] == 0
    # 0.3 s in 0.5 ms periods is at most ~600 wake-ups (fewer when the loop
    # is late: a timerfd counts missed periods instead of firing for each).
    assert 0 < ticks <= 0.3 / throughput.PACER_PERIOD + 20, ticks


async def test_fixed_rate_latency_counts_from_each_calls_intended_time(monkeypatch):
    """A generator that wakes late must charge the calls it delayed: with the
    pacer stopped for 50 ms, the calls due meanwhile show >= their wait."""
    from fleetrpc.bench import runner, throughput

    class LatePacer:
        def __init__(self, period, on_tick):
            self._handle = asyncio.get_running_loop().call_later(0.05, self._late, on_tick)

        def _late(self, on_tick):
            on_tick()  # everything due by now leaves at once
            self._handle = asyncio.get_running_loop().call_later(0.01, self._late, on_tick)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.cancel()

    monkeypatch.setattr(throughput, "Pacer", LatePacer)
    cfg = runner.BenchConfig(devices=5, duration=0.04, window=5, timeout=5.0, targets=("fleetrpc",))
    result = await throughput.fixed_rate(_Echo(), [f"d{i}" for i in range(5)], cfg,
                                      lambda *a: None, peak_rps=2_000)  # 1k/s: 40 calls over 40 ms
    assert result["calls"] == 40
    # The first call left at once; the others waited for the late wake-up
    # at 50 ms, i.e. 10-50 ms past their intended times.
    assert result["p50_ms"] >= 10


async def test_pacer_ticks_and_falls_back_to_loop_timers(monkeypatch):
    from fleetrpc.bench import pacer

    for precise in (True, False):
        if not precise:
            monkeypatch.setattr(pacer, "_timerfd", lambda period: None)
        ticks = 0

        def tick():
            nonlocal ticks
            ticks += 1

        with pacer.Pacer(0.002, tick) as p:
            assert p.precise is precise
            await asyncio.sleep(0.1)
        seen = ticks
        await asyncio.sleep(0.02)
        assert ticks == seen  # closed: no more ticks
        assert 0 < seen <= 0.1 / 0.002 + 5, seen
    with pytest.raises(ValueError):
        pacer.Pacer(0, tick)


def test_bench_says_when_the_broker_capped_a_peak():
    from fleetrpc.bench.command import bottlenecks

    results = {
        "reference": {"peak": {"broker_cpu": 0.79, "broker_cpu_us_per_rt": 47.4, "cpu_us_per_rt": 41.5}},
        "fleetrpc": {"peak": {"broker_cpu": 0.97, "broker_cpu_us_per_rt": 46.7, "cpu_us_per_rt": 12.6}},
    }
    (line,) = bottlenecks(results)
    assert line.startswith("fleetrpc peak: the broker used 0.97 of its one core (46.7 us")
    results["fleetrpc"]["peak"]["broker_cpu"] = 0.5
    assert bottlenecks(results) == []
    assert bottlenecks({"fleetrpc": {"peak": {}}, "reference": {"error": "x"}}) == []  # --url: not measured
