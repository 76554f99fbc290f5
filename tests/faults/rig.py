"""What the fault probes drive: the server in a process of its own, devices,
a hostile publisher, the REST API, the database and the figures.

The server runs in a child process (``tests/faults/serve.py``) so that a
probe can ``kill -9`` it and start it again, with the same node id or a new
one, against the same broker and database.  The broker and PostgreSQL are
the throwaway ones of ``tests/services.py`` (``mqtt_broker``, ``pg_server``),
which can be stopped, killed and started on the same port.

Every device answers ``work`` with :func:`answer`, a function of the call's
parameters and of the device's own id, so that an answer that belongs to
another call or another device is seen as wrong, never as right.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fleetrpc.device import DeviceClient
from fleetrpc.sim.leanmqtt import LeanClient, parse_url

from .serve import EMAIL, PASSWORD

REPO = Path(__file__).resolve().parents[2]
TENANT = "7e4a0000-0000-4000-8000-000000000001"
JWT_SECRET = "faults-secret-" + "x" * 60
PREFIX = "fleetrpc"
#: Statuses a call never leaves (DELIVERED too for a one-way call; TIMEOUT
#: is terminal only once the retries are spent, see :func:`is_terminal`).
FINAL = ("SUCCESSFUL", "FAILED", "EXPIRED", "DELETED")


def device_uuid(kind: int, i: int) -> str:
    """A device id: ThingsBoard's ids are UUIDs, the REST paths check it."""
    return f"00000000-0000-4000-{0x8000 + kind:04x}-{i:012d}"


def answer(device: str, params: Any) -> Any:
    """What device ``device`` answers to ``work(params)``."""
    i = params.get("i") if isinstance(params, dict) else None
    return {"dev": device, "i": i, "sq": i * i if isinstance(i, int) else None,
            "nonce": params.get("nonce") if isinstance(params, dict) else None}


# -- the server process ----------------------------------------------------------------


class ServerProcess:
    """``fleetrpc serve``'s parts in a child process (see serve.py)."""

    def __init__(self, workdir: Path, *, mqtt_url: str, store_url: str, devices: list[str],
                 node_id: str = "faults-node", sections: dict[str, dict[str, Any]] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mqtt_url = mqtt_url
        self.store_url = store_url
        self.devices = list(devices)
        self.node_id = node_id
        self.sections = sections or {}
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.gc_threshold: int | None = None
        self.starts = 0
        self.log_path = self.workdir / "server.log"

    def _spec(self) -> dict[str, Any]:
        settings: dict[str, dict[str, Any]] = {
            "server": {"data_dir": str(self.workdir / "data"), "drain_timeout_s": 2.0, "log_level": "INFO"},
            "mqtt": {"url": self.mqtt_url, "reconnect_delay": 0.1, "reconnect_max": 0.5},
            "store": {"url": self.store_url, "ttl_enabled": False},
            "dispatch": {"min_timeout_ms": 0, "node_id": self.node_id},
            "http": {"port": 0, "access_log": False},
            "jwt": {"secret": JWT_SECRET},
            "auth": {"failed_login_delay_ms": 0},
        }
        for section, values in self.sections.items():
            settings.setdefault(section, {}).update(values)
        return {"settings": settings, "tenant": TENANT, "devices": self.devices}

    async def start(self, *, node_id: str | None = None, timeout: float = 60.0) -> None:
        """Start (again); ``node_id`` changes the node's id from now on."""
        if self.alive:
            raise RuntimeError("the server is already running")
        if node_id is not None:
            self.node_id = node_id
        spec = self.workdir / "spec.json"
        spec.write_text(json.dumps(self._spec()))
        log = open(self.log_path, "ab")
        log.write(f"=== start {self.starts + 1} node {self.node_id}\n".encode())
        log.flush()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.serve", str(spec)], cwd=REPO, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
        )
        log.close()
        self.starts += 1
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), timeout)
        if not line.startswith(b"READY "):
            self.proc.wait()
            raise RuntimeError(f"the server did not start (exit {self.proc.returncode}):\n{self.log_tail()}")
        self.url = line.split()[1].decode()
        self.gc_threshold = int(line.split()[2])  # what `fleetrpc serve` set once it was up

    def kill9(self) -> None:
        """SIGKILL: no drain, no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(None, self.proc.wait), timeout)
            except asyncio.TimeoutError:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self) -> int:
        """Resident memory of the server process (kB)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def crashes(self) -> list[str]:
        """Records of the log that show a crash or an unhandled exception
        (ERROR and CRITICAL; a WARNING may carry the traceback of an
        expected failure, such as a write while the database is down)."""
        return [line for line in self.log_text().splitlines()
                if (" ERROR " in line or " CRITICAL " in line) and not self._retrying(line)]

    @staticmethod
    def _retrying(line: str) -> bool:
        # A background loop that failed and says it tries again (the Elves
        # cron while the database is down) recovered by design: counted by
        # retried_errors(), not as a crash.
        return line.rstrip().endswith(("trying again", "retrying"))

    def retried_errors(self) -> int:
        return sum(1 for line in self.log_text().splitlines() if " ERROR " in line and self._retrying(line))

    def warnings(self) -> int:
        return sum(1 for line in self.log_text().splitlines() if " WARNING " in line)


