"""cron: center crons fire on schedule under a controllable clock, through a
real broker to real agents, survive a restart, and fire exactly once with
two nodes on one PostgreSQL; self crons are pushed to the agent; every
function in the seed's spelling and the intended one, over MQTT and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from datetime import datetime, timezone

import pytest

from fleetrpc.agent import ElvesAgent
from fleetrpc.config import Settings
from fleetrpc.dispatch import Dispatcher
from fleetrpc.services.elves import NULL_TENANT, ElvesSettings
from fleetrpc.services.elves.client import ElvesClient
from fleetrpc.services.elves.cron import SELF_CRON_DEL, SELF_CRON_SET, CronSettings, ManualClock
from fleetrpc.services.elves.service import ElvesService
from fleetrpc.store.db import open_database
from tests.elves.conftest import elves_http, tenant_admin
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt

_seq = itertools.count()
#: 2030-01-01 00:00:05 UTC, a Tuesday.
T0 = datetime(2030, 1, 1, 0, 0, 5, tzinfo=timezone.utc).timestamp()
INS = {"mode": "NP", "app": "ops", "func": "tick", "param": "p", "timeout": "10", "proxy": ""}
IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]


class Node:
    """One fleetrpc node: a dispatcher and the Elves services on a database."""

    def __init__(self, d, elves, db) -> None:
        self.d, self.elves, self.db = d, elves, db
        self.fired: list[tuple[list[str], int]] = []
        self.results: list = []
        self.changed = asyncio.Event()
        elves.cron.on_fired(self._on_fired)

    def _on_fired(self, ids, fire, at):
        self.fired.append((ids, fire))
        self.changed.set()

    async def _on_result(self, row):
        self.results.append(row)
        self.changed.set()


class Cluster:
    def __init__(self, url: str, prefix: str, clock: ManualClock) -> None:
        self.url, self.prefix, self.clock = url, prefix, clock
        self.nodes: list[Node] = []
        self.agents: list[ElvesAgent] = []
        self.runs: dict[str, int] = {}
        self.clients: list[ElvesClient] = []
        self.key = None
        self.lookahead = 0.0

    @contextlib.asynccontextmanager
    async def node(self, db_url: str):
        n = next(_seq)
        d = Dispatcher(Settings(mqtt_url=self.url, node_id=f"cron{n}", prefix=self.prefix,
                                share_group=self.prefix, min_timeout_ms=0))
        await d.start()
        db = await open_database(db_url)
        elves = ElvesService(d, db, settings=ElvesSettings(accept_timeout_s=5.0))
        elves.cron.clock = self.clock
        # Claim when due, not ahead (test_firings_are_claimed_ahead covers that):
        # a pass run by the test itself then never waits on the manual clock.
        elves.cron.settings = CronSettings(lookahead_s=self.lookahead)
        await elves.start()
        node = Node(d, elves, db)
        elves.scheduler.on_result("cron", node._on_result)
        self.nodes.append(node)
        try:
            yield node
        finally:
            self.nodes.remove(node)
            await elves.close()
            await d.close()
            await db.close()

    async def app_key(self, node: Node):
        if self.key is None or await node.elves.supervisor.repo.get_app(NULL_TENANT, "ops") is None:
            self.key = await node.elves.supervisor.create_app(NULL_TENANT, "ops")
            await node.elves.supervisor.grant(NULL_TENANT, "ops", ips=IPS)
        return self.key

    async def client(self) -> ElvesClient:
        c = ElvesClient("ops", self.url, prefix=self.prefix, key=self.key.auth_key)
        await c.connect()
        self.clients.append(c)
        return c

    async def agent(self, ip: str) -> ElvesAgent:
        a = ElvesAgent(ip, self.url, prefix=self.prefix, heartbeat_interval=30.0)

        @a.function("ops", "tick")
        def tick(param):
            self.runs[ip] = self.runs.get(ip, 0) + 1
            return True, f"tick {ip}"

        await a.start()
        self.agents.append(a)
        for node in self.nodes:
            await wait_until(lambda: node.d.is_online(ip) and node.d.device_info(ip).heartbeat)
        return a

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        for a in self.agents:
            await a.close()


@pytest.fixture
async def cluster(mqtt_url):
    c = Cluster(mqtt_url, f"cron{next(_seq)}", ManualClock(T0))
    yield c
    await c.close()


@pytest.fixture
async def one(cluster, tmp_path):
    async with cluster.node(f"sqlite:///{tmp_path / 'elves.db'}") as node:
        await cluster.app_key(node)
        cluster.app = await cluster.client()
        yield node


async def until(node_or_nodes, predicate, timeout: float = 10.0):
    """Wait, on the nodes' change events, until ``predicate()`` holds."""
    nodes = node_or_nodes if isinstance(node_or_nodes, list) else [node_or_nodes]

    async def wait():
        while not predicate():
            waits = [asyncio.ensure_future(n.changed.wait()) for n in nodes]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            for n in nodes:
                n.changed.clear()

    await asyncio.wait_for(wait(), timeout)


