"""Keep-alive HTTP load generators for ``fleetrpc bench --rest``.

Each runs in child processes, so that its CPU is never counted as the
server's, and posts the same request (``POST {path}`` with a JWT and a
small JSON body, a different device per request) on ``window`` keep-alive
connections in a closed loop:

``raw``      asyncio protocols on uvloop writing prebuilt request bytes and
             reading ``Content-Length`` framed answers: about a tenth of
             the aiohttp client's CPU per request, so that on a small
             machine the client is not what caps the server (the default);
``aiohttp``  ``aiohttp.ClientSession``, what a Python client of the API
             would use (heavier than the server it measures);
``wrk``      Debian's ``wrk`` with a Lua script rotating over the devices,
             when installed (never needed by the tests).

Several ``clients`` processes split the connections between them.  The
parent starts them, waits until every one is ready (imports done), then
lets them go together: :func:`run_load` returns the run's merged figures
and the wall-clock window in which the server was measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

__all__ = ["GENERATORS", "LoadSpec", "run_load", "percentiles", "wrk_available"]

GENERATORS = ("raw", "aiohttp", "wrk")


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def percentiles(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    lat.sort()
    return {"p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000}


class LoadSpec(dict):
    """What a generator process needs (JSON on its command line): ``url``,
    ``token``, ``paths`` (one per device), ``window``, ``duration``,
    ``first`` (this process's first caller index) and ``step``."""


def _body(i: int) -> bytes:
    return b'{"method":"echo","params":{"i":%d}}' % i


# -- raw: prebuilt requests on asyncio protocols -----------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive connection in a closed loop: a request, its answer, the next."""

    def __init__(self, requests: list[bytes], first: int, step: int, stop_at: float,
                 lat: list[float], statuses: dict[int, int], done: asyncio.Future) -> None:
        self.requests = requests
        self.i = first
        self.step = step
        self.stop_at = stop_at
        self.lat = lat
        self.statuses = statuses
        self.done = done
        self.buf = b""
        self.need = -1  # bytes of the current answer (head + body), -1 until its head is read
        self.status = 0
        self.t0 = 0.0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        now = time.perf_counter()
        if now >= self.stop_at:
            self.transport.close()
            return
        self.t0 = now
        self.transport.write(self.requests[self.i % len(self.requests)])
        self.i += self.step

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    self.buf = buf
                    return
                head = buf[:end].lower()
                self.status = int(head[9:12])
                self.need = end + 4 + _content_length(head)
            if len(buf) < self.need:
                self.buf = buf
                return
            self.lat.append(time.perf_counter() - self.t0)
            self.statuses[self.status] = self.statuses.get(self.status, 0) + 1
            buf = buf[self.need:]
            self.need = -1
            self.buf = b""
            self._send()
            if not buf:
                return

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _content_length(head: bytes) -> int:
    """The body length of an answer's (lower-cased) head; both servers
    measured always send Content-Length."""
    k = head.find(b"\r\ncontent-length:")
    if k < 0:
        if b"\r\ntransfer-encoding:" in head:
            raise RuntimeError("a chunked answer: the raw generator reads Content-Length framing only")
        return 0
    e = head.find(b"\r\n", k + 2)
    return int(head[k + 17:e if e > 0 else len(head)])


def _raw_requests(spec: dict[str, Any]) -> list[bytes]:
    from urllib.parse import urlsplit

    host = urlsplit(spec["url"]).netloc.encode()
    out = []
    for k, path in enumerate(spec["paths"]):
        body = _body(k)
        out.append(b"POST %s HTTP/1.1\r\nHost: %s\r\nX-Authorization: Bearer %s\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                   % (path.encode(), host, spec["token"].encode(), len(body), body))
    return out


async def _raw(spec: dict[str, Any], go: Callable[[], Any]) -> dict[str, Any]:
    from urllib.parse import urlsplit

    loop = asyncio.get_running_loop()
    u = urlsplit(spec["url"])
    requests = _raw_requests(spec)
    lat: list[float] = []
    statuses: dict[int, int] = {}
    await go()
    cpu0, t0 = time.process_time(), time.perf_counter()
    stop_at = t0 + spec["duration"]
    done = []
    for k in range(spec["connections"]):
        fut = loop.create_future()
        await loop.create_connection(
            lambda k=k, fut=fut: _Connection(requests, spec["first"] + k * spec["step"],
                                             spec["connections"] * spec["step"], stop_at, lat, statuses, fut),
            u.hostname, u.port)
        done.append(fut)
    await asyncio.gather(*done)
    return {"calls": len(lat), "wall": time.perf_counter() - t0, "generator_cpu_s": time.process_time() - cpu0,
            "statuses": statuses, "lat": lat}


# -- aiohttp: the client a Python user would write --------------------------------------------


async def _aiohttp(spec: dict[str, Any], go: Callable[[], Any]) -> dict[str, Any]:
    import aiohttp

    lat: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"X-Authorization": f"Bearer {spec['token']}", "Content-Type": "application/json"}
    paths = spec["paths"]
    url = spec["url"]
    connector = aiohttp.TCPConnector(limit=spec["connections"])
    async with aiohttp.ClientSession(connector=connector) as session:
        await go()
        cpu0, t0 = time.process_time(), time.perf_counter()
        stop_at = t0 + spec["duration"]
        step = spec["connections"] * spec["step"]

        async def caller(i: int) -> None:
            while time.perf_counter() < stop_at:
                k = i % len(paths)
                s = time.perf_counter()
                async with session.post(url + paths[k], data=_body(k), headers=headers) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                lat.append(time.perf_counter() - s)
                i += step

        await asyncio.gather(*(caller(spec["first"] + k * spec["step"]) for k in range(spec["connections"])))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"calls": len(lat), "wall": wall, "generator_cpu_s": cpu, "statuses": statuses, "lat": lat}


