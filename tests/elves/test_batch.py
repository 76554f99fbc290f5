"""The scheduler's batch entry: many distinct async sends (a cron second with
``--distinct`` instructions) cost one task-log insert and one update per
column set, not two transactions per send; each send still gets its own
outcome, its own task and its agent's result."""

from __future__ import annotations

import asyncio

import pytest

from fleetrpc.services.elves import NULL_TENANT, Instruction
from fleetrpc.services.elves.scheduler import Send

pytestmark = pytest.mark.mqtt


async def test_many_distinct_sends_in_one_write(rig):
    await rig.agent("10.0.0.1")
    await rig.agent("10.0.0.2")
    writes: list[str] = []
    executemany = rig.db.executemany

    async def counted(sql, args):
        # The batch's own writes: the rows, then how each send went (the
        # agents' results, arriving meanwhile, are updates of their own).
        if "INSERT INTO elves_task" in sql or ("UPDATE elves_task" in sql and "agent_sync_flag" in sql):
            writes.append(sql.split()[0])
        return await executemany(sql, args)

    rig.db.executemany = counted
    results: list = []
    all_in = asyncio.Event()

    async def on_result(row):
        results.append(row)
        if len(results) == 40:
            all_in.set()

    rig.elves.scheduler.on_result("cron", on_result)
    ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # 10.0.0.3 has no agent
    sends = [Send(NULL_TENANT, "ops", [ips[i % 3]], Instruction(app="ops", func="hello", param=f'{{"name": "{i}"}}'))
             for i in range(60)]
    done = await rig.elves.scheduler.send_async_batch(sends, type="cron")
    assert writes.count("INSERT") == 1 and writes.count("UPDATE") <= 2, writes  # ok and failed column sets
    assert [len(d) for d in done] == [1] * 60
    for i, (d,) in enumerate(done):
        assert d.ip == ips[i % 3]
        assert d.ok == (i % 3 != 2), d
        if not d.ok:
            assert d.error.startswith("[414.1]")
    assert len({d.task_id for (d,) in done}) == 60
    await asyncio.wait_for(all_in.wait(), 10)
    by_task = {r.id: r for r in results}
    for i, (d,) in enumerate(done):
        if d.ok:
            assert by_task[d.task_id].worker_message == f"hello {i}"
    failed = await rig.elves.tasklog.get(NULL_TENANT, [d.task_id for (d,) in done if not d.ok])
    assert len(failed) == 20 and all(t.result_flag == 0 and t.agent_sync_flag == 0 for t in failed)