# -- center crons -------------------------------------------------------------------


@pytest.mark.parametrize("mqf", ["setCronByIp", "setcronbyip"])
async def test_center_cron_fires_on_schedule(cluster, one, mqf):
    await cluster.agent("10.0.0.1")
    r = await cluster.app.call("cron", mqf, agentip="10.0.0.1", cron_type="center", rule="0/10 * * * * ?", ins=INS)
    assert r["flag"] == "true" and r["error_info"] == "" and len(r["cron_id"]) == 16, r
    cron_id = r["cron_id"]
    listed = await cluster.app.call("cron", "getCronListByIp", agentip="10.0.0.1")
    assert listed["cron_list"][0]["next_fire_time"] == "2030-01-01 00:00:10"
    # Nothing is due before :10.
    cluster.clock.set(T0 + 4)
    assert await one.elves.cron.run_due() is False and one.fired == []
    cluster.clock.set(T0 + 5)
    await until(one, lambda: len(one.results) == 1)
    fire_ms = int((T0 + 5) * 1000)
    assert one.fired == [([cron_id], fire_ms)] and cluster.runs == {"10.0.0.1": 1}
    task = one.results[0]
    assert (task.type, task.agent_ip, task.worker_flag, task.result_flag) == ("cron", "10.0.0.1", 1, 1)
    detail = await cluster.app.call("cron", "cronDetail", id=cron_id)
    last = detail["result"]["last_exec_result"]
    assert last["flag"] == "true" and last["worker_flag"] == 1 and last["worker_message"] == "tick 10.0.0.1"
    assert detail["result"]["last_exec_time"] == "2030-01-01 00:00:10"
    log = await cluster.app.call("tasklog", "getTaskByIds", id=[task.id])
    assert log["info"][0]["result_flag"] == "1" and log["info"][0]["type"] == "cron"
    # The next firing, at :20 (the clock jumps; the loop wakes on it).
    cluster.clock.set(T0 + 15)
    await until(one, lambda: len(one.results) == 2)
    assert cluster.runs == {"10.0.0.1": 2} and one.fired[1] == ([cron_id], fire_ms + 10_000)