# -- the REST API ----------------------------------------------------------------------


class Api:
    """The server's REST API as a tenant administrator sees it; follows the
    server across restarts (its URL changes, the token stays valid)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None))
        self.token: str | None = None

    async def close(self) -> None:
        await self.session.close()

    async def login(self) -> None:
        async with self.session.post(f"{self.server.url}/api/auth/login",
                                     json={"username": EMAIL, "password": PASSWORD}) as r:
            assert r.status == 200, await r.text()
            self.token = (await r.json())["token"]

    async def post(self, path: str, body: Any) -> tuple[int, bytes]:
        if self.token is None:
            await self.login()
        async with self.session.post(f"{self.server.url}{path}", json=body,
                                     headers={"X-Authorization": f"Bearer {self.token}"}) as r:
            return r.status, await r.read()

    async def twoway(self, device: str, params: Any, *, method: str = "work", timeout_ms: int = 10_000,
                     version: str = "v1") -> tuple[int, Any]:
        """A lightweight two-way call: (status, decoded body or raw bytes)."""
        path = "/api/plugins/rpc/twoway/" if version == "v1" else "/api/rpc/twoway/"
        status, body = await self.post(path + device, {"method": method, "params": params, "timeout": timeout_ms})
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, body

    async def persistent(self, device: str, params: Any, *, method: str = "work", timeout_ms: int = 10_000,
                         retries: int = 5, expiration_ms: int | None = None) -> str | None:
        """A persistent call: its rpcId, or None when the server refused it."""
        body = {"method": method, "params": params, "persistent": True, "timeout": timeout_ms, "retries": retries}
        if expiration_ms is not None:
            body["expirationTime"] = int(time.time() * 1000) + expiration_ms
        status, raw = await self.post("/api/plugins/rpc/twoway/" + device, body)
        if status != 200:
            return None
        return json.loads(raw)["rpcId"]

    async def metrics(self) -> dict[str, float]:
        """``/metrics`` flattened: ``name`` or ``name{label=value}`` -> value."""
        async with self.session.get(f"{self.server.url}/metrics") as r:
            text = await r.text()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    async def dispatcher_events(self) -> dict[str, float]:
        """The dispatcher's counters (``fleetrpc_dispatcher_events``)."""
        m = await self.metrics()
        prefix = "fleetrpc_dispatcher_events_total{event="
        return {k[len(prefix):-1]: v for k, v in m.items() if k.startswith(prefix)}


# -- devices ---------------------------------------------------------------------------


class Device:
    """A device on the SDK (its own MQTT connection) that answers ``work``
    with :func:`answer` after ``latency`` seconds, or never when ``silent``.
    Counts how often it ran each call (``runs[i]``): more than once is a
    duplicate execution."""

    def __init__(self, device_id: str, mqtt_url: str, *, latency: float = 0.0, silent: bool = False,
                 poison: bool = False) -> None:
        self.id = device_id
        self.latency = latency
        self.silent = silent
        self.poison = poison
        self.runs: collections.Counter = collections.Counter()
        self.client = DeviceClient(device_id, mqtt_url, keepalive=5, reply_memory=100_000)
        self.client.add_method("work", self.work)
        self._never = asyncio.Event()

    async def work(self, params: Any) -> Any:
        key = params.get("i") if isinstance(params, dict) else None
        self.runs[key] += 1
        if self.silent:
            await self._never.wait()
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.poison and poisoned(key):
            return {"dev": self.id, "i": key, "text": "nul \u0000 inside"}
        return answer(self.id, params)

    @property
    def duplicate_runs(self) -> int:
        return sum(n - 1 for n in self.runs.values() if n > 1)

    async def connect(self) -> None:
        await self.client.connect()

    async def close(self) -> None:
        await self.client.close()


def poisoned(i: Any) -> bool:
    """Whether a poison device answers call ``i`` with a value PostgreSQL refuses."""
    return isinstance(i, int) and i % 3 == 0


def expected_reply(device: Device, i: int) -> Any:
    if device.poison and poisoned(i):
        return None  # refused by the database: the call must FAIL, not hang
    return answer(device.id, {"i": i})


# -- a hostile publisher -------------------------------------------------------------------


