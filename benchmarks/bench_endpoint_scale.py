"""The device endpoint at scale: idle connections, a connection storm, a
soak with churn.  Devices are ThingsBoard-style (access token as user name,
``v1/devices/me/rpc/request/+``), each its own TCP connection, made by
worker processes with a bare client (below); the endpoint and a Dispatcher
run in this process, which is the one measured.

    python benchmarks/bench_endpoint_scale.py idle  --devices 20000 --keepalive 60
    python benchmarks/bench_endpoint_scale.py storm --devices 10000
    python benchmarks/bench_endpoint_scale.py soak  --devices 2000 --seconds 120
    python benchmarks/bench_endpoint_scale.py lose  --devices 10000

- ``idle``: memory per connection in this process after they settle (RSS
  delta; and, with ``--trace``, Python objects by tracemalloc), and the CPU
  of their keepalives.  Kernel socket buffers are not in RSS.  With
  ``--nodes K``, K endpoint processes share one port (SO_REUSEPORT, as
  ``[endpoint] reuse_port``), each measured on its own, and the kernel's
  memory per connection is reported too: the way to 100,000 connections
  where one process may not open that many files
  (``idle --devices 100000 --nodes 7 --processes 6 --idle-seconds 60``).
- ``storm``: every device connects at once; tokens are checked against a
  SQLite device registry (``DeviceRepository.by_token``) through the
  server's cache (``DeviceDirectory``), cold.  Reports the time until the
  dispatcher has seen every device online.  With ``--share``, the node
  also stands in for its devices on a throwaway Mosquitto, as ``fleetrpc
  serve`` does (CompositeTransport with ``node``: a retained presence and a
  subscription per device), and a second node on that broker, with no
  endpoint, must see them all online too.
- ``lose``: node "lost" has every device on its endpoint, node
  "survivor" (an endpoint too, sharing, no devices of its own) and node
  "reader" (the broker only) see them online; then "lost"'s broker
  connection ends without DISCONNECT (its devices stay connected to it, as
  when a machine drops off the network).  Reports the time until both other
  nodes see every device offline (the Will, and "survivor"'s "offline" for
  each device), and the CPU of this process (all three nodes) and of
  Mosquitto meanwhile.
- ``soak``: calls at a steady rate while a fraction of the devices drops
  and reconnects every few seconds; samples RSS, Python memory and the
  endpoint's tables, which must stay flat.

Past 25,000 connections, they come from several loopback source addresses
(127.0.0.2, ...), as one address has ~28,000 ephemeral ports; each device
worker process holds its share of the connections, so past ~19,000 per
worker (the open file limit here) add ``--processes``.  The open file
limit is raised as far as the process may (without CAP_SYS_RESOURCE: to its
hard limit, which caps the connections of this one process).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import random
import resource
import socket
import sys
import tempfile
import time
import tracemalloc

import uvloop

from fleetrpc import Dispatcher, Settings
from fleetrpc.bench.memory import rss_bytes
from fleetrpc.bench.rig import throwaway_broker
from fleetrpc.runner import SERVER_GC_THRESHOLD, raise_gc_threshold
from fleetrpc.transport.endpoint import CompositeTransport, DeviceEndpoint, EndpointSettings

_PER_SOURCE = 25_000  # connections per loopback source address


def _raise_nofile(n: int = 1 << 20) -> int:
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the devices (worker processes) -------------------------------------------------------


def _mstr(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def _packet(first: int, body: bytes) -> bytes:
    n = len(body)
    out = bytearray((first,))
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out) + body


_SUBSCRIBE = _packet(0x82, b"\x00\x01" + _mstr("v1/devices/me/rpc/request/+") + b"\x01")
_REQ = "v1/devices/me/rpc/request/"


class _Device(asyncio.Protocol):
    """A bare ThingsBoard-style device: connects, subscribes, answers every
    request with its params, sends PINGREQ every keepalive (by the worker's
    timer)."""

    __slots__ = ("w", "token", "transport", "buf", "up")

    def __init__(self, w: "_Worker", token: str) -> None:
        self.w = w
        self.token = token
        self.transport = None
        self.buf = b""
        self.up = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        body = _mstr("MQTT") + bytes((4, 0xC2)) + self.w.keepalive.to_bytes(2, "big")
        transport.write(_packet(0x10, body + _mstr(self.token) + _mstr(self.token) + _mstr("x")))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        out = []
        while n - pos >= 2:
            length, mult, i = 0, 1, pos + 1
            complete = False
            while i < n:
                b = buf[i]
                length += (b & 0x7F) * mult
                i += 1
                if not b & 0x80:
                    complete = True
                    break
                mult *= 128
            end = i + length
            if not complete or end > n:
                break
            cmd = buf[pos]
            if cmd == 0x20:
                if buf[i + 1] == 0:
                    self.transport.write(_SUBSCRIBE)
                else:
                    self.w.refused += 1
            elif cmd == 0x90:
                self.up = True
                self.w.online += 1
            elif cmd >> 4 == 3:
                tlen = (buf[i] << 8) | buf[i + 1]
                topic = buf[i + 2:i + 2 + tlen].decode()
                j = i + 2 + tlen
                if cmd & 0x06:
                    out.append(b"\x40\x02" + buf[j:j + 2])
                    j += 2
                if topic.startswith(_REQ):
                    # {"method":..,"params":X} -> answer the raw request body itself
                    rt = "v1/devices/me/rpc/response/" + topic[len(_REQ):]
                    out.append(_packet(0x30, _mstr(rt) + buf[j:end]))
                    self.w.answered += 1
            pos = end
        self.buf = buf[pos:]
        if out:
            self.transport.write(b"".join(out))

    def connection_lost(self, exc) -> None:
        if self.up:
            self.w.online -= 1
        self.up = False
        self.transport = None


def _bound_socket(address: str) -> socket.socket:
    """A TCP socket bound to a source address, its port left to connect():
    IP_BIND_ADDRESS_NO_PORT, or the kernel searches a free port at every
    bind, which slows to seconds per thousand sockets past ~20,000."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
    sock.bind((address, 0))
    sock.setblocking(False)
    return sock


