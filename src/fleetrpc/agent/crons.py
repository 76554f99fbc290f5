"""An agent's self crons: instructions the agent runs on its own schedule.

The server pushes them (docs/elves-cron.md, "Self crons")::

    elves.setSelfCron {"id", "cron": {"Flag": "true"|"false", "Comment", "App", "Func",
                                      "Param", "Timeout", "Proxy", "Mode", "Rule"}}
    elves.delSelfCron {"id"}

and the agent answers ``{"ok": true}`` (a bad entry, or one larger than
:data:`MAX_SELF_CRON_BYTES` as JSON: an ``INVALID_PARAMS`` error, and
nothing is kept).  The entries are kept in ``<root>/conf/cron.json``
(``{id: entry}``, Elves' own file), written whole through a temporary file
and a rename so that a crash never leaves half a file; an agent without a
root keeps them in memory only.  An agent that starts reads the file and
runs what it finds.

Each enabled entry (``Flag`` "true") fires at the times of its Quartz rule
(:mod:`fleetrpc.services.elves.quartz`), read in the agent's time zone
(``timezone``; None: the machine's local time, as Elves' agent does).  A run
goes through the same path as an instruction (:meth:`ElvesAgent.execute`)
and is reported like an async result, ``elves.agentAsyncResult`` with the
cron's id (``{"id": <run id>, "cron_id", "started", "worker_flag",
"worker_result", "worker_costtime"}``); the server records it in the task
log as a ``cron`` task and as the cron's last result.  A firing missed
while the agent was down is not caught up: the schedule goes on from the
present, and so is a firing that comes while the cron's previous run
still goes on (counted in ``skipped``): one run per cron at a time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable
from zoneinfo import ZoneInfo

import msgspec

from ..services.elves.clock import Clock, SystemClock
from ..services.elves.quartz import QuartzError, QuartzRule, parse

__all__ = ["SelfCrons", "CronEntry", "SELF_CRON_SET", "SELF_CRON_DEL", "MAX_SELF_CRONS", "MAX_SELF_CRON_BYTES"]

log = logging.getLogger("fleetrpc.agent.crons")

SELF_CRON_SET = "elves.setSelfCron"
SELF_CRON_DEL = "elves.delSelfCron"
#: Most self crons one agent keeps (the server allows 1000 crons per agent).
MAX_SELF_CRONS = 1000
#: Most bytes of one entry, as JSON: all of them are kept in memory, written
#: to the file at every change and listed in every heartbeat.
MAX_SELF_CRON_BYTES = 16 * 1024

#: ``run(cron_id, entry)``: run one firing (and report it).
Runner = Callable[[str, "CronEntry"], Awaitable[None]]


class CronEntry(msgspec.Struct, forbid_unknown_fields=False):
    """An entry of ``conf/cron.json``, with Elves' capitalised keys."""

    Rule: str
    App: str
    Func: str
    Flag: str = "true"
    Comment: str = ""
    Param: str = ""
    Timeout: int | float | str = 90
    Proxy: str = ""
    Mode: str = "NP"

    @property
    def enabled(self) -> bool:
        return self.Flag.strip().lower() in ("true", "1")

    @property
    def timeout(self) -> float:
        try:
            t = float(self.Timeout) if self.Timeout != "" else 90.0
        except ValueError:
            return 90.0
        return max(t, 0.0)


class _SetArgs(msgspec.Struct):
    id: str
    cron: CronEntry


class _DelArgs(msgspec.Struct):
    id: str


def _check_id(value: str) -> str:
    if not value or len(value) > 64 or any(c in value for c in "/\\\x00"):
        raise ValueError(f"bad self cron id {value[:40]!r}")
    return value


def _check_size(entry: CronEntry) -> None:
    size = len(msgspec.json.encode(entry))
    if size > MAX_SELF_CRON_BYTES:
        raise ValueError(f"a self cron of {size} bytes, over the {MAX_SELF_CRON_BYTES} one may have")


