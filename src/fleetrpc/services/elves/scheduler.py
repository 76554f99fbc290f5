"""scheduler: run an instruction on agents, synchronously or not.

``sendSync(agentip, ins)`` sends ``ins{mode, app, func, param, timeout,
proxy}`` to the agent at ``agentip`` and answers, once the worker is done,
``info{agent_sync_flag, agent_sync_error, agent_sync_costtime, worker_flag,
worker_result, worker_costtime, id}``.  ``sendAsync`` answers as soon as the
agent accepted the instruction (``info{agent_sync_*, id}``); the agent
reports the worker's result later (:data:`AGENT_RESULT`), which is logged
and, in mode P, forwarded to the app's processor.

``agentip`` may be a list: the instruction then goes to every agent through
the dispatcher's broadcast path (one encoded request, one completion for
all) and ``info`` maps each IP to its own fields.

The wire between server and agent (device methods of the dispatcher):

- ``elves.run`` (server -> agent): ``{"id", "type", "mode", "app", "func",
  "param", "timeout", "proxy", "async"}``; a sync call answers
  ``{"worker_flag", "worker_result", "worker_costtime"}``, an async one
  ``{"accepted": true}`` at once;
- ``elves.agentAsyncResult`` (agent -> server, a client-side call):
  ``{"id", "worker_flag", "worker_result", "worker_costtime"}``.

Timeouts are the instruction's (seconds, default 90, 0 = no limit) plus
``agent_grace_s`` for the call, so that the agent's own "app exec timeout"
comes back before the call's deadline.

For cron and queue::

    key = await service.supervisor.authorize(call, ips, app=ins.app)
    sent = await service.scheduler.send_async(key.tenant_id, key.app, ips, ins, type="queue")
    service.scheduler.on_result("queue", hook)     # async hook(TaskRow) per result
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

import msgspec

from ...errors import (
    DeviceOfflineError,
    DispatcherClosedError,
    QueueFullError,
    RpcTimeoutError,
    ValidationError,
)
from ...wire import as_error
from .envelope import FLAG_FALSE, FLAG_TRUE, Envelope, Instruction, check_ip, normalise_mode
from .errors import Code, ElvesError
from .router import Alias, ElvesCall, ElvesRouter
from .store import TaskRow
from .tasklog import new_task_id, now_ms

__all__ = ["Scheduler", "Send", "Dispatched", "AGENT_RUN", "AGENT_RESULT", "TASK_EVENT"]

log = logging.getLogger("fleetrpc.elves.scheduler")

AGENT_RUN = "elves.run"
AGENT_RESULT = "elves.agentAsyncResult"
#: The event (on the server's EventBus) of a task that ended: its send
#: failed, or its worker's result arrived (sync or async).
TASK_EVENT = "ELVES_TASK_RESULT"
#: Most agents one call may address.
MAX_AGENTS = 10_000
#: "No limit" as a call deadline: ~3 years.
NO_LIMIT_S = 1e8

ResultHook = Callable[[TaskRow], Awaitable[None]]


class Dispatched(msgspec.Struct):
    """How sending to one agent went (and, for sync, what its worker said)."""

    ip: str
    task_id: str
    ok: bool
    code: str = ""
    error: str = ""
    costtime: int = 0
    worker_flag: int = -1
    worker_result: str = ""
    worker_costtime: int = 0

    def sync_info(self) -> dict[str, Any]:
        return {**self.async_info(), "worker_flag": self.worker_flag,
                "worker_result": self.worker_result, "worker_costtime": self.worker_costtime}

    def async_info(self) -> dict[str, Any]:
        return {"id": self.task_id, "agent_sync_flag": FLAG_TRUE if self.ok else FLAG_FALSE,
                "agent_sync_error": self.error, "agent_sync_costtime": self.costtime}


class Send(msgspec.Struct):
    """One instruction for some agents of a tenant, on behalf of an app (an
    entry of :meth:`Scheduler.send_async_batch`)."""

    tenant_id: str
    caller: str
    ips: list[str]
    ins: Instruction


class _SendArgs(msgspec.Struct):
    agentip: str | list[str]
    ins: Instruction


class _WorkerReply(msgspec.Struct):
    worker_flag: int
    worker_result: str = ""
    worker_costtime: int | float = 0


class _AsyncResult(msgspec.Struct):
    id: str
    worker_flag: int
    worker_result: str = ""
    worker_costtime: int | float = 0
    #: A run of one of the agent's self crons (no task was sent for it).
    cron_id: str | None = None
    started: int | None = None

#: ``record(device, result) -> TaskRow``: a self cron's run, made a task of
#: the log (the cron part sets it); raises ValueError for a cron that is
#: not this agent's.
SelfCronRecorder = Callable[[str, _AsyncResult], Awaitable[TaskRow]]


def wants_async(env: Envelope) -> bool:
    """Whether ``sendsync`` as written means sendAsync: the instruction's
    mode is one of the old async ones (SAnP, SAP, AAnP, AAP), or the
    envelope says ``"async": true``."""
    if env.get("async") is True:
        return True
    ins = env.get("ins")
    if isinstance(ins, dict):
        try:
            return normalise_mode(ins.get("mode")) [1] is False
        except ElvesError:
            return False
    return False


class Scheduler:
    """Sends instructions to agents; the scheduler's Elves functions."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.dispatcher = service.dispatcher
        self.settings = service.settings
        self.tasklog = service.tasklog
        self._hooks: dict[str, list[ResultHook]] = {}
        self._background: set[asyncio.Task] = set()
        self._session = None
        self._decode_result = msgspec.json.Decoder(_AsyncResult)
        #: Set by the cron part: records the runs of agents' self crons.
        self.self_cron_recorder: SelfCronRecorder | None = None

    # -- wiring ---------------------------------------------------------------

    def register(self, router: ElvesRouter) -> None:
        router.register("scheduler", "sendSync", self.send_sync_function, aliases=["syncJob"])
        # The seed writes sendsync for sendAsync too (same arguments): an
        # old async mode name or "async": true says which one is meant.
        router.register(
            "scheduler", "sendAsync", self.send_async_function,
            aliases=[Alias("sendsync", when=wants_async), "asyncJob"],
        )

    def attach(self) -> None:
        self.dispatcher.add_handler(AGENT_RESULT, self._on_agent_result)

    def on_result(self, task_type: str, hook: ResultHook) -> None:
        """Call ``await hook(row)`` when an async task of ``task_type``
        (``"cron"``, ``"queue"``, ``"rt"``) has its worker's result."""
        self._hooks.setdefault(task_type, []).append(hook)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- sending ----------------------------------------------------------------

    async def send_sync(self, tenant_id: str, caller: str, ips: list[str], ins: Instruction) -> list[Dispatched]:
        """Run ``ins`` on each agent and wait for its worker (authorise first)."""
        return (await self._send_many([Send(tenant_id, caller, ips, ins)], sync=True, task_type="rt"))[0]

    async def send_async(
        self, tenant_id: str, caller: str, ips: list[str], ins: Instruction, *, type: str = "rt"
    ) -> list[Dispatched]:
        """Hand ``ins`` to each agent; returns once each accepted it (or
        could not be reached: such a task is logged as failed).  The
        results come to the :meth:`on_result` hooks of ``type``."""
        return (await self._send_many([Send(tenant_id, caller, ips, ins)], sync=False, task_type=type))[0]

    async def send_async_batch(self, sends: list[Send], *, type: str = "rt") -> list[list[Dispatched]]:
        """Many :meth:`send_async` at once (a cron second with many distinct
        instructions): each ``Send`` is its own fan-out with its own wire
        id, but the agents are looked up once per tenant and the task logs
        of the whole batch are written in one insert and one update, instead
        of two database transactions per send.  Returns each send's result,
        in order."""
        return await self._send_many(sends, sync=False, task_type=type)

    async def _send_many(self, sends: list[Send], *, sync: bool, task_type: str) -> list[list[Dispatched]]:
        sends = [Send(s.tenant_id, s.caller, list(dict.fromkeys(s.ips)), s.ins.normalised()) for s in sends]
        devices = await self._resolve(sends)
        wires = [new_task_id() for _ in sends]
        task_ids = await self.tasklog.start_many([
            (s.tenant_id, s.caller, task_type, s.ins, [(ip, devices[s.tenant_id].get(ip)) for ip in s.ips], wire)
            for s, wire in zip(sends, wires)
        ])
        known = self.service.heartbeat.known
        outcomes: list[list[Dispatched | None]] = []
        calls = []
        for s, wire, ids in zip(sends, wires, task_ids):
            found = devices[s.tenant_id]
            results: list[Dispatched | None] = [None] * len(s.ips)
            by_device: dict[str, int] = {}
            for i, ip in enumerate(s.ips):
                device = found.get(ip)
                if device is None or not known(device):
                    results[i] = Dispatched(ip, ids[i], False, Code.AGENT_NOT_FOUND,
                                            f"[{Code.AGENT_NOT_FOUND}]Agent Info Not Found: {ip}")
                else:
                    by_device[device] = i
            outcomes.append(results)
            if by_device:
                calls.append(self._call_agents(by_device, results, s.ips, ids, s.ins, wire, sync, task_type))
        if calls:
            await asyncio.gather(*calls)
        done: list[list[Dispatched]] = outcomes  # type: ignore[assignment]
        # One write per task (how the send went and, for sync, the worker's
        # result), all the batch's tasks of a tenant in one update.
        changes: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for s, ds in zip(sends, done):
            for d in ds:
                fields = self.tasklog.sent_fields(d.ok, d.error, d.costtime)
                if sync and d.ok:
                    fields.update(self.tasklog.worker_fields(s.ins.mode, d.worker_flag, d.worker_result, d.worker_costtime, None))
                changes.setdefault(s.tenant_id, []).append((d.task_id, fields))
        for tenant_id, tenant_changes in changes.items():
            await self.tasklog.worker_results(tenant_id, tenant_changes)
        for s, ds in zip(sends, done):
            if sync and s.ins.mode == "P":
                for d in ds:
                    if d.ok:
                        self._spawn(self._forward_by_id(s.tenant_id, d.task_id))
            self._emit_ended(s, ds, task_type, sync)
        return done

    async def _resolve(self, sends: list[Send]) -> dict[str, dict[str, str]]:
        """``{tenant: {ip: device}}``: one directory lookup per tenant."""
        wanted: dict[str, dict[str, None]] = {}
        for s in sends:
            wanted.setdefault(s.tenant_id, {}).update(dict.fromkeys(s.ips))
        return {tenant: await self.service.directory.resolve(tenant, list(ips)) for tenant, ips in wanted.items()}

    def _emit_ended(self, s: Send, done: list[Dispatched], task_type: str, sync: bool) -> None:
        """:data:`TASK_EVENT` for each task of ``done`` that ended here (a
        failed send; a sync task's result)."""
        bus = getattr(self.service, "bus", None)
        if bus is None or not getattr(bus, "sinks", True):
            return
        for d in done:
            if sync or not d.ok:
                bus.emit(TASK_EVENT, {
                    "tenantId": s.tenant_id, "id": d.task_id, "type": task_type, "caller": s.caller,
                    "agentIp": d.ip, "app": s.ins.app, "func": s.ins.func, "mode": s.ins.mode,
                    "agentSyncFlag": 1 if d.ok else 0, "agentSyncError": d.error,
                    "workerFlag": d.worker_flag if d.ok else None,
                    "workerResult": d.worker_result if d.ok else None,
                    "workerCosttime": d.worker_costtime if d.ok else None,
                })

    async def _call_agents(self, by_device, results, ips, task_ids, ins, wire, sync, task_type) -> None:
        payload = {
            "id": wire, "type": task_type, "mode": ins.mode, "app": ins.app, "func": ins.func,
            "param": ins.param, "timeout": ins.timeout, "proxy": ins.proxy, "async": not sync,
        }
        if sync:
            timeout = NO_LIMIT_S if ins.timeout == 0 else ins.timeout + self.settings.agent_grace_s
        else:
            timeout = self.settings.accept_timeout_s
        started = time.perf_counter()
        try:
            bc = self.dispatcher.broadcast(list(by_device), AGENT_RUN, payload, timeout=timeout)
        except (DispatcherClosedError, ValidationError) as exc:
            for device, i in by_device.items():
                results[i] = Dispatched(ips[i], task_ids[i], False, Code.SEND_FAILED, f"[{Code.SEND_FAILED}]Send Job To Agent Fail: {exc}")
            return
        async for outcome in bc:
            i = by_device[outcome.device]
            cost = int((time.perf_counter() - started) * 1000)
            results[i] = self._outcome(ips[i], task_ids[i], outcome, cost, sync, timeout)

    def _outcome(self, ip: str, task_id: str, outcome: Any, cost: int, sync: bool, timeout: float) -> Dispatched:
        def failed(why: str) -> Dispatched:
            return Dispatched(ip, task_id, False, Code.SEND_FAILED, f"[{Code.SEND_FAILED}]Send Job To Agent Fail: {why}", cost)

        if not outcome.ok:
            err = outcome.error
            if isinstance(err, DeviceOfflineError):
                return failed(f"agent {ip} is offline")
            if isinstance(err, RpcTimeoutError):
                return failed(f"agent {ip} did not answer within {timeout:g} s")
            if isinstance(err, QueueFullError):
                return failed(f"too many instructions queued for agent {ip}")
            return failed(f"{type(err).__name__}: {err}")
        body = outcome.result
        remote = as_error(body)
        if remote is not None:
            return failed(f"agent {ip} answered {remote.code}: {remote.message}")
        if not sync:
            if isinstance(body, dict) and body.get("accepted") is True:
                return Dispatched(ip, task_id, True, costtime=cost)
            return failed(f"agent {ip} did not accept the instruction: {body!r:.200}")
        try:
            reply = msgspec.convert(body, _WorkerReply, strict=False)
        except msgspec.ValidationError as exc:
            return failed(f"agent {ip} answered something else than a worker result ({exc})")
        return Dispatched(
            ip, task_id, True, costtime=cost, worker_flag=reply.worker_flag,
            worker_result=reply.worker_result, worker_costtime=int(reply.worker_costtime),
        )

    # -- async results from agents ------------------------------------------------

    async def _on_agent_result(self, device: str, params: Any) -> dict[str, Any]:
        """A client-side call of the agent ``device`` (the broker
        authenticated it): the result of a task it was sent."""
        try:
            res = msgspec.convert(params, _AsyncResult, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"bad agentAsyncResult: {exc}") from None
        if res.worker_flag not in (1, 0, -1):
            raise ValueError(f"worker_flag must be 1, 0 or -1, not {res.worker_flag}")
        row = await self.tasklog.repo.find_by_wire_any_tenant(device, res.id)
        if row is None and res.cron_id is not None and self.self_cron_recorder is not None:
            row = await self.self_cron_recorder(device, res)  # a new task, its result included
        elif row is None:
            raise ValueError(f"no task {res.id!r} was sent to this agent")
        elif row.worker_flag is not None and row.type == "cron" and res.cron_id is not None:
            return {"ok": True}  # a self cron's run reported again (a retry): recorded already
        else:
            fields = self.tasklog.worker_fields(row.mode, res.worker_flag, res.worker_result, int(res.worker_costtime), now_ms())
            await self.tasklog.worker_results(row.tenant_id, [(row.id, fields)])
            for name, value in fields.items():
                setattr(row, name, value)
        if row.mode == "P":
            self._spawn(self._forward(row))
        bus = getattr(self.service, "bus", None)
        if bus is not None and getattr(bus, "sinks", True):
            bus.emit(TASK_EVENT, {
                "tenantId": row.tenant_id, "id": row.id, "type": row.type, "caller": row.caller,
                "agentIp": row.agent_ip, "app": row.app, "func": row.func, "mode": row.mode,
                "agentSyncFlag": row.agent_sync_flag, "agentSyncError": row.agent_sync_error,
                "workerFlag": row.worker_flag, "workerResult": row.worker_message,
                "workerCosttime": row.worker_costtime,
            })
        for hook in self._hooks.get(row.type, ()):
            try:
                await hook(row)
            except Exception:
                log.exception("result hook %r failed for task %s", hook, row.id)
        return {"ok": True}

    # -- processor ----------------------------------------------------------------

    async def _forward_by_id(self, tenant_id: str, task_id: str) -> None:
        rows = await self.tasklog.get(tenant_id, [task_id])
        if rows:
            await self._forward(rows[0])

    async def _forward(self, row: TaskRow) -> None:
        """Mode P: POST the worker's result to the app's processor
        (``http://{appip}:{appport}/``, address from the supervisor)."""
        import aiohttp

        address = await self.service.supervisor.callback_of(row.tenant_id, row.caller)
        if address is None:
            await self.tasklog.processor_pushed(row.tenant_id, row.id, False, f"no processor address for app {row.caller!r}", 0)
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.processor_timeout_s))
        body = {
            "id": row.id, "agentip": row.agent_ip, "app": row.app, "func": row.func, "param": row.param,
            "flag": row.worker_flag, "costtime": row.worker_costtime, "message": row.worker_message,
        }
        started = time.perf_counter()
        answer = None
        try:
            async with self._session.post(f"http://{address[0]}:{address[1]}/", json=body) as resp:
                ok = 200 <= resp.status < 300
                error = "" if ok else f"processor answered HTTP {resp.status}"
                if ok and resp.content_type == "application/json":
                    answer = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        cost = int((time.perf_counter() - started) * 1000)
        await self.tasklog.processor_pushed(row.tenant_id, row.id, ok, error, cost)
        if ok and isinstance(answer, dict) and "processor_sync_flag" in answer:
            # The processor answered its result inline instead of calling
            # appProcessorResult later.
            flag = answer.get("processor_sync_flag")
            await self.tasklog.processor_result(
                row.tenant_id, row.id, ok=str(flag).lower() in ("1", "true"),
                message=str(answer.get("processor_message", answer.get("processor_sync_error", ""))),
                costtime=answer.get("processor_sync_costtime") if isinstance(answer.get("processor_sync_costtime"), int) else None,
            )

    # -- Elves functions ------------------------------------------------------------

    async def _parse(self, env: Envelope, call: ElvesCall) -> tuple[list[str], Instruction, bool]:
        args = env.args(_SendArgs)
        many = isinstance(args.agentip, list)
        raw = args.agentip if many else [args.agentip]
        if not raw or len(raw) > MAX_AGENTS:
            raise ElvesError(Code.BAD_IP, f"Bad Ip: give 1 to {MAX_AGENTS} agent IPs")
        ips = [check_ip(ip) for ip in raw]
        ins = args.ins.normalised()
        await self.service.supervisor.authorize(call, ips, app=ins.app)
        return ips, ins, many

    async def send_sync_function(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        ips, ins, many = await self._parse(env, call)
        done = await self.send_sync(call.tenant_id, call.caller.app, ips, ins)
        return self._reply(done, many, Dispatched.sync_info)

    async def send_async_function(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        ips, ins, many = await self._parse(env, call)
        done = await self.send_async(call.tenant_id, call.caller.app, ips, ins, type="rt")
        return self._reply(done, many, Dispatched.async_info)

    @staticmethod
    def _reply(done: list[Dispatched], many: bool, info: Callable[[Dispatched], dict]) -> dict[str, Any]:
        if many:
            return {"info": {d.ip: info(d) for d in done}}
        d = done[0]
        if not d.ok:
            raise ElvesError(d.code, d.error[len(d.code) + 2:], info=info(d))
        return {"info": info(d)}