def generator_main() -> None:
    """A generator process: ``ready`` on stdout, waits for a line on stdin,
    runs, writes its figures as JSON."""
    spec = json.loads(sys.argv[1])
    from ..runner import run

    async def go() -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    body = _raw if spec["kind"] == "raw" else _aiohttp
    out = run(body(spec, go))
    sys.stdout.write(json.dumps(out))


async def _python_load(kind: str, url: str, token: str, paths: list[str], window: int, duration: float,
                       clients: int, mark: Callable[[], None]) -> dict[str, Any]:
    clients = max(1, min(clients, window))
    procs = []
    for c in range(clients):
        spec = {"kind": kind, "url": url, "token": token, "paths": paths, "duration": duration,
                "connections": window // clients + (1 if c < window % clients else 0),
                "first": c, "step": clients}
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from fleetrpc.bench.http_load import generator_main; generator_main()",
            json.dumps(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    try:
        for p in procs:
            line = await asyncio.wait_for(p.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError("a load generator failed to start")
        mark()
        for p in procs:
            p.stdin.write(b"go\n")
            await p.stdin.drain()
        outs = await asyncio.wait_for(asyncio.gather(*(p.stdout.read() for p in procs)), duration + 60)
        for p in procs:
            if await p.wait() != 0:
                raise RuntimeError(f"a load generator failed (exit {p.returncode})")
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    results = [json.loads(o) for o in outs]
    lat = [x for r in results for x in r["lat"]]
    statuses: dict[str, int] = {}
    for r in results:
        for s, n in r["statuses"].items():
            statuses[str(s)] = statuses.get(str(s), 0) + n
    return {"calls": len(lat), "wall": max(r["wall"] for r in results),
            "generator_cpu_s": sum(r["generator_cpu_s"] for r in results), "statuses": statuses,
            **percentiles(lat)}


# -- wrk ------------------------------------------------------------------------------------------

_WRK_SCRIPT = """
local paths = {%s}
local token = "%s"
local requests = {}
local n = #paths
local i = %d
function init(args)
  for k = 1, n do
    local body = '{"method":"echo","params":{"i":' .. (k - 1) .. '}}'
    requests[k] = wrk.format("POST", paths[k],
      {["X-Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
  end
end
function request()
  i = i + 1
  return requests[(i %% n) + 1]
end
function done(summary, latency, requests)
  io.write(string.format("FLEETRPC %%d %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


async def _wrk_load(url: str, token: str, paths: list[str], window: int, duration: float, clients: int,
                    mark: Callable[[], None]) -> dict[str, Any]:
    threads = max(1, min(clients, window))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_SCRIPT % (", ".join(f'"{p}"' for p in paths), token, 0))
        script = f.name
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        mark()
        proc = await asyncio.create_subprocess_exec(
            "wrk", f"-t{threads}", f"-c{window}", f"-d{max(1, round(duration))}s", "--timeout", "30s",
            "-s", script, url, stdout=subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), duration + 60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        os.unlink(script)
    m = re.search(rb"FLEETRPC (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {out[-500:]!r}")
    calls, wall_us, p50_us, p99_us, bad_status, socket_errors = (int(x) for x in m.groups())
    return {"calls": calls, "wall": wall_us / 1e6,
            "generator_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "statuses": {"200": calls - bad_status, "non-2xx": bad_status, "socket-errors": socket_errors}
            if bad_status or socket_errors else {"200": calls},
            "p50_ms": p50_us / 1000, "p99_ms": p99_us / 1000}


async def run_load(generator: str, url: str, token: str, paths: list[str], window: int, duration: float,
                   clients: int, mark: Callable[[], None]) -> dict[str, Any]:
    """One closed-loop run; ``mark()`` is called as the load starts (the
    caller reads its CPU clock there).  Returns ``calls``, ``wall``,
    ``generator_cpu_s``, ``statuses`` (str -> count), ``p50_ms``, ``p99_ms``."""
    if generator == "wrk":
        return await _wrk_load(url, token, paths, window, duration, clients, mark)
    if generator not in ("raw", "aiohttp"):
        raise ValueError(f"unknown load generator {generator!r}; choose from {', '.join(GENERATORS)}")
    return await _python_load(generator, url, token, paths, window, duration, clients, mark)
