"""queue: tasks with dependencies, run on agents in order.

A queue belongs to one app.  ``createQueue(app)`` -> ``id``; while it is
``pending``, ``addTask(queue_id, ip, func, mode, param, timeout, proxy,
depend_task_id)`` -> ``id`` adds a task (its parent, if any, must be a task
of the same queue added before: a tree); ``commitQueue(queue_id)`` starts
every task without a parent through the scheduler's async path (``type =
"queue"``); when a task's worker succeeds (``worker_flag`` 1) its children
start; when it fails -- the worker said so, or the instruction never reached
the agent -- its children, and theirs, fail too with ``[412.5]Depend Task
Failed`` (Elves leaves them pending forever); ``stopQueue(queue_id)`` stops
the tasks not started yet (running ones finish) and answers each task's
status; ``queueResult(queue_id)`` answers every task's status and result.
Every task is in the task log (``type = "queue"``).

Names: Elves' OpenAPI paths are ``create``, ``addtask``, ``commit``,
``stop``, ``result``, its queue service's functions ``createQueue``,
``addTask``, ``commitQueue``, ``stopQueue``, ``queueResult``; both are
registered.  The queue id is read from ``queue_id`` or ``id``.

Task statuses: ``pending``, ``running``, ``finish``, ``failed``,
``stopped``.  Queue statuses: ``pending``, ``running``, ``finished``,
``stopped``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import msgspec

from .envelope import Envelope, Instruction, check_ip
from .errors import Code, ElvesError
from .router import ElvesCall, ElvesRouter
from .tasklog import now_ms

__all__ = ["QueueService", "QueueRepository", "DEPEND_FAILED", "install"]

log = logging.getLogger("fleetrpc.elves.queue")

#: fleetrpc's code for a task that never ran because its parent failed.
DEPEND_FAILED = "412.5"
#: Most tasks in one queue.
MAX_TASKS = 10_000

PENDING, RUNNING, FINISH, FAILED, STOPPED, FINISHED = "pending", "running", "finish", "failed", "stopped", "finished"


class QueueTask(msgspec.Struct, kw_only=True):
    id: str
    queue_id: str
    tenant_id: str
    agent_ip: str
    ins: str
    depend_task_id: str | None
    status: str
    task_log_id: str | None = None
    error: str | None = None
    worker_flag: int | None = None
    worker_message: str | None = None
    worker_costtime: int | None = None
    create_time: int = 0
    end_time: int | None = None


_TASK_COLUMNS = ("id", "queue_id", "tenant_id", "agent_ip", "ins", "depend_task_id", "status", "task_log_id",
                 "error", "worker_flag", "worker_message", "worker_costtime", "create_time", "end_time")
_TASK_SELECT = ", ".join(_TASK_COLUMNS)


def _task(r: Any) -> QueueTask:
    return QueueTask(**{c: r[i] for i, c in enumerate(_TASK_COLUMNS)})


class QueueRepository:
    """``elves_queue`` and ``elves_queue_task``."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def create(self, tenant_id: str, caller: str) -> str:
        queue_id = secrets.token_hex(8).upper()
        await self.db.execute(
            "INSERT INTO elves_queue (id, tenant_id, caller, status, create_time) VALUES ($1, $2, $3, $4, $5)",
            queue_id, tenant_id, caller, PENDING, now_ms())
        return queue_id

    async def get(self, tenant_id: str, queue_id: str) -> tuple[str, str] | None:
        """``(caller, status)`` of the queue."""
        r = await self.db.fetchrow("SELECT caller, status FROM elves_queue WHERE tenant_id = $1 AND id = $2",
                                   tenant_id, queue_id)
        return None if r is None else (r[0], r[1])

    async def set_status(self, tenant_id: str, queue_id: str, status: str, *, only_if: str | None = None) -> bool:
        sql = "UPDATE elves_queue SET status = $3"
        sql += ", commit_time = $4" if status == RUNNING else ", end_time = $4"
        sql += " WHERE tenant_id = $1 AND id = $2"
        args = [tenant_id, queue_id, status, now_ms()]
        if only_if is not None:
            sql += " AND status = $5"
            args.append(only_if)
        return await self.db.execute(sql, *args) > 0

    async def add_task(self, task: QueueTask) -> None:
        marks = ", ".join(f"${i + 1}" for i in range(len(_TASK_COLUMNS)))
        await self.db.execute(f"INSERT INTO elves_queue_task ({_TASK_SELECT}) VALUES ({marks})",
                              *(getattr(task, c) for c in _TASK_COLUMNS))

    async def tasks(self, tenant_id: str, queue_id: str) -> list[QueueTask]:
        rows = await self.db.fetch(
            f"SELECT {_TASK_SELECT} FROM elves_queue_task WHERE tenant_id = $1 AND queue_id = $2 "
            "ORDER BY create_time, id", tenant_id, queue_id)
        return [_task(r) for r in rows]

    async def children(self, tenant_id: str, queue_id: str, parent: str) -> list[QueueTask]:
        """The pending tasks that depend on ``parent``."""
        rows = await self.db.fetch(
            f"SELECT {_TASK_SELECT} FROM elves_queue_task WHERE tenant_id = $1 AND queue_id = $2 "
            "AND depend_task_id = $3 AND status = $4 ORDER BY create_time, id", tenant_id, queue_id, parent, PENDING)
        return [_task(r) for r in rows]

    async def unfinished(self, tenant_id: str, queue_id: str) -> bool:
        """Whether a task of the queue is still pending or running."""
        return await self.db.fetchval(
            "SELECT 1 FROM elves_queue_task WHERE tenant_id = $1 AND queue_id = $2 AND status IN ($3, $4) LIMIT 1",
            tenant_id, queue_id, PENDING, RUNNING) is not None

    async def count(self, tenant_id: str, queue_id: str) -> int:
        return int(await self.db.fetchval(
            "SELECT COUNT(*) FROM elves_queue_task WHERE tenant_id = $1 AND queue_id = $2", tenant_id, queue_id))

    async def task(self, tenant_id: str, task_id: str) -> QueueTask | None:
        r = await self.db.fetchrow(f"SELECT {_TASK_SELECT} FROM elves_queue_task WHERE tenant_id = $1 AND id = $2",
                                   tenant_id, task_id)
        return None if r is None else _task(r)

    async def by_log_id(self, tenant_id: str, log_id: str) -> QueueTask | None:
        r = await self.db.fetchrow(
            f"SELECT {_TASK_SELECT} FROM elves_queue_task WHERE tenant_id = $1 AND task_log_id = $2",
            tenant_id, log_id)
        return None if r is None else _task(r)

    async def start(self, tenant_id: str, task_id: str, log_id: str | None) -> bool:
        """pending -> running (only once)."""
        n = await self.db.execute(
            "UPDATE elves_queue_task SET status = $3, task_log_id = $4 WHERE tenant_id = $1 AND id = $2 "
            "AND status = $5", tenant_id, task_id, RUNNING, log_id, PENDING)
        return n > 0

    async def set_log_id(self, tenant_id: str, task_id: str, log_id: str) -> None:
        await self.db.execute("UPDATE elves_queue_task SET task_log_id = $3 WHERE tenant_id = $1 AND id = $2",
                              tenant_id, task_id, log_id)

    async def end(self, tenant_id: str, task_id: str, status: str, *, from_status: str, error: str = "",
                  worker_flag: int | None = None, message: str | None = None, cost: int | None = None) -> bool:
        """Move a task from ``from_status`` to its end; False when another
        path ended it first (so that children start once)."""
        n = await self.db.execute(
            "UPDATE elves_queue_task SET status = $3, error = $4, worker_flag = $5, worker_message = $6, "
            "worker_costtime = $7, end_time = $8 WHERE tenant_id = $1 AND id = $2 AND status = $9",
            tenant_id, task_id, status, error, worker_flag, message, cost, now_ms(), from_status)
        return n > 0