async def test_stop_start_delete_and_list_in_both_spellings(cluster, one):
    a = cluster.app
    r = await a.call("cron", "createCron", ip="10.0.0.2", app="ops", func="tick", rule="0 0 12 ? * WED", param={"x": 1})
    cid = r["id"]
    assert r["result"] == {"id": cid}
    r2 = await a.call("cron", "setcronbyip", agentip="10.0.0.2", cron_type="center", rule="0 15 10 ? * 6L", ins=INS)
    # The seed writes every cron function "setcronbyip": only agentip -> the list.
    listed = await a.call("cron", "setcronbyip", agentip="10.0.0.2")
    by_id = {c["cron_id"]: c for c in listed["cron_list"]}
    assert sorted(by_id) == sorted([cid, r2["cron_id"]])
    first = by_id[cid]
    assert first["rule"] == "0 0 12 ? * WED" and first["ins"]["param"] == '{"x":1}' and first["cron_type"] == "center"
    assert first["next_fire_time"] == "2030-01-02 12:00:00" and first["create_time"] == "2030-01-01 00:00:05"
    assert sorted((await a.call("cron", "cronList", ip="10.0.0.2"))["result"]) == sorted(by_id)
    # stop: no next fire, nothing fires at noon on Wednesday; start again.
    assert (await a.call("cron", "stopCron", id=cid))["flag"] == "true"
    assert (await a.call("cron", "cronDetail", cron_id=cid))["result"]["cron_flag"] == "0"
    cluster.clock.set(datetime(2030, 1, 2, 12, tzinfo=timezone.utc).timestamp())
    assert await one.elves.cron.run_due() is False
    assert (await a.call("cron", "startCron", id=cid))["flag"] == "true"
    detail = (await a.call("cron", "detail", cron_id=cid))["result"]
    assert detail["cron_flag"] == "1" and detail["next_fire_time"] == "2030-01-09 12:00:00"
    # Delete: the seed's spelling (setcronbyip with an id), then the intended one.
    d = await a.call("cron", "setcronbyip", agentip="10.0.0.2", id=r2["cron_id"])
    assert d["flag"] == "true" and d["error_info"] == ""
    again = await a.call("cron", "delCronByIpId", agentip="10.0.0.2", id=r2["cron_id"])
    assert again["flag"] == "false" and again["error"].startswith("[411.1]") and again["error_info"] == again["error"]
    assert (await a.call("cron", "deleteCron", id=cid))["flag"] == "true"
    assert (await a.call("cron", "getCronListByIp", agentip="10.0.0.2"))["cron_list"] == []
    for fn in ("startCron", "stopCron", "deleteCron", "cronDetail"):
        r = await a.call("cron", fn, id="0123456789ABCDEF")
        assert r["error"].startswith("[411.1]Not Find Cron Job To Operate"), (fn, r)


async def test_offline_and_unknown_agents_get_failed_tasks(cluster, one):
    agent = await cluster.agent("10.0.0.1")
    for ip in ("10.0.0.1", "10.0.0.3"):  # 10.0.0.3 never connected
        r = await cluster.app.call("cron", "setCronByIp", agentip=ip, cron_type="center", rule="0 * * * * ?", ins=INS)
        assert r["flag"] == "true", r
    await agent.close()  # a clean disconnect: offline at once
    await wait_until(lambda: not one.d.is_online("10.0.0.1"))
    cluster.clock.set(T0 + 55)  # :01:00
    await until(one, lambda: len(one.fired) >= 1)
    await wait_until_async(lambda: _all_failed(one, 2))
    rows = await one.db.fetch("SELECT agent_ip, agent_sync_flag, agent_sync_error, result_flag FROM elves_task "
                              "WHERE type = 'cron' ORDER BY agent_ip")
    assert [(r[0], r[1], r[3]) for r in rows] == [("10.0.0.1", 0, 0), ("10.0.0.3", 0, 0)]
    assert "offline" in rows[0][2] and rows[1][2].startswith("[414.1]")
    listed = await cluster.app.call("cron", "getCronListByIp", agentip="10.0.0.3")
    detail = await cluster.app.call("cron", "cronDetail", id=listed["cron_list"][0]["cron_id"])
    assert detail["result"]["last_exec_result"]["flag"] == "false"
    assert detail["result"]["last_exec_result"]["error"].startswith("[414.1]")


async def _all_failed(node, n):
    rows = await node.db.fetch("SELECT COUNT(*) FROM elves_task WHERE type = 'cron' AND result_flag = 0")
    return rows[0][0] == n


