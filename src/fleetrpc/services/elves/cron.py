"""cron: instructions run on a schedule (Quartz rules), per agent.

Two kinds (``cron_type``):

- **center**: stored, fired by the server.  One loop per cluster (the
  holder of the ``elves:cron`` lease; every node when there is no cluster) that
  wakes at the earliest ``next_fire`` (or every ``poll_interval_s``, to see
  crons created on other nodes), takes the due crons, *claims* each firing by
  inserting ``(cron id, fire time)`` into ``elves_cron_firing`` (primary
  key: only one node's insert succeeds, so a firing runs exactly once however
  many nodes there are), moves ``next_fire`` on (compare-and-set: any node
  may do it, so a node dying between claim and move stops nothing), and
  hands the claimed instructions to the scheduler's async path
  (``type = "cron"``) -- crons of one app with the same instruction go out
  as one fan-out.  An agent that is offline or unknown gets a failed task in
  the task log (Elves itself loses such a run without a trace).  A node that
  was down fires a missed cron once when it comes back, then goes on from
  the present (Quartz's "fire once now" misfire rule).
- **self**: pushed to the agent, which runs it itself:
  ``elves.setSelfCron {"id", "cron": {Flag, Comment, App, Func, Param,
  Timeout, Proxy, Mode, Rule}}`` (the agent's ``conf/cron.json`` entry) and
  ``elves.delSelfCron {"id"}``; the agent answers ``{"ok": true}``.

Functions, the seed's (every one written ``setcronbyip``; dispatched on
the arguments: ``rule``/``ins`` -> set, ``id``/``cron_id`` -> delete, only
``agentip`` -> list) and Elves' later ones:

- ``setCronByIp(agentip, cron_type, rule, ins)`` -> ``flag``,
  ``error_info``, ``cron_id``; ``createCron(ip, app, func, mode, rule,
  param, timeout, proxy[, cron_type])`` -> ``id`` (created running);
- ``getCronListByIp(agentip)`` -> ``cron_list``; ``cronList(ip)`` -> ``result`` (ids);
- ``delCronByIpId(agentip, id)``, ``deleteCron(id)``;
- ``startCron(id)``, ``stopCron(id)``, ``cronDetail(id)``.

Time comes from a :class:`Clock` (tests inject :class:`ManualClock`); rules
are evaluated in ``CronSettings.timezone`` (UTC by default).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import datetime
from typing import Any, Awaitable, Callable
from zoneinfo import ZoneInfo

import msgspec

from ...errors import FleetRpcError, StoreUnavailableError
from .clock import Clock, ManualClock, SystemClock
from .envelope import Envelope, Instruction, check_ip
from .errors import Code, ElvesError
from .quartz import QuartzError, QuartzRule, parse
from .router import Alias, ElvesCall, ElvesRouter
from .scheduler import Send
from .store import TaskRow
from .tasklog import elves_time, new_task_id, now_ms

__all__ = [
    "CronService",
    "CronSettings",
    "CronRepository",
    "CronRow",
    "Clock",
    "SystemClock",
    "ManualClock",
    "SELF_CRON_SET",
    "SELF_CRON_DEL",
    "install",
    "start",
    "stop",
]

log = logging.getLogger("fleetrpc.elves.cron")

SELF_CRON_SET = "elves.setSelfCron"
SELF_CRON_DEL = "elves.delSelfCron"
CENTER, SELF = "center", "self"
#: Most crons one agent may have.
MAX_CRONS_PER_AGENT = 1000


class CronSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How center crons fire."""

    #: The longest a node sleeps without looking for due crons (it wakes
    #: earlier for its own crons; this bounds how late it sees crons
    #: created or started on another node).
    poll_interval_s: float = 1.0
    #: How far ahead of their fire time the loop claims firings and moves
    #: the crons on, so that at the fire time only the sending is left
    #: (seconds; 0 claims them when due).
    lookahead_s: float = 2.0
    #: Most firings taken per pass of the loop.
    batch: int = 50_000
    #: How long pushing a self cron to an agent may take.
    push_timeout_s: float = 10.0
    #: Firing records (the exactly-once claims) older than this are deleted.
    firing_retention_days: float = 7.0
    #: The time zone rules are read in (an IANA name).
    timezone: str = "UTC"


# -- store ------------------------------------------------------------------------