class _Worker:
    def __init__(self, port: int, tokens: list[str], keepalive: int, source: int) -> None:
        self.port = port
        self.tokens = tokens
        self.keepalive = keepalive
        self.source = source
        self.online = self.refused = self.answered = self.failed = 0
        self.devices: dict[str, _Device] = {}

    async def connect(self, token: str, k: int) -> None:
        loop = asyncio.get_running_loop()
        block = (self.source + k) // _PER_SOURCE
        for attempt in range(5):
            sock = None
            try:
                dev = _Device(self, token)
                if block:  # past the first address's ports: bind another source address
                    sock = _bound_socket(f"127.0.0.{1 + block}")
                    await loop.sock_connect(sock, ("127.0.0.1", self.port))
                    await loop.create_connection(lambda: dev, sock=sock)
                else:
                    await loop.create_connection(lambda: dev, "127.0.0.1", self.port)
                self.devices[token] = dev
                return
            except OSError:
                if sock is not None:
                    sock.close()
                await asyncio.sleep(0.2 * (attempt + 1))
        self.failed += 1

    async def run(self, conn, concurrency: int) -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(concurrency) if concurrency else None

        async def one(token, k):
            if sem is None:
                return await self.connect(token, k)
            async with sem:
                await self.connect(token, k)

        ping = loop.create_task(self._pings())
        conn.send("ready")  # then wait for "go": every worker starts at once
        await asyncio.to_thread(conn.recv)
        await asyncio.gather(*(one(t, k) for k, t in enumerate(self.tokens)))
        reader = asyncio.Event()
        loop.add_reader(conn.fileno(), reader.set)
        rng = random.Random(self.source)
        while True:
            await reader.wait()
            reader.clear()
            while conn.poll():
                cmd = conn.recv()
                if cmd[0] == "stats":
                    conn.send((self.online, self.refused, self.failed, self.answered))
                elif cmd[0] == "churn":  # drop k devices at once; they come back at once
                    victims = rng.sample(list(self.devices), min(cmd[1], len(self.devices)))
                    for t in victims:
                        d = self.devices.pop(t)
                        if d.transport is not None:
                            d.transport.abort()
                    await asyncio.gather(*(self.connect(t, self.tokens.index(t)) for t in victims))
                    conn.send("ok")
                elif cmd[0] == "stop":
                    ping.cancel()
                    for d in self.devices.values():
                        if d.transport is not None:
                            d.transport.write(b"\xe0\x00")
                            d.transport.close()
                    await asyncio.sleep(0.5)
                    conn.send("bye")
                    return

    async def _pings(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive)
            for d in list(self.devices.values()):
                if d.transport is not None:
                    d.transport.write(b"\xc0\x00")