async def wait_until_async(predicate, timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_a_revoked_grant_stops_the_firing(cluster, one):
    await cluster.agent("10.0.0.1")
    r = await cluster.app.call("cron", "setCronByIp", agentip="10.0.0.1", cron_type="center", rule="0 * * * * ?", ins=INS)
    await one.elves.supervisor.revoke(NULL_TENANT, "ops", ips=["10.0.0.1"])
    cluster.clock.set(T0 + 55)
    await until(one, lambda: len(one.fired) == 1)
    await wait_until_async(lambda: _last_error_is(one, r["cron_id"], "[401.6]"))
    assert cluster.runs == {}


async def _last_error_is(node, cron_id, prefix):
    row = await node.elves.cron.repo.get(NULL_TENANT, cron_id)
    return row.last_result is not None and prefix in row.last_result


async def test_crons_survive_a_restart(cluster, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'restart.db'}"
    async with cluster.node(db_url) as first:
        await cluster.app_key(first)
        app = await cluster.client()
        r = await app.call("cron", "setCronByIp", agentip="10.0.0.1", cron_type="center", rule="30 0 0 * * ?", ins=INS)
        cron_id = r["cron_id"]
    # The first node is gone; a new service instance on the same database.
    async with cluster.node(db_url) as second:
        await cluster.agent("10.0.0.1")
        cluster.clock.set(T0 + 25)  # 00:00:30
        await until(second, lambda: len(second.results) == 1)
        assert second.fired == [([cron_id], int((T0 + 25) * 1000))] and cluster.runs == {"10.0.0.1": 1}


async def test_a_missed_firing_runs_once_when_the_node_comes_back(cluster, one):
    await cluster.agent("10.0.0.1")
    await cluster.app.call("cron", "setCronByIp", agentip="10.0.0.1", cron_type="center", rule="0 * * * * ?", ins=INS)
    cluster.clock.set(T0 + 3600)  # an hour of firings missed
    await until(one, lambda: len(one.results) == 1)
    assert len(one.fired) == 1
    row = (await one.elves.cron.repo.by_ip(NULL_TENANT, "10.0.0.1", None))[0]
    assert row.next_fire == int((T0 + 3600 + 55) * 1000)  # the next minute from now


async def test_firings_are_claimed_ahead_and_sent_at_their_time(cluster, tmp_path):
    cluster.lookahead = 2.0
    async with cluster.node(f"sqlite:///{tmp_path / 'ahead.db'}") as node:
        await cluster.app_key(node)
        app = await cluster.client()
        await cluster.agent("10.0.0.1")
        r = await app.call("cron", "setCronByIp", agentip="10.0.0.1", cron_type="center", rule="0/10 * * * * ?", ins=INS)
        cluster.clock.set(T0 + 3)  # 00:00:08, two seconds before the firing
        fire_ms = int((T0 + 5) * 1000)

        async def claimed():
            return await node.elves.cron.repo.firings(NULL_TENANT, r["cron_id"]) != []

        await wait_until_async(claimed)
        assert node.fired == [] and cluster.runs == {}
        row = await node.elves.cron.repo.get(NULL_TENANT, r["cron_id"])
        assert row.next_fire == fire_ms + 10_000  # already moved on
        cluster.clock.set(T0 + 5)
        await until(node, lambda: len(node.results) == 1)
        assert node.fired == [([r["cron_id"]], fire_ms)] and cluster.runs == {"10.0.0.1": 1}


@pytest.mark.pg
async def test_two_nodes_on_one_postgresql_fire_each_run_exactly_once(cluster, fresh_pg_db):
    async with cluster.node(fresh_pg_db) as a, cluster.node(fresh_pg_db) as b:
        await cluster.app_key(a)
        app = await cluster.client()
        for ip in IPS[:3]:
            await cluster.agent(ip)
        ids = []
        for i in range(30):  # 10 crons per agent, same instruction, some on b's side
            ip = IPS[i % 3]
            r = await app.call("cron", "setCronByIp", agentip=ip, cron_type="center", rule="0/20 * * * * ?", ins=INS)
            ids.append(r["cron_id"])
        for step in (1, 2):
            cluster.clock.set(T0 + 15 + 20 * (step - 1))  # :20, then :40
            # Both loops wake; two more passes race them.
            await asyncio.gather(a.elves.cron.run_due(), b.elves.cron.run_due())
            await until([a, b], lambda: len(a.results) + len(b.results) == 30 * step, timeout=20)
        fired = [i for n in (a, b) for ids_, _ in n.fired for i in ids_]
        assert sorted(fired) == sorted(ids * 2)
        rows = await a.db.fetch("SELECT cron_id, COUNT(*) FROM elves_cron_firing GROUP BY cron_id")
        assert len(rows) == 30 and all(r[1] == 2 for r in rows)
        assert await a.db.fetchval("SELECT COUNT(*) FROM elves_task WHERE type = 'cron'") == 60
        assert cluster.runs == {ip: 20 for ip in IPS[:3]}


# -- self crons ---------------------------------------------------------------------


async def test_self_cron_is_pushed_to_the_agent(cluster, one):
    agent = await cluster.agent("10.0.0.1")
    pushed: list = []

    def record(method):
        def handler(params):
            pushed.append((method, params))
            return {"ok": True}
        return handler

    agent.client.add_method(SELF_CRON_SET, record(SELF_CRON_SET))
    agent.client.add_method(SELF_CRON_DEL, record(SELF_CRON_DEL))
    r = await cluster.app.call("cron", "setcronbyip", agentip="10.0.0.1", cron_type="self", rule="0/10 * * * * ?", ins=INS)
    assert r["flag"] == "true", r
    cid = r["cron_id"]
    assert pushed[0] == (SELF_CRON_SET, {"id": cid, "cron": {
        "Flag": "true", "Comment": "", "App": "ops", "Func": "tick", "Param": "p", "Timeout": 10,
        "Proxy": "", "Mode": "NP", "Rule": "0/10 * * * * ?"}})
    await cluster.app.call("cron", "stopCron", id=cid)
    assert pushed[1][0] == SELF_CRON_SET and pushed[1][1]["cron"]["Flag"] == "false"
    # A self cron never fires from the server.
    cluster.clock.set(T0 + 60)
    assert await one.elves.cron.run_due() is False
    info = await cluster.app.call("heartbeat", "getInfoByIp", agentip="10.0.0.1")
    assert [c["cron_id"] for c in info["cronlist"]] == [cid]
    await cluster.app.call("cron", "delCronByIpId", agentip="10.0.0.1", id=cid)
    assert pushed[2] == (SELF_CRON_DEL, {"id": cid})


async def test_self_cron_on_an_agent_that_cannot_take_it(cluster, one):
    agent = await cluster.agent("10.0.0.1")
    agent.client.add_method(SELF_CRON_SET, lambda params: {"ok": False})  # an agent that refuses it
    r = await cluster.app.call("cron", "setCronByIp", agentip="10.0.0.1", cron_type="self", rule="0 * * * * ?", ins=INS)
    assert r["flag"] == "false" and r["error"].startswith("[410.1]Send Job To Agent Fail"), r
    r = await cluster.app.call("cron", "setCronByIp", agentip="10.0.0.2", cron_type="self", rule="0 * * * * ?", ins=INS)
    assert r["error"].startswith("[410.1]") and "10.0.0.2" in r["error"]
    assert (await cluster.app.call("cron", "getCronListByIp", agentip="10.0.0.1"))["cron_list"] == []


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, code",
    [
        ({"agentip": "10.0.0.1", "rule": "0 0 12 * * *", "ins": INS}, "[403.5]Bad Cron Rule"),
        ({"agentip": "10.0.0.1", "rule": "* * * * *", "ins": INS}, "[403.5]Bad Cron Rule"),
        ({"agentip": "10.0.0.1", "rule": 5, "ins": INS}, "[403.5]"),
        ({"agentip": "10.0.0.999", "rule": "0 * * * * ?", "ins": INS}, "[403.1]"),
        ({"agentip": "10.0.0.9", "rule": "0 * * * * ?", "ins": INS}, "[401.6]Permission Denied"),
        ({"agentip": "10.0.0.1", "rule": "0 * * * * ?", "ins": {**INS, "app": "other"}}, "[413.2]"),
        ({"agentip": "10.0.0.1", "rule": "0 * * * * ?", "ins": {**INS, "mode": "X"}}, "[403.4]"),
        ({"agentip": "10.0.0.1", "rule": "0 * * * * ?", "ins": {**INS, "timeout": "soon"}}, "[403.8]"),
        ({"agentip": "10.0.0.1", "rule": "0 * * * * ?", "ins": "run it"}, "[403.0]"),
        ({"agentip": "10.0.0.1", "rule": "0 * * * * ?", "ins": INS, "cron_type": "elsewhere"}, "[403.0]"),
        ({"agentip": "10.0.0.1", "rule": "0 * * * * ?"}, "[403.0]"),
    ],
)
async def test_set_cron_errors(cluster, one, args, code):
    r = await cluster.app.call("cron", "setCronByIp", **args)
    assert r["flag"] == "false" and r["error"].startswith(code), r
    assert r["error_info"] == r["error"]
    assert r["mqt"] == "back" and r["mqs"] == "cron"