# -- arguments -------------------------------------------------------------------------


class _CreateArgs(msgspec.Struct):
    app: str = ""


class _AddArgs(msgspec.Struct):
    ip: str
    func: str
    mode: str = ""
    app: str = ""
    param: Any = ""
    timeout: int | float | str | None = None
    proxy: str = ""
    depend_task_id: str | None = None


def _queue_id_of(env: Envelope) -> str:
    value = env.get("queue_id", env.get("id"))
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise ElvesError(Code.BAD_QUEUE_ID, f"Bad Queue Id: {value!r}")
    return value.strip()


class QueueService:
    """The queue functions and the dependency rule."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.repo = QueueRepository(service.db)

    def register(self, router: ElvesRouter) -> None:
        router.register("queue", "createQueue", self.create_queue, aliases=["create"])
        router.register("queue", "addTask", self.add_task, aliases=["addtask"])
        router.register("queue", "commitQueue", self.commit_queue, aliases=["commit"])
        router.register("queue", "stopQueue", self.stop_queue, aliases=["stop"])
        router.register("queue", "queueResult", self.queue_result, aliases=["result"])

    async def start(self) -> None:
        self.service.scheduler.on_result("queue", self._on_result)

    # -- helpers -------------------------------------------------------------------

    async def _app(self, call: ElvesCall, app: str) -> Any:
        """The calling app (a tenant admin over HTTP acts as ``app``)."""
        if call.caller is None and call.via == "http" and app:
            call.caller = await self.service.supervisor.repo.get_app(call.tenant_id, app)
            if call.caller is None:
                raise ElvesError(Code.APP_NOT_FOUND, f"App Not Found: {app!r}")
        if call.caller is None:
            raise ElvesError(Code.MISSING_AUTH, "Missing Parameter: key (the calling app's auth key)")
        if app and app != call.caller.app:
            raise ElvesError(Code.APP_NOT_FOUND, f"App Not Found: {app!r} is not the app of this key")
        return call.caller

    async def _queue(self, call: ElvesCall, queue_id: str) -> tuple[str, str]:
        found = await self.repo.get(call.tenant_id, queue_id)
        if found is None or (call.caller is not None and found[0] != call.caller.app) or (
            call.caller is None and call.via != "http"
        ):
            raise ElvesError(Code.QUEUE_NOT_FOUND, f"Queue Not Found: {queue_id!r}")
        return found

    # -- the functions ----------------------------------------------------------------

    async def create_queue(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        app = env.args(_CreateArgs).app
        key = await self._app(call, app.strip() if isinstance(app, str) else "")
        queue_id = await self.repo.create(call.tenant_id, key.app)
        return {"id": queue_id, "result": {"id": queue_id}}

    async def add_task(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        queue_id = _queue_id_of(env)
        args = env.args(_AddArgs)
        caller, status = await self._queue(call, queue_id)
        key = await self._app(call, caller)
        if args.app and args.app != caller:
            raise ElvesError(Code.APP_NOT_FOUND, f"App Not Found: {args.app!r} is not the app of queue {queue_id}")
        if status != PENDING:
            raise ElvesError(Code.QUEUE_STATUS, f"Queue Status Incorrect: {status} (tasks are added before commit)")
        ip = check_ip(args.ip)
        ins = Instruction(app=caller, func=args.func, mode=args.mode, param=args.param,
                          timeout=args.timeout, proxy=args.proxy).normalised()
        await self.service.supervisor.authorize(call, [ip], app=key.app)
        parent = args.depend_task_id.strip() if isinstance(args.depend_task_id, str) else ""
        if parent:
            found = await self.repo.task(call.tenant_id, parent)
            if found is None or found.queue_id != queue_id:
                raise ElvesError(Code.DEPEND_TASK_NOT_FOUND, f"Depend Task Not Found: {parent!r}")
        if await self.repo.count(call.tenant_id, queue_id) >= MAX_TASKS:
            raise ElvesError(Code.MALFORMED, f"Bad Argument: a queue holds at most {MAX_TASKS} tasks")
        task = QueueTask(id=secrets.token_hex(8).upper(), queue_id=queue_id, tenant_id=call.tenant_id, agent_ip=ip,
                         ins=msgspec.json.encode(ins).decode(), depend_task_id=parent or None, status=PENDING,
                         create_time=now_ms())
        await self.repo.add_task(task)
        return {"id": task.id, "result": {"id": task.id, "queue_id": queue_id}}

    async def commit_queue(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        queue_id = _queue_id_of(env)
        caller, status = await self._queue(call, queue_id)
        if not await self.repo.set_status(call.tenant_id, queue_id, RUNNING, only_if=PENDING):
            raise ElvesError(Code.QUEUE_STATUS, f"Queue Status Incorrect: {status} (only a pending queue commits)")
        tasks = await self.repo.tasks(call.tenant_id, queue_id)
        await self._run(call.tenant_id, caller, [t for t in tasks if t.depend_task_id is None])
        await self._maybe_finished(call.tenant_id, queue_id)
        return {"id": queue_id}

    async def stop_queue(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        queue_id = _queue_id_of(env)
        await self._queue(call, queue_id)
        for t in await self.repo.tasks(call.tenant_id, queue_id):
            if t.status == PENDING:
                await self.repo.end(call.tenant_id, t.id, STOPPED, from_status=PENDING, error="stopped")
        await self.repo.set_status(call.tenant_id, queue_id, STOPPED)
        tasks = await self.repo.tasks(call.tenant_id, queue_id)
        return {"result": {t.id: t.status for t in tasks}}

    async def queue_result(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        queue_id = _queue_id_of(env)
        _, status = await self._queue(call, queue_id)
        tasks = await self.repo.tasks(call.tenant_id, queue_id)
        return {"status": status, "result": {t.id: render_task(t) for t in tasks}}

    # -- running ---------------------------------------------------------------------

    async def _run(self, tenant_id: str, caller: str, tasks: list[QueueTask]) -> None:
        """Send each task (all at once); a task that cannot be sent fails
        with its descendants."""
        await asyncio.gather(*(self._run_one(tenant_id, caller, t) for t in tasks))

    async def _run_one(self, tenant_id: str, caller: str, task: QueueTask) -> None:
        if not await self.repo.start(tenant_id, task.id, None):
            return  # stopped, or started by another path
        ins = msgspec.json.decode(task.ins, type=Instruction)
        try:
            done = (await self.service.scheduler.send_async(tenant_id, caller, [task.agent_ip], ins, type="queue"))[0]
        except Exception as exc:  # a bug or the store: the task must not stay running
            log.exception("queue task %s could not be sent", task.id)
            await self._finish(tenant_id, task, ok=False, error=f"[{Code.INTERNAL}]Internal Error: {type(exc).__name__}")
            return
        await self.repo.set_log_id(tenant_id, task.id, done.task_id)
        if not done.ok:
            await self._finish(tenant_id, task, ok=False, error=done.error)
            return
        # The agent may have reported before the task knew its log id (the
        # result hook then found nothing): catch up from the task log.
        logged = await self.service.tasklog.get(tenant_id, [done.task_id])
        if logged and logged[0].worker_flag is not None:
            await self._on_result(logged[0])

    async def _on_result(self, row: Any) -> None:
        task = await self.repo.by_log_id(row.tenant_id, row.id)
        if task is None:
            return
        ok = row.worker_flag == 1
        await self._finish(row.tenant_id, task, ok=ok, error="", worker_flag=row.worker_flag,
                           message=row.worker_message, cost=row.worker_costtime)

    async def _finish(self, tenant_id: str, task: QueueTask, *, ok: bool, error: str, worker_flag: int | None = None,
                      message: str | None = None, cost: int | None = None) -> None:
        if not await self.repo.end(tenant_id, task.id, FINISH if ok else FAILED, from_status=RUNNING, error=error,
                                   worker_flag=worker_flag, message=message, cost=cost):
            return  # already ended (the result came twice, or by both paths)
        # (the children, and whether the queue is done, are asked of the
        # database: reading the whole queue at every task's end made a
        # queue of n tasks read n^2 rows)
        if ok:
            queue = await self.repo.get(tenant_id, task.queue_id)
            if queue is not None and queue[1] == RUNNING:
                await self._run(tenant_id, queue[0], await self.repo.children(tenant_id, task.queue_id, task.id))
        else:
            await self._fail_descendants(tenant_id, task.queue_id, task.id)
        await self._maybe_finished(tenant_id, task.queue_id)

    async def _fail_descendants(self, tenant_id: str, queue_id: str, parent: str) -> None:
        stack = [parent]
        while stack:
            failed_parent = stack.pop()
            for t in await self.repo.children(tenant_id, queue_id, failed_parent):
                if await self.repo.end(tenant_id, t.id, FAILED, from_status=PENDING,
                                       error=f"[{DEPEND_FAILED}]Depend Task Failed: {failed_parent}"):
                    stack.append(t.id)

    async def _maybe_finished(self, tenant_id: str, queue_id: str) -> None:
        if not await self.repo.unfinished(tenant_id, queue_id):
            await self.repo.set_status(tenant_id, queue_id, FINISHED, only_if=RUNNING)


def render_task(t: QueueTask) -> dict[str, Any]:
    """A task as queueResult answers it (Elves' fields)."""
    ended = t.status in (FINISH, FAILED, STOPPED)
    return {
        "status": t.status,
        "depend_task_id": t.depend_task_id or "",
        "flag": ("true" if t.status == FINISH else "false") if ended else "",
        "error": t.error or "",
        "id": t.task_log_id or "",
        "agent_ip": t.agent_ip,
        "worker_flag": "" if t.worker_flag is None else t.worker_flag,
        "worker_message": t.worker_message or "",
        "worker_costtime": "" if t.worker_costtime is None else t.worker_costtime,
    }


def install(service: Any) -> None:
    service.queue = QueueService(service)
    service.queue.register(service.router)


async def start(service: Any) -> None:
    await service.queue.start()
