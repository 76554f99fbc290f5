"""A fleet of simulated devices that answer fleetrpc requests.

Each device is its own MQTT 3.1.1 connection (a :class:`LeanClient`) with
client id = device id (``dev-00042``).  It subscribes to
``{prefix}/d/{device}/req/#`` and answers every request
``{prefix}/d/{device}/req/{node}/{rid}`` on ``{prefix}/d/{device}/res/{node}/{rid}``
(and, when asked to, acknowledges delivery first on ``.../ack/{node}/{rid}``).
On connect it publishes a retained ``{"status": "online", "ts": ms}`` on
``{prefix}/d/{device}/presence`` and leaves ``{"status": "offline"}`` there as
its retained Last Will, so an abrupt disconnect (churn) is seen by the server.

Behaviour (:class:`Behaviour`, changeable while running):

* methods: ``echo`` (and any unknown method) replies with the request's
  params, byte for byte; ``sleep`` waits ``params.ms`` first; ``fail``
  replies ``{"error": {...}}``; ``notify`` is never answered (the request
  payload does not say whether a call is one-way, so a device knows it by
  its method, as ThingsBoard devices do);
* fixed latency, plus uniform random jitter; a fraction of slow devices;
* an error rate (reply ``{"error": {"code": "SIM_ERROR", ...}}``) and a drop
  rate (no reply at all);
* ack before reply; churn (every interval a fraction of the online devices
  drops its connection abruptly and comes back after ``offline_s``).

The devices are spread over worker processes (subprocesses talking over a
socket pair, uvloop in each) so the simulator is not what limits a benchmark; ``processes=0``
runs them on the caller's event loop instead (tests, tiny fleets).  Every
worker raises its open-file limit to the hard limit, stops when told, when
its parent disappears, and after ``lifetime`` seconds at the latest.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from .leanmqtt import Flusher, LeanClient, MqttError, parse_url
from ..runner import freeze_startup_heap
from ..wire import DeviceTopics, ErrorCode, error_reply

__all__ = ["Behaviour", "Fleet", "FleetError", "device_id", "raise_nofile_limit"]

DEFAULT_ID_FORMAT = "dev-{:05d}"
_DEFAULT_PREFIX = "fleetrpc"  # same as fleetrpc._core.constants.DEFAULT_PREFIX


class FleetError(RuntimeError):
    """The fleet could not start (devices did not connect) or a worker failed."""


class Behaviour(msgspec.Struct, kw_only=True):
    """How simulated devices answer.  All rates are probabilities in [0, 1]."""

    #: Fixed delay before every reply (ms).
    latency_ms: float = 0.0
    #: Extra delay drawn uniformly from [0, jitter_ms] per request.
    jitter_ms: float = 0.0
    #: Probability that a reply is ``{"error": {...}}`` instead of the result.
    error_rate: float = 0.0
    #: Probability that a request gets no reply at all.
    drop_rate: float = 0.0
    #: Fraction of devices that are slow (chosen by device index, stable).
    slow_fraction: float = 0.0
    #: Reply delay of a slow device (ms), instead of latency_ms.
    slow_latency_ms: float = 1000.0
    #: Publish a delivery ack on ``.../ack/{node}/{rid}`` before the reply.
    ack: bool = False
    #: Publish retained presence on connect and set the offline Last Will.
    presence: bool = True
    #: Seconds between churn rounds (0 = no churn).
    churn_interval_s: float = 0.0
    #: Fraction of the online devices that drop off in each churn round.
    churn_fraction: float = 0.05
    #: How long a churned device stays offline before reconnecting (s).
    offline_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate", "slow_fraction", "churn_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], not {value!r}")
        for name in ("latency_ms", "jitter_ms", "slow_latency_ms", "churn_interval_s", "offline_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


def device_id(index: int, id_format: str = DEFAULT_ID_FORMAT) -> str:
    """The simulated device id of index ``index``: ``dev-00042``."""
    return id_format.format(index)


def raise_nofile_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; returns it."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class _Request(msgspec.Struct):
    method: str
    params: msgspec.Raw = msgspec.Raw(b"null")


class _SleepParams(msgspec.Struct):
    ms: float = 0.0


_decode_request = msgspec.json.Decoder(_Request).decode
_decode_sleep = msgspec.json.Decoder(_SleepParams).decode
_SIM_ERROR = error_reply("SIM_ERROR", "simulated failure")
_FAIL_ERROR = error_reply("FAILED", "method fail always fails")
_BAD_REQUEST = error_reply(ErrorCode.BAD_REQUEST, 'request is not {"method", "params"}')
_OFFLINE = b'{"status":"offline"}'

_COUNTERS = (
    "requests", "replies", "notified", "errors", "dropped", "acks", "malformed", "unexpected",
    "skipped",  # replies not sent because the device went offline meanwhile
    "connects", "disconnects", "churned", "failed_connects",
)


# -- one device -----------------------------------------------------------------


class _Device:
    __slots__ = ("ack", "churning", "client", "id", "index", "presence", "req", "res", "sim", "slow", "up")

    def __init__(self, sim: _Sim, index: int, dev_id: str) -> None:
        topics = DeviceTopics(sim.prefix, dev_id)
        self.sim = sim
        self.id = dev_id
        self.index = index
        self.client: LeanClient | None = None
        #: connected, subscribed and counted online
        self.up = False
        self.req = topics.request_head
        self.res = topics.reply_head
        self.ack = topics.ack_head
        self.presence = topics.presence
        self.slow = False
        self.churning = False

    def on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        sim = self.sim
        if not topic.startswith(self.req):
            sim.unexpected += 1
            return
        tail = topic[len(self.req):]  # "{node}/{rid}"
        sim.requests += 1
        b = sim.behaviour
        rnd = sim.random
        try:
            req = _decode_request(payload)
        except msgspec.DecodeError:
            req = None
        else:
            if req.method == "notify":  # one-way by convention: never answered
                sim.notified += 1
                return
        if b.drop_rate and rnd() < b.drop_rate:
            sim.dropped += 1
            return
        delay = b.slow_latency_ms if self.slow else b.latency_ms
        if req is None:
            sim.malformed += 1
            body = _BAD_REQUEST
        else:
            method = req.method
            if method == "fail":
                body = _FAIL_ERROR
            elif b.error_rate and rnd() < b.error_rate:
                body = _SIM_ERROR
                sim.errors += 1
            else:
                body = req.params  # echo: the params, byte for byte
                if method == "sleep":
                    try:
                        delay += _decode_sleep(body).ms
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        pass
        if b.ack:
            self.client.publish(self.ack + tail, b"", sim.qos)  # type: ignore[union-attr]
            sim.acks += 1
        if b.jitter_ms:
            delay += rnd() * b.jitter_ms
        if delay > 0:
            sim.loop.call_later(delay / 1000.0, self.reply, self.client, tail, body)
        else:
            self.client.publish(self.res + tail, body, sim.qos)  # type: ignore[union-attr]
            sim.replies += 1

    def reply(self, client: LeanClient, tail: str, body: bytes) -> None:
        # The request came in on `client`; a reconnected device has a new one
        # and its server-side call has already been written off.
        if client is not self.client or not client.connected:
            self.sim.skipped += 1
            return
        client.publish(self.res + tail, body, self.sim.qos)
        self.sim.replies += 1

    def on_close(self, client: LeanClient, exc: Exception | None) -> None:
        if client is self.client:
            self.client = None
            if self.up:
                self.up = False
                self.sim.device_closed(self)


# -- the devices of one process -------------------------------------------------


class _Sim:
    """The devices of one process, on one event loop."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port, self.username, self.password = parse_url(spec["url"])
        self.prefix: str = spec["prefix"]
        self.qos: int = spec["qos"]
        self.keepalive: int = spec["keepalive"]
        self.behaviour: Behaviour = msgspec.convert(spec["behaviour"], Behaviour)
        rng = random.Random(spec["seed"])
        self.random = rng.random
        self._rng = rng
        self.flusher = Flusher(self.loop)
        self._sem = asyncio.Semaphore(spec["connect_concurrency"])
        self.running = False
        self.devices = [
            _Device(self, i, device_id(i, spec["id_format"]))
            for i in range(spec["first"], spec["first"] + spec["count"])
        ]
        self._apply_slow()
        for name in _COUNTERS:
            setattr(self, name, 0)
        self.online = 0
        self._tasks: set[asyncio.Task] = set()
        self._churn_task: asyncio.Task | None = None

    def _apply_slow(self) -> None:
        # Stable choice by index, so every worker agrees and reruns match.
        frac = self.behaviour.slow_fraction
        for dev in self.devices:
            dev.slow = frac > 0 and (dev.index * 2654435761 % 1000) < frac * 1000

    def stats(self) -> dict[str, int]:
        out = {name: getattr(self, name) for name in _COUNTERS}
        out["devices"] = len(self.devices)
        out["online"] = self.online
        return out

    def configure(self, changes: dict[str, Any]) -> None:
        data = msgspec.structs.asdict(self.behaviour)
        data.update(changes)
        self.behaviour = msgspec.convert(data, Behaviour)
        self._apply_slow()
        self._restart_churn()

    # -- connections ----------------------------------------------------------

    async def start(self) -> None:
        self.running = True
        await asyncio.gather(*(self._connect(dev) for dev in self.devices))
        self._restart_churn()

    async def _connect(self, dev: _Device, attempts: int = 5) -> bool:
        b = self.behaviour
        delay = 0.2
        for _ in range(attempts):
            if not self.running:
                return False
            client = LeanClient(
                dev.id,
                on_message=dev.on_message,
                will=(dev.presence, _OFFLINE, 1, True) if b.presence else None,
                keepalive=self.keepalive,
                username=self.username,
                password=self.password,
                flusher=self.flusher,
            )
            client.on_close = lambda exc, dev=dev, client=client: dev.on_close(client, exc)
            try:
                async with self._sem:
                    await client.connect(self.host, self.port, timeout=10.0)
                    dev.client = client  # before SUBACK: a request may follow at once
                    await asyncio.wait_for(client.subscribe((dev.req + "#", self.qos)), 10.0)
            except (OSError, MqttError, asyncio.TimeoutError):
                if dev.client is client:
                    dev.client = None
                client.abort()
                await asyncio.sleep(delay * (1 + self._rng.random()))
                delay = min(delay * 2, 5.0)
                continue
            if dev.client is not client:  # lost while subscribing
                continue
            if b.presence:
                ts = int(time.time() * 1000)
                client.publish(dev.presence, b'{"status":"online","ts":%d}' % ts, 1, True)
            dev.churning = False
            dev.up = True
            self.online += 1
            self.connects += 1
            return True
        self.failed_connects += 1
        return False

    def device_closed(self, dev: _Device) -> None:
        self.online -= 1
        if not self.running:
            return
        if dev.churning:
            self.churned += 1
            self._spawn(self._reconnect_later(dev, self.behaviour.offline_s))
        else:  # the broker dropped us: come back soon, as a real device would
            self.disconnects += 1
            self._spawn(self._reconnect_later(dev, 1.0))

    async def _reconnect_later(self, dev: _Device, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.running and dev.client is None:
            await self._connect(dev)

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- churn ----------------------------------------------------------------

    def _restart_churn(self) -> None:
        if self._churn_task is not None:
            self._churn_task.cancel()
            self._churn_task = None
        if self.running and self.behaviour.churn_interval_s > 0:
            self._churn_task = self.loop.create_task(self._churn())

    async def _churn(self) -> None:
        while self.running:
            b = self.behaviour
            await asyncio.sleep(b.churn_interval_s)
            online = [d for d in self.devices if d.up and not d.churning]
            if not online:
                continue
            k = max(1, round(len(online) * b.churn_fraction))
            for dev in self._rng.sample(online, min(k, len(online))):
                dev.churning = True
                dev.client.abort()  # type: ignore[union-attr]  # no DISCONNECT: the Will fires

    # -- stop -------------------------------------------------------------------

    async def stop(self) -> None:
        self.running = False
        if self._churn_task is not None:
            self._churn_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        presence = self.behaviour.presence

        async def bye(dev: _Device) -> None:
            client = dev.client
            if client is None:
                return
            if presence:  # a clean stop leaves the truth behind: offline
                client.publish(dev.presence, _OFFLINE, 0, True)
            try:
                await asyncio.wait_for(client.disconnect(), 5.0)
            except (asyncio.TimeoutError, OSError):
                client.abort()

        await asyncio.gather(*(bye(dev) for dev in self.devices), return_exceptions=True)


# -- worker processes -------------------------------------------------------------


def _worker_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Body of a worker process (started by :class:`_ProcWorker`)."""
    raise_nofile_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        uvloop = None
    coro = _worker(conn, spec)
    try:
        if uvloop is not None:
            uvloop.run(coro)
        else:
            asyncio.run(coro)
    except KeyboardInterrupt:
        pass


async def _worker(conn, spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    parent = os.getppid()
    done = loop.create_future()
    sim = _Sim(spec)

    def finish(_why: str) -> None:
        if not done.done():
            done.set_result(_why)

    def on_command() -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent gone
            loop.remove_reader(conn.fileno())
            finish("eof")
            return
        cmd = msg[0]
        if cmd == "stats":
            conn.send(("stats", sim.stats()))
        elif cmd == "configure":
            try:
                sim.configure(msg[1])
                conn.send(("ok", None))
            except (msgspec.ValidationError, ValueError) as exc:
                conn.send(("error", str(exc)))
        elif cmd == "stop":
            finish("stop")

    async def watchdog() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        finish("orphaned")

    loop.add_reader(conn.fileno(), on_command)
    dog = loop.create_task(watchdog())
    if spec.get("lifetime"):
        loop.call_later(spec["lifetime"], finish, "lifetime")
    try:
        await sim.start()
        # Thousands of connections are long-lived objects: a full collection
        # over them stalls every device of this worker for tens of ms.
        freeze_startup_heap()
        conn.send(("ready", sim.stats()))
        await done
    finally:
        dog.cancel()
        await sim.stop()
        try:
            loop.remove_reader(conn.fileno())
            conn.send(("stopped", sim.stats()))
        except (OSError, ValueError):
            pass


class _ProcWorker:
    """A worker process and the socket pair we talk to it through.

    Started with ``subprocess`` (``python -m fleetrpc.sim.fleet``) rather
    than ``multiprocessing``: a spawned child would re-import the caller's
    ``__main__`` (a script, pytest, a CliRunner), which must then be guarded;
    a fork would copy a running event loop.  Messages are pickled tuples over
    a :class:`multiprocessing.connection.Connection` on the socket.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        # The child must import the very fleetrpc this process uses.
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        fd = child_sock.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, str(fd), json.dumps(spec)],
            pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL,
        )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.last: dict[str, int] = {}

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _recv(self, timeout: float, want: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.poll(left):
                raise FleetError(f"simulator worker {self.proc.pid} did not answer in {timeout:.0f} s")
            try:
                kind, body = self.conn.recv()
            except (EOFError, OSError):
                raise FleetError(f"simulator worker {self.proc.pid} exited "
                                 f"(code {self.proc.poll()}); see its stderr above") from None
            if kind == "error":
                raise FleetError(body)
            if kind == want or (want == "ok" and kind in ("ok", "stopped")):
                return body
            # a late "stats" after a timeout, or "stopped": keep the freshest numbers
            if isinstance(body, dict):
                self.last = body

    async def wait_ready(self, timeout: float) -> dict[str, int]:
        self.last = await asyncio.to_thread(self._recv, timeout, "ready")
        return self.last

    async def request(self, msg: tuple, want: str, timeout: float = 10.0) -> Any:
        def rpc():
            self.conn.send(msg)
            return self._recv(timeout, want)

        if not self.alive:
            raise FleetError(f"simulator worker {self.proc.pid} died (exit code {self.proc.returncode})")
        return await asyncio.to_thread(rpc)

    async def stop(self, timeout: float) -> dict[str, int]:
        try:
            if self.alive:
                self.conn.send(("stop",))
                self.last = await asyncio.to_thread(self._recv, timeout, "stopped")
        except (FleetError, OSError, EOFError):
            pass
        for signal_it in (None, self.proc.terminate, self.proc.kill):
            if signal_it is not None and self.alive:
                signal_it()
            try:
                await asyncio.to_thread(self.proc.wait, 5.0)
                break
            except subprocess.TimeoutExpired:
                continue
        self.conn.close()
        return self.last


class Fleet:
    """N simulated devices, each its own MQTT connection, over worker processes.

    ``async with Fleet("mqtt://127.0.0.1:1883", 1000) as fleet:`` connects
    every device (and raises :class:`FleetError` if some could not connect),
    and disconnects them all on exit.  ``processes=None`` picks one worker per
    CPU (at most 4); ``processes=0`` runs the devices on the caller's loop.
    """

    def __init__(
        self,
        url: str,
        devices: int = 1000,
        *,
        processes: int | None = None,
        behaviour: Behaviour | None = None,
        prefix: str = _DEFAULT_PREFIX,
        qos: int = 1,
        first: int = 0,
        id_format: str = DEFAULT_ID_FORMAT,
        keepalive: int = 60,
        seed: int | None = None,
        connect_concurrency: int = 32,
        lifetime: float | None = 3600.0,
    ) -> None:
        if devices < 1:
            raise ValueError("a fleet needs at least one device")
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos!r}")
        parse_url(url)  # fail early on a bad URL
        if processes is None:
            processes = max(1, min(4, os.cpu_count() or 1))
        self.url = url
        self.processes = min(processes, devices)
        self.behaviour = behaviour or Behaviour()
        self.prefix = prefix
        self.qos = qos
        self.device_ids = [device_id(i, id_format) for i in range(first, first + devices)]
        seed = random.randrange(1 << 30) if seed is None else seed
        spec = {
            "url": url, "prefix": prefix, "qos": qos, "keepalive": keepalive,
            "id_format": id_format, "behaviour": msgspec.structs.asdict(self.behaviour),
            "connect_concurrency": connect_concurrency, "lifetime": lifetime,
        }
        parts = max(1, self.processes)
        self._specs = []
        start = first
        for k in range(parts):
            count = devices // parts + (1 if k < devices % parts else 0)
            self._specs.append(dict(spec, first=start, count=count, seed=seed + k))
            start += count
        self._workers: list[_ProcWorker] = []
        self._local: _Sim | None = None
        self._started = False

    def __len__(self) -> int:
        return len(self.device_ids)

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the worker processes (none when in-process)."""
        return tuple(w.proc.pid for w in self._workers)

    async def start(self, timeout: float | None = None) -> dict[str, int]:
        """Connect every device; returns the summed counters."""
        if self._started:
            raise FleetError("fleet already started")
        self._started = True
        if timeout is None:
            timeout = 30.0 + len(self.device_ids) / 200.0
        raise_nofile_limit()
        try:
            if self.processes == 0:
                self._local = _Sim(self._specs[0])
                await asyncio.wait_for(self._local.start(), timeout)
                stats = self._local.stats()
            else:
                self._workers = [_ProcWorker(spec) for spec in self._specs]
                parts = await asyncio.gather(*(w.wait_ready(timeout) for w in self._workers))
                stats = _sum(parts)
        except BaseException:
            await self.stop()
            raise
        if stats["online"] < len(self.device_ids):
            await self.stop()
            raise FleetError(
                f"only {stats['online']} of {len(self.device_ids)} simulated devices connected "
                f"to {self.url} (open-file limits? broker max_connections?)"
            )
        return stats

    async def stats(self) -> dict[str, int]:
        """Counters summed over all devices: requests, replies, errors, ..."""
        if self._local is not None:
            return self._local.stats()
        parts = await asyncio.gather(*(w.request(("stats",), "stats") for w in self._workers))
        for w, p in zip(self._workers, parts):
            w.last = p
        return _sum(parts)

    async def configure(self, **changes: Any) -> None:
        """Change the behaviour of every device, e.g. ``configure(drop_rate=1.0)``."""
        data = msgspec.structs.asdict(self.behaviour)
        data.update(changes)
        self.behaviour = msgspec.convert(data, Behaviour)  # validate here first
        if self._local is not None:
            self._local.configure(changes)
        else:
            await asyncio.gather(*(w.request(("configure", changes), "ok") for w in self._workers))

    async def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """Disconnect every device (gracefully) and end the workers."""
        if self._local is not None:
            sim, self._local = self._local, None
            await sim.stop()
            return sim.stats()
        workers, self._workers = self._workers, []
        parts = await asyncio.gather(*(w.stop(timeout) for w in workers))
        return _sum([p for p in parts if p])

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _sum(parts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0) + v
    return out


_WORKER_BOOT = (
    "import sys, json\n"
    "from multiprocessing.connection import Connection\n"
    "from fleetrpc.sim.fleet import _worker_main\n"
    "_worker_main(Connection(int(sys.argv[1])), json.loads(sys.argv[2]))\n"
)