def _worker_main(conn, port, tokens, keepalive, source, concurrency) -> None:
    _raise_nofile()
    uvloop.run(_Worker(port, tokens, keepalive, source).run(conn, concurrency))


async def _ask_all(pipes: list, cmd) -> list:
    """Send ``cmd`` to each child process on ``pipes``; their answers (None
    from one silent for 300 s)."""
    def one(pipe):
        pipe.send(cmd)
        return pipe.recv() if pipe.poll(300) else None
    return await asyncio.gather(*(asyncio.to_thread(one, p) for p in pipes))


class Devices:
    """N devices over ``processes`` worker processes."""

    def __init__(self, port: int, tokens: list[str], processes: int, keepalive: int, concurrency: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        self._ready = False
        per = -(-len(tokens) // processes)
        for k in range(processes):
            part = tokens[k * per:(k + 1) * per]
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(b, port, part, keepalive, k * per, concurrency), daemon=True)
            p.start()
            self.pipes.append(a)
            self.procs.append(p)

    async def ready(self) -> None:
        """Wait until every worker is ready (once)."""
        if not self._ready:
            for pipe in self.pipes:
                await asyncio.to_thread(pipe.recv)
            self._ready = True

    async def go(self) -> None:
        """Wait until every worker is ready, then start them all at once."""
        await self.ready()
        for pipe in self.pipes:
            pipe.send("go")

    async def ask(self, cmd: tuple) -> list:
        return await _ask_all(self.pipes, cmd)

    async def stats(self) -> tuple[int, int, int, int]:
        rows = await self.ask(("stats",))
        return tuple(sum(r[i] for r in rows) for i in range(4))

    async def stop(self) -> None:
        await self.ask(("stop",))
        for p in self.procs:
            p.join(10)


# -- the measured process ------------------------------------------------------------------


def _settings(args, node_id: str, mqtt_url: str | None = None) -> Settings:
    extra = {"mqtt_url": mqtt_url} if mqtt_url else {}
    return Settings(node_id=node_id, min_timeout_ms=0, presence_max_devices=max(args.devices * 2, 10_000), **extra)


async def _start(args, authenticate, mqtt_url: str | None = None, node_id: str = "bench", **endpoint):
    """The endpoint and its dispatcher; with ``mqtt_url``, sharing its
    devices on that broker as ``fleetrpc serve`` does (server/parts.py)."""
    ep = DeviceEndpoint(EndpointSettings(**{"host": "127.0.0.1", "port": 0, "max_connections": args.devices + 100,
                                            **endpoint}),
                        authenticate=authenticate)
    if mqtt_url is None:
        d = Dispatcher(_settings(args, node_id), transport=ep)
    else:
        d = Dispatcher(_settings(args, node_id, mqtt_url),
                       transport=lambda d: CompositeTransport(ep, d.mqtt_transport(), node=d.node))
    await d.start()
    return ep, d


async def _until_online(d: Dispatcher, n: int, devices: Devices, timeout: float) -> float:
    """Start the devices; seconds until the dispatcher has seen ``n`` online."""
    await devices.go()
    t0 = time.perf_counter()
    while len(d.presence.online) < n:
        if time.perf_counter() - t0 > timeout:
            online, refused, failed, _ = await devices.stats()
            raise RuntimeError(f"{len(d.presence.online)} of {n} online after {timeout} s "
                               f"(devices: {online} subscribed, {refused} refused, {failed} could not connect)")
        await asyncio.sleep(0.01)
    return time.perf_counter() - t0


def _token_id(username: str, password, client_id: str) -> str | None:
    return "dev-" + username[4:] if username.startswith("tok-") else None


def _kernel_memory() -> int:
    """Bytes the kernel holds in slabs (socket structures among them) and
    in TCP socket buffers, machine-wide."""
    with open("/proc/meminfo") as f:
        slab = next(int(line.split()[1]) * 1024 for line in f if line.startswith("Slab:"))
    with open("/proc/net/sockstat") as f:
        tcp = next(line.split() for line in f if line.startswith("TCP:"))
    return slab + int(tcp[tcp.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")


async def idle(args) -> None:
    if args.nodes > 1:
        await _idle_nodes(args)
        return
    tokens = [f"tok-{i}" for i in range(args.devices)]
    ep, d = await _start(args, _token_id)
    devices = Devices(ep.ports["tcp"], tokens, args.processes, args.keepalive, 256)
    try:
        # Counted from when the device workers are up, before they connect:
        # starting them (multiprocessing's modules, pipes, a thread pool) is
        # this script's cost, not the connections' (it was 128 KB, 64 B per
        # connection at 2000, when counted).
        await devices.ready()
        gc.collect()
        rss0 = rss_bytes()
        if args.trace:
            tracemalloc.start()
        took = await _until_online(d, args.devices, devices, 600)
        await asyncio.sleep(7)  # past the endpoint's IDLE_TRIM: the steady state of an idle connection
        gc.collect()
        rss1 = rss_bytes()
        traced = tracemalloc.get_traced_memory()[0] if args.trace else 0
        tracemalloc.stop()
        t0 = os.times()
        await asyncio.sleep(args.idle_seconds)
        t1 = os.times()
        cpu = (t1.user - t0.user) + (t1.system - t0.system)
        gc.collect()
        rss2 = rss_bytes()
        print(f"idle: {ep.connection_count} connections (connected in {took:.1f} s), "
              f"{(rss1 - rss0) / args.devices:.0f} B RSS each"
              + (f", {traced / args.devices:.0f} B of Python objects each (tracemalloc)" if args.trace else "")
              + f"; keepalive {args.keepalive} s: {cpu / args.idle_seconds * 1e3:.1f} ms CPU per s "
              f"over {args.idle_seconds:.0f} s, then {(rss2 - rss0) / args.devices:.0f} B RSS each")
    finally:
        await devices.stop()
        await d.close()


def _node_main(conn, args, port: int) -> None:
    """One node of ``idle --nodes K``, in a process of its own: an endpoint
    on the shared port (SO_REUSEPORT, as ``[endpoint] reuse_port``) and its
    dispatcher.  Answers the parent's commands on ``conn``."""
    _raise_nofile()
    raise_gc_threshold(args.gc_threshold)

    async def main() -> None:
        ep, d = await _start(args, _token_id, port=port, reuse_port=True)
        conn.send(ep.ports["tcp"])
        rss0, t0 = 0, os.times()
        try:
            while True:
                cmd = await asyncio.to_thread(conn.recv)
                if cmd == "mark":  # before the devices connect
                    gc.collect()
                    rss0 = rss_bytes()
                    conn.send(None)
                elif cmd == "online":
                    conn.send(len(d.presence.online))
                elif cmd == "settled":  # the devices are connected and idle
                    gc.collect()
                    conn.send((ep.connection_count, rss_bytes() - rss0))
                    t0 = os.times()
                elif cmd == "cpu":  # since "settled"; and the RSS after it
                    t1 = os.times()
                    gc.collect()
                    conn.send(((t1.user - t0.user) + (t1.system - t0.system), rss_bytes() - rss0))
                else:
                    conn.send(None)
                    return
        finally:
            await d.close()

    uvloop.run(main())


async def _idle_nodes(args) -> None:
    """``idle`` over K nodes on one port, each its own process: what one
    machine holds when one process may not open enough files (the hard
    limit here is 20,000) -- the deployment docs/endpoint.md describes as
    "one machine, several nodes".  Reports each node's RSS per connection,
    the keepalive CPU of all nodes together and the RSS after it (an
    ``--idle-seconds`` at least ``--keepalive`` long takes in a PINGREQ
    from every device), and the kernel's memory per
    connection (slabs and TCP buffers, machine-wide: both ends of each
    loopback connection, the devices' sockets included)."""
    ctx = mp.get_context("spawn")
    nodes, port = [], 0
    for _ in range(args.nodes):  # the first node picks the port, the others share it
        a, b = ctx.Pipe()
        proc = ctx.Process(target=_node_main, args=(b, args, port), daemon=True)
        proc.start()
        port = await asyncio.to_thread(a.recv)
        nodes.append((proc, a))

    pipes = [pipe for _, pipe in nodes]

    def ask(cmd):
        return _ask_all(pipes, cmd)

    tokens = [f"tok-{i}" for i in range(args.devices)]
    devices = Devices(port, tokens, args.processes, args.keepalive, 256)
    try:
        await devices.ready()
        await ask("mark")
        gc.collect()
        kernel0 = _kernel_memory()
        await devices.go()
        t0 = time.perf_counter()
        while (online := sum(await ask("online"))) < args.devices:
            if time.perf_counter() - t0 > 900:
                raise RuntimeError(f"{online} of {args.devices} online after 900 s ({await devices.stats()})")
            await asyncio.sleep(0.2)
        took = time.perf_counter() - t0
        await asyncio.sleep(7)  # past the endpoint's IDLE_TRIM
        rows = await ask("settled")
        kernel = _kernel_memory() - kernel0
        await asyncio.sleep(args.idle_seconds)
        after = await ask("cpu")
        cpu = sum(c for c, _ in after)
        total = sum(n for n, _ in rows)
        print(f"idle: {total} connections on {args.nodes} nodes sharing port {port} (connected in {took:.1f} s)")
        for k, (n, rss) in enumerate(rows):
            print(f"  node {k}: {n} connections, {rss / n:.0f} B RSS each")
        print(f"  all nodes: {sum(r for _, r in rows) / total:.0f} B RSS per connection; "
              f"keepalive {args.keepalive} s: {cpu / args.idle_seconds * 1e3:.1f} ms CPU per s "
              f"over {args.idle_seconds:.0f} s, all nodes together, "
              f"then {sum(r for _, r in after) / total:.0f} B RSS per connection")
        print(f"  kernel (slabs + TCP buffers, both ends of each connection): {kernel / total:.0f} B per connection")
    finally:
        await devices.stop()
        await ask("stop")
        for proc, _ in nodes:
            proc.join(10)


async def storm(args) -> None:
    if not args.share:
        await _storm(args)
        return
    async with throwaway_broker(None) as (url, _, _):
        await _storm(args, url)


async def _storm(args, mqtt_url: str | None = None) -> None:
    from fleetrpc.store.db import open_database
    from fleetrpc.store.entities import DeviceRepository, TenantRepository
    from fleetrpc.transport.endpoint.directory import DeviceDirectory

    with tempfile.TemporaryDirectory() as tmp:
        db = await open_database(f"sqlite:///{tmp}/registry.db")
        try:
            repo = DeviceRepository(db)
            tenant = await TenantRepository(db, devices=repo).create("Storm")
            t0 = time.perf_counter()
            tokens = []
            for i in range(args.devices):
                tok = f"storm-token-{i:06d}"
                await repo.create(tenant.id, f"device {i}", access_token=tok)
                tokens.append(tok)
            print(f"storm: {args.devices} devices created in the registry in {time.perf_counter() - t0:.1f} s")
            directory = DeviceDirectory(repo)
            ep, d = await _start(args, directory.authenticate, mqtt_url)
            other = None
            if mqtt_url is not None:  # a second node, on the broker only
                other = Dispatcher(_settings(args, "other", mqtt_url))
                await other.start()
            try:
                for rnd in ("cold cache", "warm cache"):
                    # every device at once: no connect throttle in the workers
                    devices = Devices(ep.ports["tcp"], tokens, args.processes, 60, 0)
                    misses = directory.misses
                    c0 = os.times()
                    took = await _until_online(d, args.devices, devices, 120)
                    c1 = os.times()
                    cpu = c1.user - c0.user + c1.system - c0.system
                    line = (f"storm ({rnd}): {args.devices} devices online in {took:.2f} s, {cpu:.1f} s CPU here "
                            f"({directory.misses - misses} lookups, {len(directory)} cached; "
                            f"{ep.stats.accepted} connections accepted, {ep.stats.refused_auth} refused)")
                    if other is not None:
                        t_other = time.perf_counter()
                        while len(other.presence.online) < args.devices:
                            if time.perf_counter() - t_other > 120:
                                raise RuntimeError(f"the other node sees {len(other.presence.online)} online")
                            await asyncio.sleep(0.01)
                        line += f"; the other node saw them all {took + time.perf_counter() - t_other:.2f} s in"
                    print(line)
                    await devices.stop()
                    await _until_offline(d)
                    if other is not None:
                        await _until_offline(other)
            finally:
                if other is not None:
                    await other.close()
                await d.close()
                directory.close()
        finally:
            await db.close()


async def _until_offline(d: Dispatcher) -> None:
    while d.presence.online:
        await asyncio.sleep(0.05)


async def _until(predicate, timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` holds, polled every 5 ms."""
    t0 = time.perf_counter()
    while not predicate():
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)
    return time.perf_counter() - t0


async def lose(args) -> None:
    from fleetrpc.bench.rig import cpu_seconds

    def auth(username, password, client_id):
        return "dev-" + username[4:] if username.startswith("tok-") else None

    tokens = [f"tok-{i}" for i in range(args.devices)]
    n = args.devices
    async with throwaway_broker(None) as (url, _, broker_pid):
        ep, lost = await _start(args, auth, url, node_id="lost")
        _, survivor = await _start(args, auth, url, node_id="survivor")
        reader = Dispatcher(_settings(args, "reader", url))
        await reader.start()
        devices = Devices(ep.ports["tcp"], tokens, args.processes, 60, 256)
        try:
            took = await _until_online(lost, n, devices, 120)
            for d in (survivor, reader):
                await _until(lambda: len(d.presence.online) == n, 120, f"{d.node} sees every device online")
            print(f"lose: {n} devices online at node 'lost' in {took:.2f} s, and at the two others")
            c0, m0 = os.times(), cpu_seconds([broker_pid])
            lost._transport.broker.abort()
            t0 = time.perf_counter()
            await _until(lambda: not survivor.presence.online, 120, "the survivor sees every device offline")
            t_survivor = time.perf_counter() - t0
            await _until(lambda: not reader.presence.online, 120, "the reader sees every device offline")
            t_reader = time.perf_counter() - t0
            c1, m1 = os.times(), cpu_seconds([broker_pid])
            cpu = c1.user - c0.user + c1.system - c0.system
            print(f"lose: every device offline at 'survivor' {t_survivor:.2f} s and at 'reader' {t_reader:.2f} s "
                  f"after the connection ended; CPU meanwhile: {cpu:.2f} s in this process (three nodes), "
                  f"{(m1 - m0) if m0 is not None and m1 is not None else float('nan'):.2f} s Mosquitto")
        finally:
            await devices.stop()
            for d in (reader, survivor, lost):
                await d.close()


async def soak(args) -> None:
    tokens = [f"tok-{i}" for i in range(args.devices)]
    ep, d = await _start(args, _token_id)
    # Traced from before the devices connect: otherwise every connection
    # replaced by churn would look like growth (its first self untraced).
    tracemalloc.start()
    devices = Devices(ep.ports["tcp"], tokens, args.processes, 60, 256)
    ids = [f"dev-{i}" for i in range(args.devices)]
    ok = failed = 0
    stop = False

    async def caller(seed: int) -> None:
        nonlocal ok, failed
        rng = random.Random(seed)
        while not stop:
            try:
                await d.call(ids[int(rng.random() * len(ids))], "echo", {"i": 1}, timeout=5)
                ok += 1
            except Exception:
                failed += 1  # a churned device's call: offline or timed out
            await asyncio.sleep(args.concurrency / args.rate)

    try:
        await _until_online(d, args.devices, devices, 300)
        callers = [asyncio.ensure_future(caller(k)) for k in range(args.concurrency)]
        first = None
        samples = []
        t0 = time.monotonic()
        churned = 0
        next_churn = t0 + args.churn_every
        while time.monotonic() - t0 < args.seconds:
            await asyncio.sleep(1)
            if time.monotonic() >= next_churn:
                k = max(1, int(args.devices * args.churn_fraction / args.processes))
                await devices.ask(("churn", k))
                churned += k * args.processes
                next_churn += args.churn_every
            if int(time.monotonic() - t0) % 10 == 0:
                gc.collect()
                samples.append((time.monotonic() - t0, rss_bytes(), tracemalloc.get_traced_memory()[0],
                                dict(ep.tracked())))
                if first is None:
                    first = tracemalloc.take_snapshot()
        stop = True
        await asyncio.gather(*callers)
        gc.collect()
        growth = tracemalloc.take_snapshot().compare_to(first, "lineno")[:8] if first else []
        tracemalloc.stop()
        online, refused, failed_connects, _ = await devices.stats()
        print(f"soak: {args.seconds:.0f} s, {args.devices} devices, {churned} reconnects, "
              f"{ok} calls answered, {failed} failed (churned devices); devices: {online} subscribed, "
              f"{refused} refused, {failed_connects} could not reconnect")
        for t, rss, traced, tracked in samples:
            print(f"  t={t:5.0f} s  RSS {rss / 2**20:7.1f} MiB  Python {traced / 2**20:6.1f} MiB  "
                  f"connections {tracked['connections']}  routes {tracked['routes']}  calls {tracked['calls']}  "
                  f"checks {tracked['checks']}")
        print("  most growth since the first sample, by allocation site:")
        for stat in growth:
            print(f"    {stat.size_diff / 1024:8.1f} KiB  {stat.count_diff:7d} objects  {stat.traceback[0]}")
    finally:
        await devices.stop()
        await d.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("idle", "storm", "soak", "lose"))
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--processes", type=int, default=2, help="device worker processes")
    p.add_argument("--keepalive", type=int, default=60)
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--trace", action="store_true", help="idle: also count Python objects (tracemalloc; slower)")
    p.add_argument("--nodes", type=int, default=1,
                   help="idle: endpoint processes sharing one port (past one process's open file limit)")
    p.add_argument("--share", action="store_true",
                   help="storm: share the devices on a throwaway Mosquitto, as `fleetrpc serve` does")
    p.add_argument("--seconds", type=float, default=120.0, help="soak: duration")
    p.add_argument("--rate", type=float, default=500.0, help="soak: calls per second")
    p.add_argument("--concurrency", type=int, default=50, help="soak: callers")
    p.add_argument("--churn-every", type=float, default=5.0, help="soak: seconds between churn rounds")
    p.add_argument("--churn-fraction", type=float, default=0.05, help="soak: devices dropped per round")
    p.add_argument("--gc-threshold", type=int, default=SERVER_GC_THRESHOLD,
                   help="the garbage collector's first threshold in the measured processes "
                        "(default: what `fleetrpc serve` sets; 700: Python's default)")
    args = p.parse_args()
    print(f"open file limit: {_raise_nofile()}", file=sys.stderr)
    raise_gc_threshold(args.gc_threshold)  # the endpoint's process, as `fleetrpc serve` runs it
    uvloop.run({"idle": idle, "storm": storm, "soak": soak, "lose": lose}[args.mode](args))


if __name__ == "__main__":
    main()
