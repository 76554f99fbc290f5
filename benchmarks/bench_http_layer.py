"""The HTTP layer's own cost per request, without sockets, broker or devices.

``fleetrpc bench --rest`` measures the whole server on a shared machine, where
CPU per call moves by tens of percent between runs.  This harness isolates
the HTTP layer and makes it countable: it feeds prebuilt request bytes to
aiohttp's real server protocol (``RequestHandler.data_received``: its C
parser, request objects, router, middlewares, handler, response writer) on
a transport that only collects the answer, and waits for each answer in
turn.  The dispatcher is a stub that answers ``call`` at once with the
params, so what is measured is what an RPC over REST costs beyond the
library path:

``floor``  the bare aiohttp app of ``bench/rest.py`` (no middleware, a
           constant answer): aiohttp's own share, which no code of ours removes;
``bare``   the same app making the call through the stub and answering
           its reply: the least any HTTP front of the dispatcher costs;
``rest``   ``create_app(ctx)``: ``POST /api/rpc/twoway/{deviceId}`` with the
           JWT (a cache hit after the first request), metrics, access check.

``rest - bare`` is fleetrpc's share (its HTTP code), ``bare - floor`` what
suspending the handler for the call costs aiohttp and asyncio.  For numbers that do not move with
the machine's load, count instructions with callgrind: two runs with
different request counts, the difference divided by the difference of the
counts (start-up cancels out)::

    python benchmarks/bench_http_layer.py                       # us per request, both apps
    python benchmarks/bench_http_layer.py --profile rest        # cProfile, top functions
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/bench_http_layer.py --app rest -n 2000 # then -n 4000; see --callgrind
    python benchmarks/bench_http_layer.py --callgrind           # does the above for both apps
    python benchmarks/bench_http_layer.py --app rest --access-log json   # what the access log adds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

DEVICES = [f"00000000-0000-4000-8000-{i:012d}" for i in range(20)]
APPS = ("floor", "bare", "rest")


class _Transport(asyncio.Transport):
    """Collects what the server writes; wakes the driver once a whole
    answer (head + Content-Length body) is there."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = b""
        self.waiter: asyncio.Future | None = None
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.buf += bytes(data)
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        m = re.search(rb"\r\ncontent-length: *(\d+)", head)
        need = end + 4 + (int(m.group(1)) if m else 0)
        if len(self.buf) >= need:
            answer, self.buf = self.buf[:need], self.buf[need:]
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(answer)

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))


class _Directory:
    """One tenant, its administrator, the devices (in memory): what the
    identity repositories answer, without a database."""

    def __init__(self, device_ids: list[str]) -> None:
        import uuid
        from types import SimpleNamespace

        from fleetrpc.api.auth import NULL_UUID

        self.tenant = str(uuid.uuid4())
        self.user = SimpleNamespace(
            id=str(uuid.uuid4()), email="bench@fleetrpc.invalid", authority="TENANT_ADMIN",
            tenant_id=self.tenant, customer_id=NULL_UUID, first_name=None, last_name=None, enabled=True,
        )
        self._devices = {d: SimpleNamespace(id=d, tenant_id=self.tenant, customer_id=NULL_UUID)
                         for d in device_ids}

    async def get(self, tenant_id: str, device_id: str) -> Any:
        d = self._devices.get(device_id)
        return d if d is not None and d.tenant_id == tenant_id else None


