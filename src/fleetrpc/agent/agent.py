"""The Elves agent: a device (``DeviceClient``) that runs instructions.

    agent = ElvesAgent("10.0.0.5", "mqtt://broker:1883", root="/opt/elves")

    @agent.function("ops", "uptime")          # an in-process app function
    def uptime(param):
        return True, "up 3 days"

    await agent.start()

It answers the scheduler's ``elves.run`` requests: an in-process function
of that app and name when one is registered, else the app's worker in
``<root>/apps/<app>/`` (:mod:`.apps`).  A sync request is answered with the
worker's result; an async one with ``{"accepted": true}`` at once, the
result following as the client-side call ``elves.agentAsyncResult``.

Bounded whatever the scheduler sends: at most ``max_workers`` workers run
and ``max_waiting`` runs wait for one (a run beyond is refused at once,
``agent busy``); a run lasts at most ``max_run_timeout`` seconds (its
timeout 0, "none", included); a result larger than a reply may carry is
an error result (``app output too large``), and a worker's output is read
up to :data:`.apps.MAX_OUTPUT`.

It keeps and runs the self crons the server pushes (``elves.setSelfCron``,
``elves.delSelfCron``; :mod:`.crons`), persisted in
``<root>/conf/cron.json``, and reports each run like an async result.

Heartbeats carry what the heartbeat service reports: ``elves`` (version),
``ip``, ``os``, ``hostname``, ``hw``, ``apps`` (installed apps and their
versions), ``crons`` (its self crons, each with its ``next_fire_time``),
next to the SDK's ``ts`` and ``started``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import platform
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable

import msgspec

from ..device import DeviceClient
from ..errors import FleetRpcError
from .apps import WorkerResult, installed, run_app, shortened
from .crons import SELF_CRON_DEL, SELF_CRON_SET, CronEntry, SelfCrons

__all__ = ["ElvesAgent", "AGENT_VERSION"]

log = logging.getLogger("fleetrpc.agent")

AGENT_VERSION = "fleetrpc-1"
AGENT_RUN = "elves.run"
AGENT_RESULT = "elves.agentAsyncResult"
#: Bytes of a reply kept for what surrounds the worker's result.
_REPLY_ROOM = 1024

#: ``fn(param) -> (flag, result)`` (flag True/False/"true"/"false"/1/0) or
#: just a result (flag true); plain or async.  ``param`` is the decoded JSON
#: when the instruction's param is JSON, else the string.
AppFunction = Callable[[Any], Any]


class _Run(msgspec.Struct):
    id: str
    app: str
    func: str
    param: str = ""
    timeout: int | float = 90
    proxy: str = ""
    mode: str = "NP"
    type: str = "rt"
    # Struct field named after a keyword: "async" on the wire.
    is_async: bool = msgspec.field(default=False, name="async")


class ElvesAgent:
    """An Elves agent on its own MQTT connection; see the module docstring."""

    def __init__(
        self,
        ip: str,
        url: str = "mqtt://127.0.0.1:1883",
        *,
        root: str | os.PathLike | None = None,
        device_id: str | None = None,
        heartbeat_interval: float = 60.0,
        max_workers: int = 64,
        max_waiting: int = 1000,
        max_run_timeout: float = 86400.0,
        result_retries: int = 3,
        clock: Any = None,
        cron_timezone: str | None = None,
        **client_options: Any,
    ) -> None:
        self.ip = ip
        self.root = Path(root) if root is not None else None
        self.client = DeviceClient(device_id or ip, url, **client_options)
        self.client.add_method(AGENT_RUN, self._on_run)
        self.heartbeat_interval = heartbeat_interval
        self.started_ms = int(time.time() * 1000)
        self._functions: dict[tuple[str, str], AppFunction] = {}
        self._workers = asyncio.Semaphore(max_workers)
        #: Runs (sync and async) started or waiting for a worker at most.
        self.max_runs = max_workers + max_waiting
        self._runs_now = 0
        #: Seconds a run may last at most, whatever its own timeout says
        #: (0, negative or not finite: this).
        self.max_run_timeout = max_run_timeout
        #: Runs refused because max_workers + max_waiting were under way.
        self.refused = 0
        self._retries = result_retries
        self._tasks: set[asyncio.Task] = set()
        self.runs = 0
        #: The self crons (``clock``: a :class:`~fleetrpc.services.elves.clock.ManualClock`
        #: in tests; ``cron_timezone``: None is the machine's local time).
        self.crons = SelfCrons(
            self.root / "conf" / "cron.json" if self.root is not None else None,
            self._run_cron, clock=clock, timezone=cron_timezone,
        )
        self.client.add_method(SELF_CRON_SET, self.crons.on_set)
        self.client.add_method(SELF_CRON_DEL, self.crons.on_delete)

    # -- registration -----------------------------------------------------------

    def function(self, app: str, func: str) -> Callable[[AppFunction], AppFunction]:
        """Register an in-process function ``func`` of app ``app``."""

        def register(fn: AppFunction) -> AppFunction:
            self._functions[(app, func)] = fn
            return fn

        return register

    def add_function(self, app: str, func: str, fn: AppFunction) -> None:
        self._functions[(app, func)] = fn

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self.crons.load()
        await self.client.connect()
        if self.heartbeat_interval > 0:
            self.client.start_heartbeat(self.heartbeat_interval, self.info)
        self.crons.start()

    async def close(self) -> None:
        await self.crons.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    def kill(self) -> None:
        """Vanish without a goodbye (the broker publishes the Last Will)."""
        self.client.kill()

    async def __aenter__(self) -> "ElvesAgent":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- heartbeat ------------------------------------------------------------------

    def apps(self) -> dict[str, str]:
        """Installed apps and their versions (``<app>/version`` or
        ``appcfg.json``'s ``version``; ``""`` when unknown), in-process ones
        included."""
        out = {app: "" for app, _ in self._functions}
        if self.root is not None and (self.root / "apps").is_dir():
            for folder in sorted((self.root / "apps").iterdir()):
                if folder.is_dir():
                    out[folder.name] = _app_version(folder)
        return out

    def self_crons(self) -> list[dict]:
        """The self crons (``[{"cron_id", "Rule", "App", ..., "next_fire_time"}]``)."""
        return self.crons.listing()

    def info(self) -> dict[str, Any]:
        return {
            "elves": AGENT_VERSION,
            "ip": self.ip,
            "os": platform.system(),
            "hostname": socket.gethostname(),
            "hw": {
                "arch": platform.machine(),
                "cpus": os.cpu_count() or 0,
                "mem_mb": _memory_mb(),
                "kernel": platform.release(),
            },
            "apps": self.apps(),
            "crons": self.self_crons(),
        }

    # -- running ---------------------------------------------------------------------

    def _on_run(self, params: Any) -> Any:
        try:
            run = msgspec.convert(params, _Run, strict=False)
        except msgspec.ValidationError as exc:
            return {"error": {"code": "INVALID_PARAMS", "message": f"bad elves.run request: {exc}"}}
        if self._runs_now >= self.max_runs:
            # A scheduler sending faster than the workers finish would
            # otherwise pile up tasks (and their params) without end.
            self.refused += 1
            return {"error": {"code": "APPLICATION_ERROR",
                              "message": f"agent busy: {self._runs_now} runs under way or waiting already "
                                         f"(at most {self.max_runs})"}}
        self.runs += 1
        self._runs_now += 1
        if run.is_async:
            task = asyncio.ensure_future(self._run_and_report(run))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return {"accepted": True}
        return self._execute_reply(run)

    async def _execute_reply(self, run: _Run) -> dict[str, Any]:
        try:
            return msgspec.structs.asdict(await self.execute(run.app, run.func, run.param, run.timeout, run.proxy))
        finally:
            self._runs_now -= 1

    async def execute(self, app: str, func: str, param: str, timeout: float, proxy: str = "") -> WorkerResult:
        """Run one function of an app: in-process when registered, else its
        worker.  A timeout of 0 (none), negative, not finite or above
        ``max_run_timeout`` is ``max_run_timeout``: no run holds a worker
        for ever.  A result too large for a reply is an error result."""
        limit = self.max_run_timeout
        if not 0 < timeout <= limit:  # NaN too
            timeout = limit
        fn = self._functions.get((app, func))
        if fn is not None:
            return self._fit(await _call_function(fn, param, timeout))
        if self.root is None or not installed(self.root, app):
            return WorkerResult(-1, f"app [{app}] not install !", 0)
        async with self._workers:
            return self._fit(await run_app(self.root, app, func, param, timeout, proxy))

    def _fit(self, result: WorkerResult) -> WorkerResult:
        # Published whole, a result over the payload limit is rejected by the
        # broker or the server as malformed, and the scheduler waits for its
        # timeout instead of hearing why.
        room = self.client.max_payload - _REPLY_ROOM
        size = len(msgspec.json.encode(result.worker_result))
        if size <= room:
            return result
        return WorkerResult(-1, f"app output too large : a result of {size} bytes, over the {room} a reply "
                                f"may carry: {shortened(result.worker_result)}", result.worker_costtime)

    async def _run_and_report(self, run: _Run) -> None:
        try:
            result = await self.execute(run.app, run.func, run.param, run.timeout, run.proxy)
        finally:
            self._runs_now -= 1
        await self._report({"id": run.id, **msgspec.structs.asdict(result)})

    async def _run_cron(self, cron_id: str, entry: CronEntry) -> None:
        """One firing of a self cron, reported with the cron's id (the
        server makes it a task of the log)."""
        started = int(self.crons.clock.time() * 1000)
        result = await self.execute(entry.App, entry.Func, entry.Param, entry.timeout, entry.Proxy)
        await self._report({"id": secrets.token_hex(8), "cron_id": cron_id, "started": started,
                            **msgspec.structs.asdict(result)})

    async def _report(self, body: dict[str, Any]) -> None:
        """``elves.agentAsyncResult``, retried with back-off (the server
        records a report once, however often it arrives)."""
        for attempt in range(self._retries + 1):
            try:
                await self.client.call(AGENT_RESULT, body, timeout=30)
                return
            except FleetRpcError as exc:
                log.warning("agent %s: reporting task %s failed (%s), attempt %d", self.ip, body["id"], exc, attempt + 1)
                if attempt < self._retries:
                    await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt))


async def _call_function(fn: AppFunction, param: str, timeout: float) -> WorkerResult:
    started = time.perf_counter()

    def done(flag: int, result: str) -> WorkerResult:
        return WorkerResult(flag, result, int((time.perf_counter() - started) * 1000))

    try:
        value = json.loads(param) if param else {}
    except (ValueError, RecursionError):  # not JSON, or nested too deep to decode
        value = param
    try:
        out = fn(value)
        if inspect.isawaitable(out):
            out = await asyncio.wait_for(out, timeout if timeout > 0 else None)
    except asyncio.TimeoutError:
        return done(-1, "app exec timeout")
    except Exception as exc:
        return done(-1, f"app exec error : {type(exc).__name__}: {exc}")
    if isinstance(out, tuple) and len(out) == 2:
        flag, result = out
    else:
        flag, result = True, out
    ok = flag is True or flag == 1 or (isinstance(flag, str) and flag.strip().lower() in ("true", "1"))
    if not isinstance(result, str):
        try:
            result = msgspec.json.encode(result).decode()
        except (TypeError, msgspec.EncodeError):
            result = str(result)
    return done(1 if ok else 0, result)


def _app_version(folder: Path) -> str:
    try:
        return (folder / "version").read_text().strip()
    except OSError:
        pass
    try:
        data = json.loads((folder / "appcfg.json").read_text())
        return str(data.get("version", "")) if isinstance(data, dict) else ""
    except (OSError, ValueError):
        return ""


def _memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return 0