class Attacker:
    """A raw MQTT connection that publishes anything anywhere.

    :meth:`barrier` makes a client-side call from its own device id and
    waits for the server's answer: the broker delivers one publisher's
    messages in order, so once the answer arrives the server has read
    everything published before it."""

    def __init__(self, mqtt_url: str, device_id: str) -> None:
        self.host, self.port, _, _ = parse_url(mqtt_url)
        self.device_id = device_id
        self.client = LeanClient(f"attacker-{device_id}", on_message=self._on_message, keepalive=30)
        self._answers: dict[str, asyncio.Future] = {}
        self._cid = 0
        self.sent = 0

    async def connect(self) -> None:
        await self.client.connect(self.host, self.port)
        await self.client.subscribe((f"{PREFIX}/d/{self.device_id}/ret/+", 1))

    def _on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        fut = self._answers.pop(topic.rsplit("/", 1)[-1], None)
        if fut is not None and not fut.done():
            fut.set_result(payload)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.client.publish(topic, payload, qos)
        self.sent += 1

    async def barrier(self, timeout: float = 120.0) -> bytes:
        """A client-side call of an unknown method; returns the error reply."""
        self._cid += 1
        cid = str(900_000_000 + self._cid)
        fut = asyncio.get_running_loop().create_future()
        self._answers[cid] = fut
        self.client.publish(f"{PREFIX}/d/{self.device_id}/call/{cid}", b'{"method":"faults.barrier","params":{}}', 1)
        return await asyncio.wait_for(fut, timeout)

    async def drain(self) -> None:
        """Wait until the broker has taken every QoS 1 publish."""
        await self.client.publish_wait(f"{PREFIX}/faults/drain", b"", 1)

    async def close(self) -> None:
        await self.client.disconnect()


# -- the database ------------------------------------------------------------------------


async def rpc_rows(dsn: str) -> dict[str, dict[str, Any]]:
    """Every persistent call in the database: id -> row."""
    import asyncpg

    for attempt in range(300):
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            break
        except (OSError, asyncpg.CannotConnectNowError):
            if attempt == 299:
                raise
            await asyncio.sleep(0.1)  # recovering from a crash
    try:
        rows = await conn.fetch("SELECT id, device_id, status, oneway, retries, response::text AS response, error, attempts, "
                               "params::text AS params FROM rpc")
    finally:
        await conn.close()
    out = {}
    for r in rows:
        d = dict(r)
        d["response"] = json.loads(d["response"]) if d["response"] is not None else None
        d["params"] = json.loads(d["params"]) if d["params"] is not None else None
        out[d["id"]] = d
    return out


async def wait_terminal(dsn: str, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Wait until every call of ``ids`` is stored in a terminal status (or
    ``timeout`` passed); returns the rows.  (The calls finish in another
    process: there is no event to await, the database is the truth.)"""
    deadline = time.monotonic() + timeout
    while True:
        rows = await rpc_rows(dsn)
        open_ = [i for i in ids if i not in rows or not is_terminal(rows[i])]
        if not open_ or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.5)


def is_terminal(row: dict[str, Any]) -> bool:
    """The store's own rule (``UNFINISHED_SQL``): QUEUED, SENT, TIMEOUT and a
    two-way call's DELIVERED still change."""
    status = row["status"]
    return status in FINAL or (status == "DELIVERED" and row["oneway"])


class Tally(collections.Counter):
    """Outcomes of a probe's calls, by name (``wrong_examples``: a few wrong
    ones, for the failure message)."""

    wrong_examples: list

    def wrong(self, row: dict[str, Any] | None, want: Any) -> None:
        self["wrong"] += 1
        if not hasattr(self, "wrong_examples"):
            self.wrong_examples = []
        if len(self.wrong_examples) < 5:
            self.wrong_examples.append({"row": row, "expected": want})

    def __repr__(self) -> str:
        return f"Tally({dict(self)}, wrong_examples={getattr(self, 'wrong_examples', [])})"

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.items()))


def assert_every_call_ended_right(rows: dict[str, dict[str, Any]], accepted: dict[str, tuple[Device, int]],
                                  slow: set[str], *, strict: bool) -> Tally:
    """What a persistent-load probe must show: no call lost or wrong, every
    call terminal.  A call may end by its own timeout or expiration (FAILED
    after its retries, EXPIRED): that is how a backlog ends when it outgrows
    the calls' timeouts, as the long run's does on devices taking 0.3-1 s a
    call and under repeated broker outages -- by design, never lost.
    ``strict`` (the short run, sized for it): every call to a device that
    keeps up (not in ``slow``) SUCCESSFUL."""
    tally = judge_persistent(rows, accepted)
    assert tally["lost"] == 0 and tally["wrong"] == 0, tally
    assert set(+tally) <= {"ok", "failed", "expired"}, tally
    if strict:
        keeping_up = {k: v for k, v in accepted.items() if v[0].id not in slow}
        kept = judge_persistent(rows, keeping_up)
        assert kept["ok"] == len(keeping_up), kept
    return tally


def judge_persistent(rows: dict[str, dict[str, Any]], accepted: dict[str, tuple[Device, int]]) -> Tally:
    """Count each accepted call: ``lost`` (no row, or never terminal),
    ``wrong`` (an answer that is not its own), ``ok`` and the other terminal
    statuses by name."""
    t = Tally()
    for rpc_id, (device, i) in accepted.items():
        row = rows.get(rpc_id)
        if row is None or not is_terminal(row):
            t["lost"] += 1
            continue
        want = expected_reply(device, i)
        if row["device_id"] != device.id:
            t.wrong(row, want)
            continue
        if row["status"] == "SUCCESSFUL":
            if want is None or row["response"] != want:
                t.wrong(row, want)
            else:
                t["ok"] += 1
        elif want is None and row["status"] == "FAILED":
            t["refused_reply_failed"] += 1
        else:
            t[row["status"].lower()] += 1
    return t