async def test_another_apps_crons_are_invisible(cluster, one):
    r = await cluster.app.call("cron", "setCronByIp", agentip="10.0.0.1", cron_type="center", rule="0 * * * * ?", ins=INS)
    key2 = await one.elves.supervisor.create_app(NULL_TENANT, "other")
    await one.elves.supervisor.grant(NULL_TENANT, "other", ips=["10.0.0.1"])
    other = ElvesClient("other", cluster.url, prefix=cluster.prefix, key=key2.auth_key)
    await other.connect()
    cluster.clients.append(other)
    assert (await other.call("cron", "getCronListByIp", agentip="10.0.0.1"))["cron_list"] == []
    for fn in ("stopCron", "deleteCron", "cronDetail"):
        assert (await other.call("cron", fn, id=r["cron_id"]))["error"].startswith("[411.1]")
    bad = await other.call("cron", "startCron", id=["not", "a", "string"])
    assert bad["error"].startswith("[403.9]")


# -- over HTTP ----------------------------------------------------------------------------


async def test_cron_functions_over_http(cluster, one):
    await cluster.agent("10.0.0.1")
    async with elves_http(one, tenant_admin) as client:
        async def post(mqf, **args):
            resp = await client.post("/api/elves", json={"mqt": "call", "mqs": "cron", "mqf": mqf, **args})
            assert resp.status == 200
            return await resp.json()

        r = await post("setcronbyip", agentip="10.0.0.1", cron_type="center", rule="0/10 * * * * ?", ins=INS)
        assert r["flag"] == "true", r
        r2 = await post("createCron", ip="10.0.0.1", app="ops", func="tick", rule="0 0 * * * ?")
        assert r2["flag"] == "true", r2
        assert len((await post("getCronListByIp", agentip="10.0.0.1"))["cron_list"]) == 2
        assert len((await post("setcronbyip", agentip="10.0.0.1"))["cron_list"]) == 2
        cluster.clock.set(T0 + 5)
        await until(one, lambda: len(one.results) == 1)
        detail = await post("cronDetail", id=r["cron_id"])
        assert detail["result"]["last_exec_result"]["worker_flag"] == 1
        assert (await post("stopCron", id=r2["id"]))["flag"] == "true"
        assert (await post("delCronByIpId", agentip="10.0.0.1", id=r2["id"]))["flag"] == "true"
        assert (await post("setcronbyip", agentip="10.0.0.1", id=r["cron_id"]))["flag"] == "true"
        assert (await post("deleteCron", id=r["cron_id"]))["error"].startswith("[411.1]")
        bad = await post("setCronByIp", agentip="10.0.0.1", cron_type="center", rule="nope", ins=INS)
        assert bad["error"].startswith("[403.5]")


