"""Running an Elves app's function, the way Elves' agent does.

An app lives in ``<root>/apps/<app>/``.  The instruction's ``proxy`` says
how to start its worker (``param`` goes on the command line in base64):

- ``"interp|script"`` (``"python3|worker.py"``): ``interp
  <root>/apps/<app>/<script> <app> <func> <b64 param>``;
- ``"exe"`` (one token): ``<root>/apps/<app>/exe <app> <func> <b64 param>``;
- empty: ``app-worker.py`` run by this Python on POSIX systems
  (Elves: ``/usr/bin/python``), ``app-worker.exe`` on Windows.

The worker prints ``<ElvesWFlag>true|false</ElvesWFlag>`` and
``<ElvesWResult>...</ElvesWResult>``.  The worker flag is 1 for ``true``, 0
for anything else, and -1 for a system error, with Elves' messages: ``app
[x] not install !``, ``app exec error : ...``, ``app exec timeout``, ``app
output flag error : <stdout>``, ``app output result error : <stdout>``
(Elves loses the output in the last two; here it is kept, cut to 4 KiB).
A worker still running after the timeout (seconds, 0 = none) is killed
with its whole process group, and so is one that writes more than
:data:`MAX_OUTPUT` bytes on stdout or stderr (``app exec error : more than
... bytes of output``): a worker never makes the agent hold more.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
import time
from pathlib import Path

import msgspec

__all__ = ["WorkerResult", "run_app", "parse_output", "command_line"]

#: Most output read from a worker (stdout and stderr each); a worker that
#: writes more is killed, and its result is an error.
MAX_OUTPUT = 4 * 1024 * 1024
#: Characters of a worker's output shown in an error about it.
_SHOWN = 4096
_CHUNK = 64 * 1024


class WorkerResult(msgspec.Struct):
    """``worker_flag`` (1 ok, 0 app failure, -1 system error),
    ``worker_result`` and ``worker_costtime`` (ms)."""

    worker_flag: int
    worker_result: str
    worker_costtime: int


def shortened(text: str) -> str:
    """``text`` as an error shows it: its first 4,096 characters."""
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _shown(data: bytes) -> str:
    return shortened(data.decode("utf-8", "replace"))


def _between(data: bytes, open_tag: bytes, close_tag: bytes) -> bytes | None:
    """What lies between the first ``open_tag`` and the next ``close_tag``
    (as a lazy regex search finds it, but linear: a regex tried from each of
    many unclosed opening tags scans to the end from every one of them)."""
    start = data.find(open_tag)
    if start < 0:
        return None
    start += len(open_tag)
    end = data.find(close_tag, start)
    return None if end < 0 else data[start:end]


def parse_output(stdout: bytes) -> tuple[int, str]:
    """``(flag, result)`` from a worker's output."""
    flag = _between(stdout, b"<ElvesWFlag>", b"</ElvesWFlag>")
    if flag is None:
        return -1, "app output flag error : " + _shown(stdout)
    result = _between(stdout, b"<ElvesWResult>", b"</ElvesWResult>")
    if result is None:
        return -1, "app output result error : " + _shown(stdout)
    ok = flag.strip().lower() == b"true"
    return (1 if ok else 0), result.decode("utf-8", "replace")


def _inside(folder: Path, name: str) -> Path | None:
    path = (folder / name).resolve()
    try:
        path.relative_to(folder.resolve())
    except ValueError:
        return None
    return path


def command_line(root: Path, app: str, func: str, param: str, proxy: str) -> list[str] | str:
    """The worker's argv, or an error message (``str``)."""
    folder = root / "apps" / app
    b64 = base64.b64encode(param.encode()).decode()
    proxy = proxy.strip()
    if "|" in proxy:
        interp, script = (s.strip() for s in proxy.split("|", 1))
        path = _inside(folder, script) if script else None
        if not interp or path is None:
            return f"app exec error : bad proxy {proxy!r}"
        return [interp, str(path), app, func, b64]
    if proxy:
        path = _inside(folder, proxy)
        if path is None:
            return f"app exec error : bad proxy {proxy!r}"
        return [str(path), app, func, b64]
    if os.name == "nt":
        return [str(folder / "app-worker.exe"), app, func, b64]
    return [sys.executable, str(folder / "app-worker.py"), app, func, b64]


def installed(root: Path, app: str) -> bool:
    if not app or "/" in app or "\\" in app or app in (".", ".."):
        return False
    return (root / "apps" / app).is_dir()


async def run_app(root: Path, app: str, func: str, param: str, timeout: float, proxy: str = "") -> WorkerResult:
    """Run one function of an installed app and read its result."""
    started = time.perf_counter()

    def done(flag: int, result: str) -> WorkerResult:
        return WorkerResult(flag, result, int((time.perf_counter() - started) * 1000))

    if not installed(root, app):
        return done(-1, f"app [{app}] not install !")
    argv = command_line(root, app, func, param, proxy)
    if isinstance(argv, str):
        return done(-1, argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(root / "apps" / app),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=os.name != "nt",  # its own process group, killed as one
            limit=_CHUNK,  # what is buffered unread; read() takes it in chunks
        )
    except OSError as exc:
        return done(-1, f"app exec error : {exc}")
    limit = MAX_OUTPUT
    try:
        (stdout, over_out), (stderr, over_err) = await asyncio.wait_for(
            asyncio.gather(_read(proc, proc.stdout, limit), _read(proc, proc.stderr, limit)),
            timeout if timeout > 0 else None)
        await proc.wait()
    except asyncio.TimeoutError:
        _kill(proc)
        await proc.wait()
        return done(-1, "app exec timeout")
    except asyncio.CancelledError:
        _kill(proc)
        raise
    if over_out or over_err:
        which = "stdout" if over_out else "stderr"
        return done(-1, f"app exec error : more than {limit} bytes of output on {which}, the worker was killed: "
                        + _shown(stdout if over_out else stderr))
    if proc.returncode != 0 and _between(stdout, b"<ElvesWFlag>", b"</ElvesWFlag>") is None:
        return done(-1, f"app exec error : exit status {proc.returncode}: {_shown(stderr or stdout)}")
    return done(*parse_output(stdout))


async def _read(proc: asyncio.subprocess.Process, stream: asyncio.StreamReader | None,
                limit: int) -> tuple[bytes, bool]:
    """A stream to its end, or its first ``limit`` bytes and True once the
    worker wrote more (it is killed then: its output is read no further)."""
    if stream is None:
        return b"", False
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            return b"".join(chunks), False
        size += len(chunk)
        if size > limit:
            chunks.append(chunk[:len(chunk) - (size - limit)])
            _kill(proc)
            return b"".join(chunks), True
        chunks.append(chunk)


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    try:
        if os.name != "nt":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass
