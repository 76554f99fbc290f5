"""queue: tasks with dependencies on real agents through a real broker; a
failed parent fails its children (Elves leaves them pending forever);
stop; every error; Elves' queue-service names and its OpenAPI's short ones;
over MQTT and HTTP."""

from __future__ import annotations

import asyncio

import pytest

from fleetrpc.services.elves import NULL_TENANT
from tests.elves.conftest import elves_http, tenant_admin

pytestmark = pytest.mark.mqtt

PROXY = "python3|worker.py"


class Watch:
    """Wakes on every queue result the scheduler hands out."""

    def __init__(self, rig) -> None:
        self.event = asyncio.Event()
        rig.elves.scheduler.on_result("queue", self._hook)

    async def _hook(self, row) -> None:
        self.event.set()

    async def until(self, check, timeout: float = 15.0):
        async def wait():
            while True:
                result = await check()
                if result:
                    return result
                self.event.clear()
                try:
                    await asyncio.wait_for(self.event.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass  # a task may end without a worker result (a failed send)

        return await asyncio.wait_for(wait(), timeout)


async def build(app, tasks: list[tuple[str, str, str, str | None]], mqf_add="addTask"):
    """Create a queue of ``(name, ip, func, parent name)``; return (queue id, {name: task id})."""
    r = await app.call("queue", "createQueue", app="ops")
    assert r["flag"] == "true", r
    qid, ids = r["id"], {}
    for name, ip, func, parent in tasks:
        args = {"queue_id": qid, "ip": ip, "func": func, "param": name, "proxy": PROXY}
        if parent:
            args["depend_task_id"] = ids[parent]
        t = await app.call("queue", mqf_add, **args)
        assert t["flag"] == "true", t
        ids[name] = t["id"]
    return qid, ids


def finished(app, qid):
    async def check():
        r = await app.call("queue", "queueResult", queue_id=qid)
        return r if r["status"] in ("finished", "stopped") and all(
            t["status"] not in ("pending", "running") for t in r["result"].values()) else None
    return check


async def test_children_run_after_their_parent_succeeds(rig):
    for ip in ("10.0.0.1", "10.0.0.2"):
        await rig.agent(ip)
    watch = Watch(rig)
    qid, ids = await build(rig.app, [
        ("a", "10.0.0.1", "echo", None), ("b", "10.0.0.2", "echo", "a"), ("c", "10.0.0.1", "echo", "b"),
        ("d", "10.0.0.2", "echo", None), ("e", "10.0.0.2", "echo", "a"),
    ])
    before = await rig.app.call("queue", "result", queue_id=qid)
    assert before["status"] == "pending" and {t["status"] for t in before["result"].values()} == {"pending"}
    assert (await rig.app.call("queue", "commitQueue", queue_id=qid))["flag"] == "true"
    r = await watch.until(finished(rig.app, qid))
    assert r["status"] == "finished"
    res = r["result"]
    assert {n: res[ids[n]]["status"] for n in ids} == dict.fromkeys(ids, "finish")
    assert res[ids["b"]]["worker_message"] == "ops:echo:b" and res[ids["c"]]["depend_task_id"] == ids["b"]
    assert all(res[ids[n]]["flag"] == "true" and res[ids[n]]["worker_flag"] == 1 for n in ids)
    # The task log has them all (type queue), each child started after its parent ended.
    log = await rig.app.call("tasklog", "getTaskByIds", id=[res[ids[n]]["id"] for n in "abc"])
    a, b, c = log["info"]
    assert {t["type"] for t in log["info"]} == {"queue"} and all(t["result_flag"] == "1" for t in log["info"])
    assert a["endtime"] <= b["starttime"] and b["endtime"] <= c["starttime"]


async def test_a_failed_parent_fails_its_descendants(rig):
    await rig.agent("10.0.0.1")
    watch = Watch(rig)
    qid, ids = await build(rig.app, [
        ("a", "10.0.0.1", "fail", None), ("b", "10.0.0.1", "echo", "a"), ("c", "10.0.0.1", "echo", "b"),
        ("d", "10.0.0.1", "echo", None), ("e", "10.0.0.1", "echo", "d"),
    ])
    await rig.app.call("queue", "commit", queue_id=qid)
    r = await watch.until(finished(rig.app, qid))
    res = r["result"]
    assert r["status"] == "finished"
    assert res[ids["a"]]["status"] == "failed" and res[ids["a"]]["worker_flag"] == 0
    assert res[ids["a"]]["worker_message"] == "it went wrong"
    assert res[ids["b"]]["status"] == "failed" and res[ids["b"]]["error"] == f"[412.5]Depend Task Failed: {ids['a']}"
    assert res[ids["c"]]["error"] == f"[412.5]Depend Task Failed: {ids['b']}" and res[ids["c"]]["id"] == ""
    assert res[ids["d"]]["status"] == "finish" and res[ids["e"]]["status"] == "finish"


async def test_an_unreachable_agent_fails_the_task_and_its_children(rig):
    await rig.agent("10.0.0.1")
    watch = Watch(rig)
    qid, ids = await build(rig.app, [("a", "10.0.0.3", "echo", None), ("b", "10.0.0.1", "echo", "a")])
    await rig.app.call("queue", "commit", queue_id=qid)
    r = await watch.until(finished(rig.app, qid))
    assert r["result"][ids["a"]]["error"].startswith("[414.1]Agent Info Not Found")
    assert r["result"][ids["b"]]["error"].startswith("[412.5]")
    log = await rig.app.call("tasklog", "getTaskByIds", id=[r["result"][ids["a"]]["id"]])
    assert log["info"][0]["result_flag"] == "0" and log["info"][0]["type"] == "queue"


async def test_stop_leaves_running_tasks_and_stops_pending_ones(rig):
    await rig.agent("10.0.0.1")
    watch = Watch(rig)
    r = await rig.app.call("queue", "create", app="ops")
    qid = r["id"]
    a = await rig.app.call("queue", "addtask", queue_id=qid, ip="10.0.0.1", func="sleep", param={"s": 0.3}, proxy=PROXY)
    b = await rig.app.call("queue", "addtask", queue_id=qid, ip="10.0.0.1", func="echo", proxy=PROXY,
                           depend_task_id=a["id"])
    await rig.app.call("queue", "commit", queue_id=qid)
    stopped = await rig.app.call("queue", "stop", queue_id=qid)
    assert stopped["result"] == {a["id"]: "running", b["id"]: "stopped"}
    r = await watch.until(finished(rig.app, qid))
    assert r["status"] == "stopped"
    assert r["result"][a["id"]]["status"] == "finish" and r["result"][b["id"]]["status"] == "stopped"


async def test_queue_errors(rig):
    app = rig.app
    r = await app.call("queue", "createQueue", app="ops")
    qid = r["id"]
    t = await app.call("queue", "addTask", queue_id=qid, ip="10.0.0.1", func="echo")
    cases = [
        (("addTask", {"queue_id": "FFFFFFFFFFFFFFFF", "ip": "10.0.0.1", "func": "echo"}), "[412.1]Queue Not Found"),
        (("addTask", {"queue_id": qid, "ip": "10.0.0.1", "func": "echo", "depend_task_id": "nope"}), "[412.4]Depend Task Not Found"),
        (("addTask", {"queue_id": qid, "ip": "10.0.0.77", "func": "echo"}), "[401.6]Permission Denied"),
        (("addTask", {"queue_id": qid, "ip": "10.0.0", "func": "echo"}), "[403.1]"),
        (("addTask", {"queue_id": qid, "ip": "10.0.0.1", "func": ""}), "[403.7]"),
        (("addTask", {"queue_id": qid, "ip": "10.0.0.1", "func": "echo", "mode": "sometimes"}), "[403.4]"),
        (("addTask", {"queue_id": qid, "ip": "10.0.0.1", "func": "echo", "app": "other"}), "[413.2]"),
        (("addTask", {"queue_id": 42, "ip": "10.0.0.1", "func": "echo"}), "[403.6]"),
        (("addTask", {"ip": "10.0.0.1", "func": "echo"}), "[403.6]"),
        (("createQueue", {"app": "other"}), "[413.2]"),
        (("queueResult", {"queue_id": ["x"]}), "[403.6]"),
        (("stopQueue", {"queue_id": "FFFFFFFFFFFFFFFF"}), "[412.1]"),
    ]
    for (fn, args), code in cases:
        r = await app.call("queue", fn, **args)
        assert r["flag"] == "false" and r["error"].startswith(code), (fn, args, r)
    # Another app of the tenant sees nothing of this queue.
    key2 = await rig.elves.supervisor.create_app(NULL_TENANT, "other")
    other = await rig.client("other", key=key2.auth_key)
    assert (await other.call("queue", "queueResult", queue_id=qid))["error"].startswith("[412.1]")
    # A queue whose agent never answers: commit once, then no more tasks, no second commit.
    assert (await app.call("queue", "commit", queue_id=qid))["flag"] == "true"
    again = await app.call("queue", "commit", queue_id=qid)
    assert again["error"].startswith("[412.2]Queue Status Incorrect")
    late = await app.call("queue", "addTask", queue_id=qid, ip="10.0.0.1", func="echo", depend_task_id=t["id"])
    assert late["error"].startswith("[412.2]")
    empty = (await app.call("queue", "create", app="ops"))["id"]
    await app.call("queue", "commit", queue_id=empty)
    assert (await app.call("queue", "result", queue_id=empty))["status"] == "finished"


async def test_queue_over_http(rig):
    await rig.agent("10.0.0.1")
    watch = Watch(rig)
    async with elves_http(rig, tenant_admin) as client:
        async def post(mqf, **args):
            resp = await client.post("/api/elves", json={"mqt": "call", "mqs": "queue", "mqf": mqf, **args})
            assert resp.status == 200
            return await resp.json()

        qid = (await post("create", app="ops"))["id"]
        a = await post("addTask", queue_id=qid, app="ops", ip="10.0.0.1", func="echo", proxy=PROXY)
        b = await post("addtask", id=qid, app="ops", ip="10.0.0.1", func="hello", param={"name": "q"},
                       depend_task_id=a["id"])
        assert (await post("commitQueue", queue_id=qid))["flag"] == "true"

        async def check():
            r = await post("queueResult", queue_id=qid)
            return r if r["status"] == "finished" else None

        r = await watch.until(check)
        assert r["result"][b["id"]]["worker_message"] == "hello q"
        assert (await post("create", app="ghost"))["error"].startswith("[413.2]")


async def test_a_large_queue_is_not_read_whole_at_every_task_end(rig):
    """Each task's end looked for its children and for the queue's end by
    reading every task of the queue, twice: a queue of MAX_TASKS (10,000)
    tasks read 2 x 10,000^2 rows while it ran.  The rows read stay linear."""
    n = 150
    queue = rig.elves.queue
    r = await rig.app.call("queue", "createQueue", app="ops")
    qid = r["id"]
    for i in range(n):  # on an IP without an agent: each fails at once
        t = await rig.app.call("queue", "addTask", queue_id=qid, ip="10.0.0.3", func="echo", param=str(i),
                               proxy=PROXY)
        assert t["flag"] == "true", t
    read = [0]
    tasks = queue.repo.tasks

    async def counted(tenant_id, queue_id):
        rows = await tasks(tenant_id, queue_id)
        read[0] += len(rows)
        return rows

    queue.repo.tasks = counted
    assert (await rig.app.call("queue", "commit", queue_id=qid))["flag"] == "true"
    r = await Watch(rig).until(finished(rig.app, qid))
    assert r["status"] == "finished" and {t["status"] for t in r["result"].values()} == {"failed"}
    assert read[0] <= 5 * n, read[0]  # (the commit reads them once, queueResult once per look)