async def test_a_database_outage_is_one_warning_and_one_line_when_it_ends(caplog):
    """While the database is down the firing loop retries every poll; the
    log gets a WARNING when the outage starts and an INFO when it ends, not
    a traceback per poll (logs stay readable through an outage)."""
    import logging
    import types

    from fleetrpc.errors import StoreUnavailableError
    from fleetrpc.services.elves.cron import CronService, CronSettings

    class Repo:
        calls = 0

        async def due_any_tenant(self, horizon, batch):
            Repo.calls += 1
            if Repo.calls <= 5:
                raise StoreUnavailableError("PostgreSQL is unavailable (connection refused)")
            return []

        async def purge_firings_any_tenant(self, cutoff):
            return None

        async def earliest_any_tenant(self):
            return None

    service = types.SimpleNamespace(db=None, dispatcher=None)
    cron = CronService(service, CronSettings(poll_interval_s=0.01))
    cron.repo = Repo()
    caplog.set_level(logging.INFO, logger="fleetrpc.elves")
    task = asyncio.ensure_future(cron._run())
    try:
        end = asyncio.get_running_loop().time() + 10
        while Repo.calls < 8:
            assert asyncio.get_running_loop().time() < end, "the loop did not keep trying"
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("fleetrpc.elves")]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert "unavailable" in lines[0][1] and "back" in lines[1][1]
