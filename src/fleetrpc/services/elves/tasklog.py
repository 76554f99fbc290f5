"""tasklog: the record of every task (sync, async, cron, queue) and its timings.

One row per instruction sent to one agent (:class:`~.store.TaskRow`), filled
in as the task goes (Elves' ``log_*_exec`` columns):

- at dispatch: ids, type, mode, agent, instruction, ``starttime``;
  ``result_flag`` 2 (running);
- the scheduler -> agent call: ``agent_sync_flag`` (1/0), ``_error``,
  ``_costtime`` (ms); a failed send ends the task (``result_flag`` 0);
- the worker's result: ``worker_flag`` (1 ok, 0 app failure, -1 system
  error), ``worker_message``, ``worker_costtime``, ``agent_callback_time``
  for async tasks; in mode NP this ends the task (``result_flag`` 1 when
  ``worker_flag`` is 1, else 0);
- mode P, the push to the app's processor: ``module_sync_flag``,
  ``_error``, ``_costtime`` (a failed push ends the task with 0);
- the processor's own result (``appProcessorResult``):
  ``module_callback_time``, ``processor_message``, ``processor_costtime``;
  ends the task with the processor's flag.

Functions: ``appProcessorResult`` (written ``appProcessorLog``),
``agentAsyncResult`` (written ``agentAsyncLog`` with an ``info``),
``getTaskByIds`` (written ``agentAsyncLog`` with only ``id``, or
``getTaskLogByIds``).  Times in replies are ``YYYY-MM-DD HH:MM:SS`` (UTC),
every value a string as in the seed (``""`` for a step not reached).

For other services::

    ids = await tasklog.start(tenant_id, caller="deploy", type="cron", ins=ins,
                              targets=[("10.0.0.5", device)], wire_id=wire)
    await tasklog.sent(tenant_id, [(ids[0], True, "", 12)])
    await tasklog.worker_result(tenant_id, row, flag=1, message="ok", costtime=40)

(the scheduler does all of this itself for what it sends; cron and queue use
:meth:`Scheduler.send_async`, not these, unless they record something the
scheduler never saw).
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from typing import Any

import msgspec

from .config import ElvesSettings
from .envelope import Envelope, Instruction
from .errors import Code, ElvesError
from .router import Alias, ElvesCall, ElvesRouter
from .store import TaskRepository, TaskRow

__all__ = ["TaskLog", "new_task_id", "render_task", "now_ms"]

#: Most task ids one getTaskByIds may ask for.
MAX_IDS = 1000

RUNNING, SUCCESS, FAILURE = 2, 1, 0


def new_task_id() -> str:
    """16 hex characters, as Elves' scheduler makes them."""
    return secrets.token_hex(8)


def now_ms() -> int:
    return int(time.time() * 1000)


