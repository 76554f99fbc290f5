"""The Elves services assembled on one dispatcher and one database.

    elves = ElvesService(dispatcher, db)           # library mode: IP = device id
    await elves.start()                            # MQTT binding, agent results, retention
    app = await elves.supervisor.create_app(NULL_TENANT, "deploy")
    await elves.supervisor.grant(NULL_TENANT, "deploy", ips=["10.0.0.5"])
    reply = await elves.handle({"mqt": "call", ...}, ElvesCall(...))

Parts built elsewhere plug in without editing this file: each module of
:data:`OPTIONAL_PARTS` that exists in this package is imported, and its
``install(service)`` registers its functions on ``service.router`` (and may
keep state on the service); its optional ``setup_http(app, service)`` adds
HTTP routes when the server builds its application (:mod:`.http`).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import time
from typing import Any

from .config import ElvesSettings
from .directory import AgentDirectory, IdentityDirectory
from .errors import Code, ElvesError
from .envelope import Envelope
from .mqtt import ElvesMqtt
from .router import NULL_TENANT, ElvesCall, ElvesRouter
from .store import SupervisorRepository, TaskRepository
from .supervisor import Supervisor

__all__ = ["ElvesService", "OPTIONAL_PARTS"]

log = logging.getLogger("fleetrpc.elves")

#: Modules of this package that plug in when present (``install(service)``).
OPTIONAL_PARTS = ("cmdb", "cron", "queue", "openapi_v2")


class ElvesService:
    """Router, MQTT binding and every Elves service on one dispatcher."""

    def __init__(
        self,
        dispatcher: Any,
        db: Any,
        *,
        settings: ElvesSettings | None = None,
        directory: AgentDirectory | None = None,
        parts: tuple[str, ...] = OPTIONAL_PARTS,
        cron_settings: Any = None,
        cmdb_settings: Any = None,
        clock: Any = None,
        bus: Any = None,
    ) -> None:
        from .heartbeat import Heartbeat
        from .scheduler import Scheduler
        from .tasklog import TaskLog

        self.dispatcher = dispatcher
        self.db = db
        self.settings = settings or ElvesSettings()
        self.directory = directory or IdentityDirectory()
        #: The parts' own settings (``CronSettings``, ``CmdbSettings``; None:
        #: their defaults) and the cron's clock (None: the system clock),
        #: read by the parts' ``install``.
        self.cron_settings = cron_settings
        self.cmdb_settings = cmdb_settings
        self.clock = clock
        #: The server's EventBus (or None): each task's end is emitted as
        #: ``ELVES_TASK_RESULT`` (:data:`.scheduler.TASK_EVENT`).
        self.bus = bus
        self.router = ElvesRouter()
        self.supervisor = Supervisor(SupervisorRepository(db))
        self.tasklog = TaskLog(TaskRepository(db), self.settings)
        self.heartbeat = Heartbeat(dispatcher, self.directory, self.settings)
        self.scheduler = Scheduler(self)
        self.mqtt = ElvesMqtt(dispatcher, self.router)
        self.router.before(self._authenticate)
        self.supervisor.register(self.router)
        self.heartbeat.register(self.router)
        self.tasklog.register(self.router)
        self.scheduler.register(self.router)
        self.parts: dict[str, Any] = {}
        for name in parts:
            module = _optional_part(name)
            if module is not None and hasattr(module, "install"):
                module.install(self)
                self.parts[name] = module
        self._retention: asyncio.Task | None = None
        self._started = False

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Answer ELVES messages, take agents' async results, run the
        task-log retention and the parts (cron firing ...).  The tables are
        the store's migrations (``open_database`` applied them)."""
        if self._started:
            return
        self._started = True
        self.mqtt.attach()
        self.scheduler.attach()
        if self.settings.task_retention_days > 0:
            self._retention = asyncio.ensure_future(self._retain())
        for module in self.parts.values():
            start = getattr(module, "start", None)
            if start is not None:
                await start(self)

    async def close(self) -> None:
        for module in self.parts.values():
            stop = getattr(module, "stop", None)
            if stop is not None:
                await stop(self)
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        await self.scheduler.close()

    async def _retain(self) -> None:
        while True:
            try:
                cutoff = int((time.time() - self.settings.task_retention_days * 86400) * 1000)
                n = await self.tasklog.purge(cutoff)
                if n:
                    log.info("task log retention: deleted %d tasks", n)
            except Exception:
                log.exception("task log retention failed")
            await asyncio.sleep(self.settings.retention_check_s)

    # -- calls --------------------------------------------------------------

    async def handle(self, body: bytes | str | dict, call: ElvesCall) -> dict[str, Any]:
        """One envelope in, its reply out (never raises)."""
        return await self.router.dispatch(body, call)

    async def _authenticate(self, env: Envelope, call: ElvesCall) -> None:
        """Who is calling, hence the tenant: see docs/elves.md,
        "Authentication"."""
        if call.via == "mqtt":
            await self._authenticate_mqtt(env, call)
        else:
            await self._authenticate_http(env, call)

    async def _authenticate_mqtt(self, env: Envelope, call: ElvesCall) -> None:
        if self.settings.mqtt_auth == "topic":
            key = await self.supervisor.app_by_auth_id_any_tenant(call.topic_app or "")
            if key is None:
                raise ElvesError(Code.AUTH_ID_NOT_FOUND, f"AuthId Not Found: {call.topic_app!r}")
        else:
            secret = _key_of(env)
            if secret is None:
                raise ElvesError(Code.MISSING_AUTH, "Missing Parameter: key (the app's auth key)")
            key = await self.supervisor.app_by_key_any_tenant(secret)
            if key is None:
                raise ElvesError(Code.BAD_KEY, "Auth Key Not Valid")
            if call.topic_app not in (key.app, key.auth_id):
                raise ElvesError(
                    Code.DENIED,
                    f"Permission Denied: topic app {call.topic_app!r} is not the app of this key",
                )
        call.tenant_id = key.tenant_id
        call.caller = key

    async def _authenticate_http(self, env: Envelope, call: ElvesCall) -> None:
        repo = self.supervisor.repo
        secret = _key_of(env)
        auth_id = env.get("auth_id")
        ins = env.get("ins")
        if secret is not None:
            call.caller = await repo.get_by_key(call.tenant_id, secret)
            if call.caller is None:
                raise ElvesError(Code.BAD_KEY, "Auth Key Not Valid")
        elif isinstance(auth_id, str) and auth_id:
            call.caller = await repo.get_by_auth_id(call.tenant_id, auth_id)
            if call.caller is None:
                raise ElvesError(Code.AUTH_ID_NOT_FOUND, f"AuthId Not Found: {auth_id!r}")
        elif isinstance(ins, dict) and isinstance(ins.get("app"), str) and ins["app"]:
            # A tenant admin may act as any app of the tenant.
            call.caller = await repo.get_app(call.tenant_id, ins["app"])
            if call.caller is None:
                raise ElvesError(Code.APP_NOT_FOUND, f"App Not Found: {ins['app']!r}")


def _key_of(env: Envelope) -> str | None:
    # auth_key first: checkIpAuthByKey and getAuthByKey take a "key" argument
    # of their own, which may be another app's key than the caller's.
    for name in ("auth_key", "key"):
        value = env.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _optional_part(name: str):
    full = f"{__package__}.{name}"
    if importlib.util.find_spec(full) is None:
        return None
    return importlib.import_module(full)