class _StubDispatcher:
    """Answers every call with its params on the next loop iteration (the
    library path's cost is not the HTTP layer's; the handler suspends once,
    as it does waiting for a device)."""

    online_devices = set(DEVICES)

    def is_online(self, device: str) -> bool:
        return True

    async def call(self, device: str, method: str, params: Any = None, **_: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_soon(fut.set_result, params)
        return await fut


async def _apps(access_log: str | None = None) -> dict[str, Any]:
    import tempfile

    from fleetrpc.api.app import create_app
    from fleetrpc.api.auth import TokenService
    from fleetrpc.bench.rest import floor_app
    from fleetrpc.config import load_server_settings
    from fleetrpc.server import ServerContext

    tmp = tempfile.mkdtemp(prefix="fleetrpc-http-layer-")
    secret = "s" * 64
    settings = load_server_settings(env={}, overrides={
        "server": {"data_dir": tmp}, "http": {"access_log": access_log is not None, "docs": False},
        "jwt": {"secret": secret}, "store": {"url": f"sqlite:///{tmp}/x.db"},
    })
    ctx = ServerContext(settings)
    directory = _Directory(DEVICES)
    ctx.devices = directory
    ctx.tokens = TokenService(settings.jwt, secret)
    ctx.dispatcher = _StubDispatcher()
    token = ctx.tokens.issue(directory.user)["token"]
    return {"rest": create_app(ctx), "floor": floor_app(), "bare": floor_app(ctx.dispatcher), "token": token}


def _requests(token: str) -> list[bytes]:
    out = []
    for k, device in enumerate(DEVICES):
        body = b'{"method":"echo","params":{"i":%d}}' % k
        out.append(b"POST /api/rpc/twoway/%s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Authorization: Bearer %s\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                   % (device.encode(), token.encode(), len(body), body))
    return out


async def _drive(app: Any, requests: list[bytes], n: int) -> float:
    """Serve ``n`` requests on one keep-alive connection; CPU seconds spent."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    loop = asyncio.get_running_loop()
    transport = _Transport()
    proto = runner.server()
    proto.connection_made(transport)
    # One warm-up round: the token cache, label children, the router's caches.
    for req in requests:
        transport.waiter = loop.create_future()
        proto.data_received(req)
        answer = await transport.waiter
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer: {answer[:300]!r}")
    cpu0 = time.process_time()
    m = len(requests)
    for i in range(n):
        transport.waiter = loop.create_future()
        proto.data_received(requests[i % m])
        await transport.waiter
    cpu = time.process_time() - cpu0
    proto.connection_lost(None)
    await runner.cleanup()
    return cpu


async def _main(args: argparse.Namespace) -> dict[str, float]:
    if args.access_log:
        # The server's own log set-up, written to /dev/null: what one line per request costs.
        from fleetrpc.server.logs import configure_logging

        configure_logging("INFO", args.access_log)
        sys.stderr = open(os.devnull, "w")
        import logging

        logging.getLogger().handlers[0].setStream(sys.stderr)
    apps = await _apps(args.access_log)
    requests = _requests(apps["token"])
    out = {}
    for name in args.app:
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            await _drive(apps[name], requests, args.n)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(35)
            continue
        cpu = await _drive(apps[name], requests, args.n)
        out[name] = cpu / args.n * 1e6
    return out


def _callgrind(app: str, n: int) -> int:
    """Instructions (Ir) of a whole run under callgrind."""
    with subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
         "--app", app, "-n", str(n)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONHASHSEED": "0"}) as p:
        err = p.stderr.read().decode()
    m = re.search(r"Collected : (\d+)", err)
    if m is None:
        raise RuntimeError(err[-2000:])
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--app", action="append", choices=APPS)
    ap.add_argument("-n", type=int, default=20000, help="requests per app (after one warm-up round)")
    ap.add_argument("--profile", action="store_true", help="cProfile the run, print the top functions")
    ap.add_argument("--access-log", choices=("text", "json"), default=None,
                    help="the access log on, in this format, written to /dev/null (default: off)")
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions per request of each app under callgrind (two runs each)")
    args = ap.parse_args()
    args.app = args.app or list(APPS)
    if args.callgrind:
        lo, hi = 1000, 3000
        res = {}
        for app in args.app:
            a, b = _callgrind(app, lo), _callgrind(app, hi)
            res[app] = (b - a) / (hi - lo)
        for app, ir in res.items():
            print(f"{app:<8}{ir:>12,.0f} instructions per request")
        if len(res) == len(APPS):
            print(f"fleetrpc's share (rest - bare): {res['rest'] - res['bare']:,.0f} instructions per request "
                  f"({(res['rest'] - res['bare']) / res['floor']:.0%} of the floor)")
        print(json.dumps(res))
        return
    from fleetrpc.runner import run

    out = run(_main(args))
    for app, us in out.items():
        print(f"{app:<8}{us:>8.1f} us CPU per request")
    if len(out) == len(APPS):
        print(f"fleetrpc's share (rest - bare): {out['rest'] - out['bare']:.1f} us per request")


if __name__ == "__main__":
    main()