def elves_time(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


_TIMES = frozenset({"starttime", "agent_callback_time", "module_callback_time", "endtime"})
_RENDERED = (
    "id", "type", "mode", "agent_ip", "app", "func", "instruct", "param", "starttime",
    "agent_sync_flag", "agent_sync_error", "agent_sync_costtime", "agent_callback_time",
    "worker_flag", "worker_message", "worker_costtime",
    "module_sync_flag", "module_sync_error", "module_sync_costtime", "module_callback_time",
    "processor_message", "processor_costtime", "endtime", "result_flag",
)


def render_task(row: TaskRow) -> dict[str, str]:
    """A task as getTaskByIds answers it: every field a string."""
    out = {}
    for name in _RENDERED:
        value = getattr(row, name)
        if name in _TIMES:
            out[name] = elves_time(value)
        else:
            out[name] = "" if value is None else str(value)
    return out


class _ProcessorInfo(msgspec.Struct):
    processor_sync_flag: Any = None
    processor_sync_error: str = ""
    processor_sync_costtime: int | float | str | None = None
    processor_message: str | None = None


class _ProcessorArgs(msgspec.Struct):
    id: str
    info: _ProcessorInfo


class _WorkerInfo(msgspec.Struct):
    worker_flag: int
    worker_result: str = ""
    worker_costtime: int | float | str | None = None
    agent_callback_time: Any = None


class _WorkerArgs(msgspec.Struct):
    id: str
    info: _WorkerInfo


class _IdsArgs(msgspec.Struct):
    id: list[str] | str


def _flag(value: Any) -> bool:
    """Elves writes flags as 1/0, "1"/"0", true/false or "true"/"false"."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true")
    return value is True or value == 1


def _ms(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return max(0, int(float(value)))
    except (TypeError, ValueError):
        raise ElvesError(Code.MALFORMED, f"Bad Argument: {value!r} is not a number of milliseconds") from None


class TaskLog:
    """Writes and reads the task log; serves the tasklog functions."""

    def __init__(self, repo: TaskRepository, settings: ElvesSettings | None = None) -> None:
        self.repo = repo
        self.settings = settings or ElvesSettings()

    # -- recording ------------------------------------------------------------

    async def start(
        self,
        tenant_id: str,
        *,
        caller: str,
        type: str,
        ins: Instruction,
        targets: list[tuple[str, str | None]],
        wire_id: str | None = None,
    ) -> list[str]:
        """Record one running task per ``(agent ip, device id)`` of
        ``targets``; returns their ids (in order).  ``ins`` is normalised;
        ``wire_id`` is the id the agents are sent (one for a whole
        fan-out), by which they report async results."""
        return (await self.start_many([(tenant_id, caller, type, ins, targets, wire_id or new_task_id())]))[0]

    async def start_many(
        self, sends: list[tuple[str, str, str, Instruction, list[tuple[str, str | None]], str]]
    ) -> list[list[str]]:
        """:meth:`start` for many sends, ``(tenant, caller, type, ins,
        targets, wire id)`` each, in one insert; the task ids per send."""
        now = now_ms()
        rows: list[TaskRow] = []
        out: list[list[str]] = []
        instructs: dict[int, str] = {}
        for tenant_id, caller, task_type, ins, targets, wire in sends:
            instruct = instructs.get(id(ins))
            if instruct is None:
                instruct = instructs[id(ins)] = msgspec.json.encode(ins).decode()
            ids = []
            for ip, device in targets:
                task_id = wire if len(targets) == 1 else new_task_id()
                ids.append(task_id)
                rows.append(TaskRow(
                    id=task_id, tenant_id=tenant_id, caller=caller, type=task_type, mode=ins.mode,
                    agent_ip=ip, device=device, wire_id=wire, app=ins.app, func=ins.func,
                    instruct=instruct, param=ins.param, timeout=int(ins.timeout), proxy=ins.proxy,
                    starttime=now,
                ))
            out.append(ids)
        if rows:
            await self.repo.insert_many(rows)
        return out

    def sent_fields(self, ok: bool, error: str, cost: int) -> dict[str, Any]:
        """The columns of how the send to the agent went; a task that did
        not reach its agent ends as failed."""
        fields: dict[str, Any] = {"agent_sync_flag": 1 if ok else 0, "agent_sync_error": error, "agent_sync_costtime": cost}
        if not ok:
            fields.update(result_flag=FAILURE, endtime=now_ms())
        return fields

    async def sent(self, tenant_id: str, outcomes: list[tuple[str, bool, str, int]]) -> None:
        """``[(task id, reached the agent, error, cost ms)]`` (:meth:`sent_fields`)."""
        await self.repo.update_each(tenant_id, [(t, self.sent_fields(ok, e, c)) for t, ok, e, c in outcomes])

    def worker_fields(self, mode: str, flag: int, message: str, costtime: int | None, callback_time: int | None) -> dict[str, Any]:
        """The columns a worker's result sets (and, in mode NP, the end)."""
        fields: dict[str, Any] = {"worker_flag": flag, "worker_message": message, "worker_costtime": costtime}
        if callback_time is not None:
            fields["agent_callback_time"] = callback_time
        if mode != "P":
            fields.update(result_flag=SUCCESS if flag == 1 else FAILURE, endtime=now_ms())
        return fields

    async def worker_results(self, tenant_id: str, changes: list[tuple[str, dict[str, Any]]]) -> None:
        """Apply the fields of :meth:`worker_fields` / :meth:`sent_fields`
        of many tasks at once."""
        await self.repo.update_each(tenant_id, changes)

    async def processor_pushed(self, tenant_id: str, task_id: str, ok: bool, error: str, costtime: int) -> None:
        fields: dict[str, Any] = {"module_sync_flag": 1 if ok else 0, "module_sync_error": error, "module_sync_costtime": costtime}
        if not ok:
            fields.update(result_flag=FAILURE, endtime=now_ms())
        await self.repo.update_each(tenant_id, [(task_id, fields)])

    async def processor_result(self, tenant_id: str, task_id: str, *, ok: bool, message: str, costtime: int | None) -> None:
        now = now_ms()
        await self.repo.update_each(tenant_id, [(task_id, {
            "module_callback_time": now, "processor_message": message, "processor_costtime": costtime,
            "result_flag": SUCCESS if ok else FAILURE, "endtime": now,
        })])

    # -- reading --------------------------------------------------------------

    async def get(self, tenant_id: str, ids: list[str]) -> list[TaskRow]:
        """The tenant's tasks of ``ids``, in the order asked (unknown ones left out)."""
        rows = {r.id: r for r in await self.repo.get_many(tenant_id, list(dict.fromkeys(ids)))}
        return [rows[i] for i in dict.fromkeys(ids) if i in rows]

    async def purge(self, before_ms: int) -> int:
        """Retention: delete tasks started before ``before_ms`` (every tenant)."""
        return await self.repo.purge_any_tenant(before_ms)

    # -- Elves functions --------------------------------------------------------

    def register(self, router: ElvesRouter) -> None:
        router.register("tasklog", "appProcessorResult", self.app_processor_result, aliases=["appProcessorLog"])
        router.register(
            "tasklog", "agentAsyncResult", self.agent_async_result,
            aliases=[Alias("agentAsyncLog", when=lambda env: env.has("info"))],
        )
        router.register("tasklog", "getTaskByIds", self.get_task_by_ids, aliases=["agentAsyncLog", "getTaskLogByIds"])
        router.register("storage", "getTaskLogByIds", self.get_task_by_ids, aliases=["getTaskByIds"])

    async def _own_task(self, call: ElvesCall, task_id: str) -> TaskRow:
        """The task, if it is the calling app's (a tenant admin over HTTP
        without an app may touch any task of the tenant)."""
        rows = await self.repo.get_many(call.tenant_id, [task_id])
        if not rows or (call.caller is not None and rows[0].caller != call.caller.app) or (call.caller is None and call.via == "mqtt"):
            raise ElvesError(Code.TASK_NOT_FOUND, f"Task Not Found: {task_id!r}")
        return rows[0]

    async def app_processor_result(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        args = env.args(_ProcessorArgs)
        await self._own_task(call, args.id)
        info = args.info
        message = info.processor_message if info.processor_message is not None else info.processor_sync_error
        await self.processor_result(
            call.tenant_id, args.id, ok=_flag(info.processor_sync_flag), message=message,
            costtime=_ms(info.processor_sync_costtime),
        )
        return {"id": args.id}

    async def agent_async_result(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        args = env.args(_WorkerArgs)
        row = await self._own_task(call, args.id)
        info = args.info
        if info.worker_flag not in (1, 0, -1):
            raise ElvesError(Code.MALFORMED, f"Bad Argument: worker_flag must be 1, 0 or -1, not {info.worker_flag!r}")
        callback = _ms(info.agent_callback_time) or now_ms()
        fields = self.worker_fields(row.mode, info.worker_flag, info.worker_result, _ms(info.worker_costtime), callback)
        await self.worker_results(call.tenant_id, [(args.id, fields)])
        return {"id": args.id}

    async def get_task_by_ids(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        if not env.has("id") and env.has("ids"):
            env.body["id"] = env.body["ids"]
        args = env.args(_IdsArgs)
        ids = [args.id] if isinstance(args.id, str) else args.id
        if len(ids) > MAX_IDS:
            raise ElvesError(Code.MALFORMED, f"Bad Argument: at most {MAX_IDS} ids at once")
        rows = await self.get(call.tenant_id, ids)
        if call.caller is not None:
            rows = [r for r in rows if r.caller == call.caller.app]
        elif call.via == "mqtt":
            rows = []
        found = {r.id for r in rows}
        return {"info": [render_task(r) for r in rows], "notfound": [i for i in dict.fromkeys(ids) if i not in found]}