class CronRow(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    caller: str
    agent_ip: str
    cron_type: str
    rule: str
    ins: str  # JSON of the normalised Instruction
    enabled: int
    create_time: int
    next_fire: int | None = None
    last_exec_time: int | None = None
    last_task_id: str | None = None
    last_result: str | None = None

    def instruction(self) -> Instruction:
        return msgspec.json.decode(self.ins, type=Instruction)


_COLUMNS = ("id", "tenant_id", "caller", "agent_ip", "cron_type", "rule", "ins", "enabled",
            "create_time", "next_fire", "last_exec_time", "last_task_id", "last_result")
_SELECT = ", ".join(_COLUMNS)


def _row(r: Any) -> CronRow:
    return CronRow(**{c: r[i] for i, c in enumerate(_COLUMNS)})


class CronRepository:
    """``elves_cron`` and ``elves_cron_firing``.  Methods named
    ``*_any_tenant`` serve the firing loop, which runs every tenant's crons."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def insert(self, row: CronRow) -> None:
        marks = ", ".join(f"${i + 1}" for i in range(len(_COLUMNS)))
        await self.db.execute(
            f"INSERT INTO elves_cron ({_SELECT}) VALUES ({marks})", *(getattr(row, c) for c in _COLUMNS)
        )

    async def get(self, tenant_id: str, cron_id: str) -> CronRow | None:
        r = await self.db.fetchrow(f"SELECT {_SELECT} FROM elves_cron WHERE tenant_id = $1 AND id = $2", tenant_id, cron_id)
        return None if r is None else _row(r)

    async def by_ip(self, tenant_id: str, ip: str, caller: str | None) -> list[CronRow]:
        if caller is None:
            rows = await self.db.fetch(
                f"SELECT {_SELECT} FROM elves_cron WHERE tenant_id = $1 AND agent_ip = $2 ORDER BY create_time, id",
                tenant_id, ip)
        else:
            rows = await self.db.fetch(
                f"SELECT {_SELECT} FROM elves_cron WHERE tenant_id = $1 AND agent_ip = $2 AND caller = $3 "
                "ORDER BY create_time, id", tenant_id, ip, caller)
        return [_row(r) for r in rows]

    async def count_by_ip(self, tenant_id: str, ip: str) -> int:
        return int(await self.db.fetchval(
            "SELECT COUNT(*) FROM elves_cron WHERE tenant_id = $1 AND agent_ip = $2", tenant_id, ip))

    async def set_enabled(self, tenant_id: str, cron_id: str, enabled: bool, next_fire: int | None) -> bool:
        n = await self.db.execute(
            "UPDATE elves_cron SET enabled = $3, next_fire = $4 WHERE tenant_id = $1 AND id = $2",
            tenant_id, cron_id, 1 if enabled else 0, next_fire)
        return n > 0

    async def delete(self, tenant_id: str, cron_id: str) -> bool:
        n = await self.db.execute("DELETE FROM elves_cron WHERE tenant_id = $1 AND id = $2", tenant_id, cron_id)
        await self.db.execute("DELETE FROM elves_cron_firing WHERE tenant_id = $1 AND cron_id = $2", tenant_id, cron_id)
        return n > 0

    # -- firing ----------------------------------------------------------------

    async def due_any_tenant(self, now_ms: int, limit: int) -> list[CronRow]:
        rows = await self.db.fetch(
            f"SELECT {_SELECT} FROM elves_cron WHERE next_fire <= $1 AND enabled = 1 AND cron_type = 'center' "
            "ORDER BY next_fire LIMIT $2", now_ms, limit)
        return [_row(r) for r in rows]

    async def earliest_any_tenant(self) -> int | None:
        v = await self.db.fetchval(
            "SELECT MIN(next_fire) FROM elves_cron WHERE enabled = 1 AND cron_type = 'center'")
        return None if v is None else int(v)

    async def claim_any_tenant(self, firings: list[tuple[str, int, str]], node: str, now_ms: int) -> set[tuple[str, int]]:
        """Insert ``(cron id, fire time, tenant)`` claims; the ones this
        call inserted (the others were claimed by another node)."""
        won: set[tuple[str, int]] = set()
        chunk = 500  # 5 parameters a row: well under both dialects' limits
        for i in range(0, len(firings), chunk):
            part = firings[i:i + chunk]
            values, args = [], []
            for j, (cron_id, fire, tenant) in enumerate(part):
                b = j * 5
                values.append(f"(${b + 1}, ${b + 2}, ${b + 3}, ${b + 4}, ${b + 5})")
                args += [cron_id, fire, tenant, node, now_ms]
            rows = await self.db.fetch(
                "INSERT INTO elves_cron_firing (cron_id, fire_time, tenant_id, node, claimed_ms) VALUES "
                + ", ".join(values) + " ON CONFLICT (cron_id, fire_time) DO NOTHING RETURNING cron_id, fire_time",
                *args)
            won.update((r[0], int(r[1])) for r in rows)
        return won

    async def advance_any_tenant(self, moves: list[tuple[str, int, int | None]]) -> None:
        """``(cron id, fire time seen, next fire)``: move each cron on,
        unless another node already did."""
        await self.db.executemany(
            "UPDATE elves_cron SET next_fire = $3 WHERE id = $1 AND next_fire = $2", moves)

    async def fired_any_tenant(self, records: list[tuple[str, int, str, int]]) -> None:
        """``(cron id, fire time, task id, exec time)`` of firings handed to the scheduler."""
        if not records:
            return
        await self.db.executemany(
            "UPDATE elves_cron_firing SET task_id = $3 WHERE cron_id = $1 AND fire_time = $2",
            [(c, f, t) for c, f, t, _ in records])
        await self.db.executemany(
            "UPDATE elves_cron SET last_exec_time = $2, last_task_id = $3 WHERE id = $1",
            [(c, at, t) for c, _, t, at in records])

    async def get_any_tenant(self, cron_id: str) -> CronRow | None:
        """A cron by id alone: an agent reporting a run of its self cron
        (the caller checks that the cron is that agent's)."""
        r = await self.db.fetchrow(f"SELECT {_SELECT} FROM elves_cron WHERE id = $1", cron_id)
        return None if r is None else _row(r)

    async def record_exec(self, tenant_id: str, cron_id: str, at: int, task_id: str, result: str) -> None:
        await self.db.execute(
            "UPDATE elves_cron SET last_exec_time = $3, last_task_id = $4, last_result = $5 "
            "WHERE tenant_id = $1 AND id = $2", tenant_id, cron_id, at, task_id, result)

    async def set_results(self, results: list[tuple[str, str, str]]) -> None:
        """``(tenant, cron id, result)`` of many crons, in one write."""
        if results:
            await self.db.executemany(
                "UPDATE elves_cron SET last_result = $3 WHERE tenant_id = $1 AND id = $2", results)

    async def set_result(self, tenant_id: str, cron_id: str, result: str) -> None:
        await self.db.execute(
            "UPDATE elves_cron SET last_result = $3 WHERE tenant_id = $1 AND id = $2", tenant_id, cron_id, result)

    async def cron_of_task(self, tenant_id: str, task_id: str) -> str | None:
        return await self.db.fetchval(
            "SELECT cron_id FROM elves_cron_firing WHERE tenant_id = $1 AND task_id = $2", tenant_id, task_id)

    async def firings(self, tenant_id: str, cron_id: str) -> list[tuple[int, str, str | None]]:
        rows = await self.db.fetch(
            "SELECT fire_time, node, task_id FROM elves_cron_firing WHERE tenant_id = $1 AND cron_id = $2 "
            "ORDER BY fire_time", tenant_id, cron_id)
        return [(int(r[0]), r[1], r[2]) for r in rows]

    async def purge_firings_any_tenant(self, before_ms: int) -> int:
        return await self.db.execute("DELETE FROM elves_cron_firing WHERE claimed_ms < $1", before_ms)


# -- arguments ----------------------------------------------------------------------


class _SetArgs(msgspec.Struct):
    agentip: str
    rule: str
    ins: Instruction
    cron_type: str = CENTER


class _IpArgs(msgspec.Struct):
    agentip: str


class _NewIpArgs(msgspec.Struct):
    ip: str


class _CreateArgs(msgspec.Struct):
    ip: str
    app: str
    func: str
    rule: str
    mode: str = ""
    param: Any = ""
    timeout: int | float | str | None = None
    proxy: str = ""
    cron_type: str = CENTER


def _cron_id_of(env: Envelope) -> str:
    value = env.get("cron_id", env.get("id"))
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise ElvesError(Code.BAD_CRON_ID, f"Bad Cron Id: {value!r}")
    return value.strip()


def _has_rule(env: Envelope) -> bool:
    return env.has("rule") or env.has("ins")


def _has_id(env: Envelope) -> bool:
    return (env.has("id") or env.has("cron_id")) and not _has_rule(env)


def _list_only(env: Envelope) -> bool:
    return not _has_rule(env) and not _has_id(env)


FiredHook = Callable[[list[str], int, float], Awaitable[None] | None]


class CronService:
    """The cron functions and, for center crons, the firing loop."""

    def __init__(self, service: Any, settings: CronSettings | None = None, clock: Clock | None = None) -> None:
        self.service = service
        self.repo = CronRepository(service.db)
        self.settings = settings or CronSettings()
        self.clock: Clock = clock or SystemClock()
        self.node = getattr(getattr(service.dispatcher, "settings", None), "node_id", None) or secrets.token_hex(4)
        self._wake = asyncio.Event()
        self._never = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()
        self._fired_hooks: list[FiredHook] = []
        self._rules: dict[str, QuartzRule] = {}
        self._tz: ZoneInfo | None = None
        #: Firings this node claimed and handed to the scheduler.
        self.fired = 0

    # -- wiring --------------------------------------------------------------------

    def register(self, router: ElvesRouter) -> None:
        # The seed writes every cron function "setcronbyip": the arguments
        # say which one is meant (docs/elves-cron.md).
        router.register("cron", "setCronByIp", self.set_cron_by_ip, aliases=["setCron"])
        router.register("cron", "delCronByIpId", self.del_cron_by_ip_id,
                        aliases=[Alias("setcronbyip", when=_has_id)])
        router.register("cron", "getCronListByIp", self.get_cron_list_by_ip,
                        aliases=[Alias("setcronbyip", when=_list_only)])
        router.register("cron", "createCron", self.create_cron)
        router.register("cron", "startCron", self.start_cron, aliases=["start"])
        router.register("cron", "stopCron", self.stop_cron, aliases=["stop"])
        router.register("cron", "deleteCron", self.delete_cron, aliases=["delete"])
        router.register("cron", "cronDetail", self.cron_detail, aliases=["detail"])
        router.register("cron", "cronList", self.cron_list)

    def on_fired(self, hook: FiredHook) -> None:
        """Call ``hook(cron_ids, fire_time_ms, handed_at)`` each time this
        node hands claimed firings to the scheduler (``handed_at`` on the
        clock, epoch seconds): for tests and the lateness benchmark."""
        self._fired_hooks.append(hook)

    async def start(self) -> None:
        self._tz = ZoneInfo(self.settings.timezone)
        self.service.scheduler.on_result("cron", self._on_result)
        self.service.scheduler.self_cron_recorder = self.record_self_run
        self.service.heartbeat.cron_lister = self._list_for_heartbeat
        self._loop_task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # -- rules and time --------------------------------------------------------------

    def rule(self, text: str) -> QuartzRule:
        rule = self._rules.get(text)
        if rule is None:
            try:
                rule = parse(text)
            except QuartzError as exc:
                raise ElvesError(Code.BAD_CRON_RULE, f"Bad Cron Rule: {exc}") from None
            if len(self._rules) > 100_000:
                self._rules.clear()
            self._rules[text] = rule
        return rule

    def next_fire(self, rule: QuartzRule, after_ms: int) -> int | None:
        """The first fire time (epoch ms) strictly after ``after_ms``."""
        tz = self._tz or ZoneInfo(self.settings.timezone)
        local = datetime.fromtimestamp(after_ms / 1000, tz).replace(tzinfo=None)
        nxt = rule.next_after(local)
        if nxt is None:
            return None
        return int(nxt.replace(tzinfo=tz).timestamp()) * 1000

    def _now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    # -- the firing loop ---------------------------------------------------------------

    async def _run(self) -> None:
        last_purge = 0.0
        store_down = False
        while True:
            try:
                # A cluster runs one firing loop: the holder of a named lease
                # (service.cron_gate, set by the server part); the others
                # stand by and take over when it fails.  The per-firing
                # claims stay: a firing runs once even during a hand-over.
                gate = getattr(self.service, "cron_gate", None)
                if gate is not None and not await gate():
                    self._wake.clear()
                    await self.clock.sleep_until(self.clock.time() + self.settings.poll_interval_s, self._wake)
                    continue
                more = await self.run_due()
                now = self.clock.time()
                if now - last_purge > 3600:
                    last_purge = now
                    cutoff = int((now - self.settings.firing_retention_days * 86400) * 1000)
                    await self.repo.purge_firings_any_tenant(cutoff)
                if more:
                    continue
                earliest = await self.repo.earliest_any_tenant()
                now = self.clock.time()
                until = now + self.settings.poll_interval_s
                if earliest is not None:
                    until = min(until, earliest / 1000 - self.settings.lookahead_s)
                if store_down:
                    log.info("cron loop: the database is back")
                    store_down = False
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as e:
                # An outage: one line when it starts and one when it ends,
                # not a traceback every poll.
                if not store_down:
                    log.warning("cron loop: %s; trying again every %g s", e, self.settings.poll_interval_s)
                    store_down = True
                until = self.clock.time() + self.settings.poll_interval_s
            except Exception:
                log.exception("cron loop failed; trying again")
                until = self.clock.time() + self.settings.poll_interval_s
            self._wake.clear()
            await self.clock.sleep_until(until, self._wake)

    async def run_due(self) -> bool:
        """One pass: claim and fire every center cron due now.  Returns
        whether a full batch was taken (more may be due).  Safe to run on
        several nodes at once: each firing is claimed by exactly one."""
        now_ms = self._now_ms()
        horizon = now_ms + int(self.settings.lookahead_s * 1000)
        due = await self.repo.due_any_tenant(horizon, self.settings.batch)
        if not due:
            return False
        moves, claims = [], []
        nexts: dict[tuple[str, int], int | None] = {}  # crons due together often share their rule
        for row in due:
            # After its own fire time (claimed ahead) or after now (missed
            # firings are fired once, not caught up one by one).
            base = max(now_ms, row.next_fire)
            key = (row.rule, base)
            if key not in nexts:
                try:
                    nexts[key] = self.next_fire(self.rule(row.rule), base)
                except ElvesError:
                    nexts[key] = None  # a rule stored before it was refused: stop it
            moves.append((row.id, row.next_fire, nexts[key]))
            claims.append((row.id, row.next_fire, row.tenant_id))
        won = await self.repo.claim_any_tenant(claims, self.node, now_ms)
        # Every node moves the crons on, claimed or not (compare-and-set).
        await self.repo.advance_any_tenant(moves)
        by_time: dict[int, list[CronRow]] = {}
        for r in due:
            if (r.id, r.next_fire) in won:
                by_time.setdefault(r.next_fire, []).append(r)
        for fire in sorted(by_time):
            if fire / 1000 > self.clock.time():
                await self.clock.sleep_until(fire / 1000, self._never)
            await self._fire(by_time[fire])
        return len(due) >= self.settings.batch

    async def _fire(self, rows: list[CronRow]) -> None:
        """Hand claimed firings to the scheduler: one fan-out per app,
        instruction and fire time, each agent at most once per fan-out."""
        groups: dict[tuple[str, str, str, int], list[dict[str, CronRow]]] = {}
        for row in rows:
            buckets = groups.setdefault((row.tenant_id, row.caller, row.ins, row.next_fire or 0), [])
            for bucket in buckets:
                if row.agent_ip not in bucket:
                    bucket[row.agent_ip] = row
                    break
            else:
                buckets.append({row.agent_ip: row})
        # Grants are checked again at each firing (one query per app): a
        # revoked grant or a deleted app stops its crons.
        apps: dict[tuple[str, str], set[str]] = {}
        for row in rows:
            apps.setdefault((row.tenant_id, row.caller), set()).add(row.agent_ip)
        permitted: dict[tuple[str, str], dict[str, bool] | None] = {}
        for (tenant, caller), ips in apps.items():
            key = await self.service.supervisor.repo.get_app(tenant, caller)
            permitted[(tenant, caller)] = None if key is None else await self.service.supervisor.allowed(key, sorted(ips))
        await self._send([
            (tenant, caller, ins, fire, bucket, permitted[(tenant, caller)])
            for (tenant, caller, ins, fire), buckets in groups.items()
            for bucket in buckets
        ])

    async def _send(
        self, fans: list[tuple[str, str, str, int, dict[str, CronRow], dict[str, bool] | None]],
    ) -> None:
        """Hand the fan-outs of one fire time to the scheduler in one batch
        (``send_async_batch``: one task-log insert and one update for all of
        them), then record the firings and the failures, each in one write."""
        handed_at = self.clock.time()
        for _, _, _, fire, bucket, _ in fans:
            ids = [r.id for r in bucket.values()]
            for hook in self._fired_hooks:
                try:
                    res = hook(ids, fire, handed_at)
                    if asyncio.iscoroutine(res):
                        await res
                except Exception:
                    log.exception("cron fired hook failed")
        results: list[tuple[str, str, str]] = []  # (tenant, cron id, last result JSON)
        sends: list[Send] = []
        sent: list[tuple[int, dict[str, CronRow]]] = []
        for tenant_id, caller, ins_json, fire, bucket, allowed in fans:
            if allowed is None:
                error = f"[{Code.APP_NOT_FOUND}]App Not Found: {caller!r}"
                results += [(tenant_id, r.id, _result_json(False, error)) for r in bucket.values()]
                continue
            for ip in [ip for ip in bucket if not allowed.get(ip)]:
                row = bucket.pop(ip)
                results.append((tenant_id, row.id, _result_json(
                    False, f"[{Code.DENIED}]Permission Denied: app {caller!r} may no longer act on agent {ip}")))
            if bucket:
                ins = msgspec.json.decode(ins_json, type=Instruction)
                sends.append(Send(tenant_id, caller, list(bucket), ins))
                sent.append((fire, bucket))
        done_all: list[list[Any]] = []
        if sends:
            try:
                done_all = await self.service.scheduler.send_async_batch(sends, type="cron")
            except Exception:
                log.exception("cron firing of %d fan-outs failed", len(sends))
                done_all = []
        at = int(handed_at * 1000)
        records = []
        ok_tasks: dict[str, list[str]] = {}
        for s, (fire, bucket), done in zip(sends, sent, done_all):
            self.fired += len(done)
            records += [(bucket[d.ip].id, fire, d.task_id, at) for d in done]
            for d in done:
                if d.ok:
                    ok_tasks.setdefault(s.tenant_id, []).append(d.task_id)
                else:
                    # Offline or unknown agent: the task log has the failed
                    # task; the cron shows it as its last result.
                    results.append((s.tenant_id, bucket[d.ip].id, _result_json(False, d.error)))
        await self.repo.fired_any_tenant(records)
        await self.repo.set_results(results)
        # A fast agent may have reported before the firing knew its task
        # id (the result hook then found no cron): catch up from the log.
        for tenant_id, ids in ok_tasks.items():
            for i in range(0, len(ids), 1000):
                for task in await self.service.tasklog.get(tenant_id, ids[i:i + 1000]):
                    if task.worker_flag is not None:
                        await self._on_result(task)

    async def record_self_run(self, device: str, res: Any) -> TaskRow:
        """A run of a self cron, reported by its agent (``elves.agentAsyncResult``
        with ``cron_id``): a ``cron`` task of the log, already finished, and
        the cron's last result.  ValueError (the agent gets an error reply)
        for a cron that is not a self cron of this agent."""
        if not isinstance(res.cron_id, str) or len(res.cron_id) > 64 or len(res.id) > 64:
            raise ValueError("bad cron_id or id")
        row = await self.repo.get_any_tenant(res.cron_id)
        if row is None or row.cron_type != SELF:
            raise ValueError(f"no self cron {res.cron_id!r}")
        owned = await self.service.directory.owned(row.tenant_id, [device])
        if owned.get(device) != row.agent_ip:
            raise ValueError(f"self cron {res.cron_id!r} is not this agent's")
        ins = row.instruction()
        now = now_ms()
        # The agent's own clock says when the run started (as Elves' agent
        # reports it); only a value outside 1970-2099 is replaced by now.
        started = res.started if isinstance(res.started, int) and 0 < res.started < 4_102_444_800_000 else now
        task = TaskRow(
            id=new_task_id(), tenant_id=row.tenant_id, caller=row.caller, type="cron", mode=ins.mode,
            agent_ip=row.agent_ip, device=device, wire_id=res.id, app=ins.app, func=ins.func,
            instruct=msgspec.json.encode(ins).decode(), param=ins.param, timeout=int(ins.timeout),
            proxy=ins.proxy, starttime=started, agent_sync_flag=1, agent_sync_error="", agent_sync_costtime=0,
        )
        fields = self.service.tasklog.worker_fields(
            ins.mode, res.worker_flag, res.worker_result, int(res.worker_costtime), now)
        for name, value in fields.items():
            setattr(task, name, value)
        await self.service.tasklog.repo.insert_many([task])
        await self.repo.record_exec(row.tenant_id, row.id, started, task.id, _result_json(
            True, "", task.worker_flag, task.worker_message, task.worker_costtime, task.endtime))
        return task

    async def _on_result(self, task: Any) -> None:
        cron_id = await self.repo.cron_of_task(task.tenant_id, task.id)
        if cron_id is None:
            return
        await self.repo.set_result(task.tenant_id, cron_id, _result_json(
            True, "", task.worker_flag, task.worker_message, task.worker_costtime, task.endtime))

    # -- management (library API; the Elves functions wrap these) ------------------------

    async def create(
        self, call: ElvesCall, ip: str, rule_text: str, ins: Instruction, cron_type: str = CENTER
    ) -> CronRow:
        """Store (and for a self cron, push) a running cron; authorised
        against the supervisor like any instruction."""
        ip = check_ip(ip)
        cron_type = (cron_type or CENTER).strip().lower()
        if cron_type not in (CENTER, SELF):
            raise ElvesError(Code.MALFORMED, f"Bad Argument: cron_type must be 'center' or 'self', not {cron_type!r}")
        if not isinstance(rule_text, str):
            raise ElvesError(Code.BAD_CRON_RULE, "Bad Cron Rule: not a string")
        rule_text = " ".join(rule_text.split())
        rule = self.rule(rule_text)
        ins = ins.normalised()
        if call.caller is None and call.via == "http":
            # A tenant admin acts as the instruction's app (of the tenant):
            # Elves' later functions name the app outside an "ins".
            call.caller = await self.service.supervisor.repo.get_app(call.tenant_id, ins.app)
            if call.caller is None:
                raise ElvesError(Code.APP_NOT_FOUND, f"App Not Found: {ins.app!r}")
        key = await self.service.supervisor.authorize(call, [ip], app=ins.app)
        if await self.repo.count_by_ip(call.tenant_id, ip) >= MAX_CRONS_PER_AGENT:
            raise ElvesError(Code.MALFORMED, f"Bad Argument: agent {ip} has {MAX_CRONS_PER_AGENT} crons already")
        now = self._now_ms()
        row = CronRow(
            id=secrets.token_hex(8).upper(), tenant_id=call.tenant_id, caller=key.app, agent_ip=ip,
            cron_type=cron_type, rule=rule_text, ins=msgspec.json.encode(ins).decode(), enabled=1,
            create_time=now, next_fire=self.next_fire(rule, now) if cron_type == CENTER else None,
        )
        if cron_type == SELF:
            await self._push(call.tenant_id, row)
        await self.repo.insert(row)
        self._wake.set()
        return row

    async def _own(self, call: ElvesCall, cron_id: str) -> CronRow:
        row = await self.repo.get(call.tenant_id, cron_id)
        if row is None or (call.caller is not None and row.caller != call.caller.app) or (
            call.caller is None and call.via != "http"
        ):
            raise ElvesError(Code.CRON_NOT_FOUND, f"Not Find Cron Job To Operate: {cron_id!r}")
        return row

    async def set_enabled(self, call: ElvesCall, cron_id: str, enabled: bool) -> CronRow:
        row = await self._own(call, cron_id)
        nxt = None
        if enabled and row.cron_type == CENTER:
            nxt = self.next_fire(self.rule(row.rule), self._now_ms())
        row.enabled = 1 if enabled else 0
        if row.cron_type == SELF:
            await self._push(call.tenant_id, row)
        await self.repo.set_enabled(call.tenant_id, cron_id, enabled, nxt)
        row.next_fire = nxt
        self._wake.set()
        return row

    async def delete(self, call: ElvesCall, cron_id: str, ip: str | None = None) -> None:
        row = await self._own(call, cron_id)
        if ip is not None and row.agent_ip != check_ip(ip):
            raise ElvesError(Code.CRON_NOT_FOUND, f"Not Find Cron Job To Operate: {cron_id!r} of agent {ip}")
        if row.cron_type == SELF:
            await self._push(call.tenant_id, row, delete=True)
        await self.repo.delete(call.tenant_id, cron_id)

    async def _push(self, tenant_id: str, row: CronRow, *, delete: bool = False) -> None:
        """Tell the agent about its self cron (set, enable/disable, delete)."""
        devices = await self.service.directory.resolve(tenant_id, [row.agent_ip])
        device = devices.get(row.agent_ip)
        if device is None:
            raise ElvesError(Code.AGENT_NOT_FOUND, f"Agent Info Not Found: {row.agent_ip}")
        if delete:
            method, params = SELF_CRON_DEL, {"id": row.id}
        else:
            ins = row.instruction()
            method, params = SELF_CRON_SET, {"id": row.id, "cron": {
                "Flag": "true" if row.enabled else "false", "Comment": "", "App": ins.app, "Func": ins.func,
                "Param": ins.param, "Timeout": ins.timeout, "Proxy": ins.proxy, "Mode": ins.mode, "Rule": row.rule,
            }}
        try:
            reply = await self.service.dispatcher.call(device, method, params, timeout=self.settings.push_timeout_s)
        except FleetRpcError as exc:
            raise ElvesError(Code.SEND_FAILED, f"Send Job To Agent Fail: {row.agent_ip}: {exc}") from None
        if not (isinstance(reply, dict) and reply.get("ok") is True):
            raise ElvesError(Code.SEND_FAILED, f"Send Job To Agent Fail: {row.agent_ip} answered {reply!r:.200}")

    async def list_crons(self, call: ElvesCall, ip: str) -> list[CronRow]:
        caller = call.caller.app if call.caller is not None else None
        if caller is None and call.via != "http":
            return []
        return await self.repo.by_ip(call.tenant_id, check_ip(ip), caller)

    async def _list_for_heartbeat(self, tenant_id: str, ip: str) -> list[dict[str, Any]]:
        return [render_cron(r) for r in await self.repo.by_ip(tenant_id, ip, None)]

    # -- the Elves functions ---------------------------------------------------------

    async def set_cron_by_ip(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        try:
            args = env.args(_SetArgs)
            row = await self.create(call, args.agentip, args.rule, args.ins, args.cron_type)
        except ElvesError as err:
            raise ElvesError(err.code, err.message, error_info=str(err), **err.fields) from None
        return {"error_info": "", "cron_id": row.id, "id": row.id}

    async def create_cron(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        a = env.args(_CreateArgs)
        ins = Instruction(app=a.app, func=a.func, mode=a.mode, param=a.param, timeout=a.timeout, proxy=a.proxy)
        row = await self.create(call, a.ip, a.rule, ins, a.cron_type)
        return {"id": row.id, "result": {"id": row.id}}

    async def del_cron_by_ip_id(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        try:
            ip = env.args(_IpArgs).agentip
            await self.delete(call, _cron_id_of(env), ip)
        except ElvesError as err:
            raise ElvesError(err.code, err.message, error_info=str(err), **err.fields) from None
        return {"error_info": ""}

    async def delete_cron(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        await self.delete(call, _cron_id_of(env))
        return {}

    async def start_cron(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        await self.set_enabled(call, _cron_id_of(env), True)
        return {}

    async def stop_cron(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        await self.set_enabled(call, _cron_id_of(env), False)
        return {}

    async def get_cron_list_by_ip(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        rows = await self.list_crons(call, env.args(_IpArgs).agentip)
        return {"cron_list": [render_cron(r) for r in rows]}

    async def cron_list(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        ip = env.args(_NewIpArgs).ip if env.has("ip") else env.args(_IpArgs).agentip
        return {"result": [r.id for r in await self.list_crons(call, ip)]}

    async def cron_detail(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        row = await self._own(call, _cron_id_of(env))
        return {"result": render_cron(row, detail=True)}


def _result_json(ok: bool, error: str, worker_flag: Any = None, message: Any = None, cost: Any = None,
                 end: Any = None) -> str:
    return msgspec.json.encode({
        "flag": "true" if ok else "false", "error": error, "worker_flag": worker_flag,
        "worker_message": message, "worker_costtime": cost, "end_time": elves_time(end) if end else "",
    }).decode()


def render_cron(row: CronRow, *, detail: bool = False) -> dict[str, Any]:
    """A cron as getCronListByIp answers it (the seed's fields); with
    ``detail``, cronDetail's (Elves' later fields)."""
    ins = msgspec.json.decode(row.ins)
    out: dict[str, Any] = {
        "cron_id": row.id,
        "agent_ip": row.agent_ip,
        "cron_type": row.cron_type,
        "ins": {k: ins.get(k, "") for k in ("mode", "app", "func", "param", "timeout", "proxy")},
        "param": ins.get("param", ""),
        "rule": row.rule,
        "create_time": elves_time(row.create_time),
        "cron_flag": "1" if row.enabled else "0",
        "next_fire_time": elves_time(row.next_fire) if row.next_fire is not None else "",
    }
    if detail:
        out.update(
            id=row.id, ip=row.agent_ip, app=ins.get("app", ""), func=ins.get("func", ""),
            mode=ins.get("mode", ""), timeout=ins.get("timeout", ""), proxy=ins.get("proxy", ""),
            last_exec_time=elves_time(row.last_exec_time) if row.last_exec_time else "",
            last_exec_result=msgspec.json.decode(row.last_result) if row.last_result else {},
            last_task_id=row.last_task_id or "",
        )
    return out


# -- plug-in hooks (services/elves/service.py) ---------------------------------------


def install(service: Any) -> None:
    service.cron = CronService(service, getattr(service, "cron_settings", None), getattr(service, "clock", None))
    service.cron.register(service.router)


async def start(service: Any) -> None:
    await service.cron.start()


async def stop(service: Any) -> None:
    await service.cron.stop()