class SelfCrons:
    """The agent's self crons: kept, persisted, fired; see the module docstring."""

    def __init__(
        self,
        path: Path | None,
        run: Runner,
        *,
        clock: Clock | None = None,
        timezone: str | None = None,
    ) -> None:
        self.path = path
        self._run = run
        self.clock: Clock = clock or SystemClock()
        self._tz = ZoneInfo(timezone) if timezone else None
        self.entries: dict[str, CronEntry] = {}
        self._rules: dict[str, QuartzRule] = {}
        self._next: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task | None = None
        self._runs: set[asyncio.Task] = set()
        self._running: dict[str, asyncio.Task] = {}  # cron id -> its run under way
        #: Firings started since the agent started.
        self.fired = 0
        #: Firings not started because the cron's previous run had not ended.
        self.skipped = 0

    # -- the device methods ---------------------------------------------------

    def on_set(self, params: Any) -> dict[str, Any]:
        try:
            args = msgspec.convert(params, _SetArgs, strict=False)
            cron_id = _check_id(args.id)
            _check_size(args.cron)
            rule = parse(args.cron.Rule)
        except (msgspec.ValidationError, QuartzError, ValueError) as exc:
            return {"error": {"code": "INVALID_PARAMS", "message": f"bad {SELF_CRON_SET} request: {exc}"}}
        if cron_id not in self.entries and len(self.entries) >= MAX_SELF_CRONS:
            return {"error": {"code": "INVALID_PARAMS", "message": f"at most {MAX_SELF_CRONS} self crons"}}
        self.entries[cron_id] = args.cron
        self._rules[cron_id] = rule
        self._schedule(cron_id)
        self._save()
        return {"ok": True}

    def on_delete(self, params: Any) -> dict[str, Any]:
        try:
            cron_id = msgspec.convert(params, _DelArgs, strict=False).id
        except msgspec.ValidationError as exc:
            return {"error": {"code": "INVALID_PARAMS", "message": f"bad {SELF_CRON_DEL} request: {exc}"}}
        # Deleting what is not there is done already (the server may retry).
        if self.entries.pop(cron_id, None) is not None:
            self._rules.pop(cron_id, None)
            self._next.pop(cron_id, None)
            self._save()
            self._wake.set()
        return {"ok": True}

    # -- what the heartbeat reports --------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """``[{"cron_id", ...the entry, "next_fire_time"}]`` (epoch ms, or None)."""
        out = []
        for cron_id, entry in self.entries.items():
            nxt = self._next.get(cron_id)
            out.append({"cron_id": cron_id, **msgspec.structs.asdict(entry),
                        "next_fire_time": None if nxt is None else int(nxt * 1000)})
        return out

    # -- persistence --------------------------------------------------------------

    def load(self) -> None:
        """Read ``conf/cron.json``; entries that are not valid are skipped
        (and logged), the others run."""
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s): no self crons", self.path, exc)
            return
        if not isinstance(data, dict):
            log.warning("%s is not an object of crons: ignored", self.path)
            return
        for cron_id, raw in list(data.items())[:MAX_SELF_CRONS]:
            try:
                entry = msgspec.convert(raw, CronEntry, strict=False)
                _check_size(entry)
                rule = parse(entry.Rule)
                _check_id(cron_id)
            except (msgspec.ValidationError, QuartzError, ValueError) as exc:
                log.warning("%s: self cron %r skipped: %s", self.path, cron_id, exc)
                continue
            self.entries[cron_id] = entry
            self._rules[cron_id] = rule
            self._schedule(cron_id)

    def _save(self) -> None:
        if self.path is None:
            return
        data = {k: msgspec.structs.asdict(v) for k, v in self.entries.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), "utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot write %s: %s (the self crons run, but a restart forgets the change)", self.path, exc)
            tmp.unlink(missing_ok=True)

    # -- firing ----------------------------------------------------------------------

    def _next_after(self, cron_id: str, after: float) -> float | None:
        rule = self._rules[cron_id]
        if self._tz is None:
            local = datetime.fromtimestamp(after)
            nxt = rule.next_after(local)
            return None if nxt is None else nxt.timestamp()
        local = datetime.fromtimestamp(after, self._tz).replace(tzinfo=None)
        nxt = rule.next_after(local)
        return None if nxt is None else nxt.replace(tzinfo=self._tz).timestamp()

    def _schedule(self, cron_id: str, after: float | None = None) -> None:
        entry = self.entries[cron_id]
        nxt = self._next_after(cron_id, self.clock.time() if after is None else after) if entry.enabled else None
        if nxt is None:
            self._next.pop(cron_id, None)
        else:
            self._next[cron_id] = nxt
        self._wake.set()

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.ensure_future(self._fire_forever())

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        for task in list(self._runs):
            task.cancel()
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)

    def _run_done(self, cron_id: str, task: asyncio.Task) -> None:
        self._runs.discard(task)
        if self._running.get(cron_id) is task:
            del self._running[cron_id]

    async def _fire_forever(self) -> None:
        while True:
            # Cleared before looking, so that a change made while this pass
            # runs wakes the next sleep at once.
            self._wake.clear()
            now = self.clock.time()
            for cron_id, when in sorted(self._next.items(), key=lambda kv: kv[1]):
                if when > now:
                    break
                entry = self.entries[cron_id]
                # From the fire time (or now, after a pause): never a burst of
                # missed firings.
                self._schedule(cron_id, max(when, now))
                if cron_id in self._running:
                    # Its previous run goes on: a cron firing faster than its
                    # command ends would otherwise pile up runs without end.
                    self.skipped += 1
                    continue
                self.fired += 1
                task = asyncio.ensure_future(self._run(cron_id, entry))
                self._runs.add(task)
                self._running[cron_id] = task
                task.add_done_callback(functools.partial(self._run_done, cron_id))
            self._wake.clear()
            earliest = min(self._next.values(), default=None)
            await self.clock.sleep_until(earliest if earliest is not None else now + 3600, self._wake)
