"""Throwaway MQTT brokers for ``fleetrpc demo``, ``fleetrpc bench`` and tests.

A broker started here listens on a free port of 127.0.0.1, lives in a
temporary directory of its own (config, log) and is removed with it::

    async with start_broker(prefer="auto") as broker:
        print(broker.url)          # mqtt://127.0.0.1:PORT
        await broker.stop()        # e.g. to test reconnects ...
        await broker.start()       # ... and back on the same port

Two kinds:

``mosquitto``
    The real thing and the benchmark target.  With ``tuned=True`` (the
    default) the generated config fixes what Mosquitto's defaults get wrong
    for RPC traffic; see :func:`mosquitto_config`.  The child gets the open
    file limit raised to its hard limit, so 10,000 clients can connect.
``embedded``
    amqtt (``pip install 'fleetrpc[embedded-broker]'``) in a child Python
    process, for machines without Mosquitto.  A convenience for ``fleetrpc
    demo``, never a benchmark target.  It speaks MQTT 3.1.1 only: a client
    that offers MQTT 5 is refused (CONNACK 0x01); gmqtt then falls back to
    3.1.1, but only after its reconnect delay, so connect with version 4.

``prefer="auto"`` takes Mosquitto when its binary is found, else amqtt when
it is installed, else raises :class:`BrokerError` saying how to get either.

``dynsec=True`` (Mosquitto only) loads Mosquitto's dynamic security plugin
with a fresh admin account and the server's account
(``broker.dynsec``: :class:`~fleetrpc.broker_auth.dynsec.DynsecAccounts`)
and refuses anonymous clients: devices then connect with the credentials
:class:`~fleetrpc.broker_auth.dynsec.DynsecProvisioner` gives them.  The
default (no plugin, anonymous clients welcome) is unchanged.

Both kinds run as child processes in a session of their own (a Ctrl-C in the
terminal reaches the parent, which then stops the broker in order), and on
Linux they get SIGTERM if the parent dies without cleaning up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.metadata
import importlib.util
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import BrokerError

if TYPE_CHECKING:
    from .broker_auth.dynsec import DynsecAccounts

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerKind",
    "child_setup",
    "embedded_available",
    "find_dynsec_plugin",
    "find_mosquitto",
    "free_port",
    "mosquitto_config",
    "port_is_free",
    "run_broker",
    "start_broker",
]

BrokerKind = Literal["mosquitto", "embedded"]
Preference = Literal["mosquitto", "embedded", "auto"]

#: Where Debian (per architecture) and source installs put the dynamic security plugin.
DYNSEC_PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/lib/*/mosquitto/mosquitto_dynamic_security.so",
)

#: Where Debian and source installs put the binary when /usr/sbin is not on PATH.
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/local/bin/mosquitto")

_INSTALL_HINT = (
    "install Mosquitto (Debian/Ubuntu: `apt-get install mosquitto`) or the "
    "embedded broker (`pip install 'fleetrpc[embedded-broker]'`, i.e. amqtt)"
)


# -- discovery ---------------------------------------------------------------


def find_mosquitto() -> str | None:
    """Path of the ``mosquitto`` binary: on PATH, else a usual sbin location."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in MOSQUITTO_PATHS:
        if os.access(path, os.X_OK):
            return path
    return None


def find_dynsec_plugin() -> str | None:
    """Path of Mosquitto's ``mosquitto_dynamic_security.so``, or None."""
    import glob

    for pattern in DYNSEC_PLUGIN_GLOBS:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path):
                return path
    return None


def embedded_available() -> bool:
    """True when amqtt, the embedded broker, is importable."""
    return importlib.util.find_spec("amqtt") is not None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (a bind like a server's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def mosquitto_config(
    port: int,
    host: str = "127.0.0.1",
    *,
    tuned: bool = True,
    extra: Sequence[str] = (),
    dynsec_plugin: str | None = None,
    dynsec_config: str | None = None,
) -> str:
    """The text of a ``mosquitto.conf`` for a throwaway broker.

    ``tuned`` adds what RPC traffic needs (each measured with 2.0.11):

    - ``set_tcp_nodelay true``: without it Nagle plus delayed ACK make a QoS 1
      round trip take ~44 ms instead of ~0.1 ms.
    - ``max_queued_messages 0``: with the default (1000) QoS 0 messages to a
      subscriber that falls behind are dropped silently; replies would vanish.
      Flow control is then the client's job.
    - ``max_inflight_messages 0``: no limit on QoS 1/2 messages in flight to a
      client, so the broker announces no Receive Maximum (65535 applies).  The
      default (20) becomes the client's receive maximum, and gmqtt's
      ``publish()`` raises ``OverflowError`` once that many minus one QoS 1
      publishes are unacknowledged; with 0 that happens only at 65534, which a
      windowed publisher never reaches.

    ``extra`` lines are appended as they are (ACLs, a second listener, ...).

    ``dynsec_plugin`` and ``dynsec_config`` (paths of the plugin and of its
    JSON file) load the dynamic security plugin and refuse anonymous
    clients.
    """
    if (dynsec_plugin is None) != (dynsec_config is None):
        raise ValueError("dynsec_plugin and dynsec_config go together")
    lines = [
        "# generated by fleetrpc.broker for a throwaway broker",
        f"listener {port} {host}",
        "allow_anonymous false" if dynsec_plugin else "allow_anonymous true",
        "persistence false",
        # The parent redirects stderr into the log file: no permission games
        # when Mosquitto started as root drops to the mosquitto/nobody user.
        "log_dest stderr",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Started by root, Mosquitto switches to the mosquitto (or nobody)
        # user, and the kernel forgets the parent-death signal on that
        # switch: a crashed parent would leave the broker behind.  A broker
        # on loopback that lives and dies with its parent may keep its user.
        lines.append("user root")
    if tuned:
        lines += [
            "set_tcp_nodelay true",
            "max_queued_messages 0",
            "max_inflight_messages 0",
        ]
    if dynsec_plugin is not None:
        lines += [f"plugin {dynsec_plugin}", f"plugin_opt_config_file {dynsec_config}"]
    lines += list(extra)
    return "\n".join(lines) + "\n"


def _amqtt_config(port: int, host: str) -> dict:
    """amqtt's config: one TCP listener, anonymous clients, nothing else."""
    listeners = {"default": {"type": "tcp", "bind": f"{host}:{port}"}}
    try:
        version = tuple(int(p) for p in importlib.metadata.version("amqtt").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        version = (0, 12)
    if version >= (0, 12):
        auth = "amqtt.plugins.authentication.AnonymousAuthPlugin"
        return {"listeners": listeners, "plugins": {auth: {"allow_anonymous": True}}}
    # 0.11 only knows the entry-point style (deprecated from 0.12 on).
    return {"listeners": listeners, "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]}}


# -- the child process -------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()


def child_setup(*, die_with_parent: bool = True, death_signal: int = signal.SIGTERM):
    """A ``preexec_fn`` for a server child: the open file limit raised to the
    hard limit (10,000 connections need more than the usual 1024), and, on
    Linux, ``death_signal`` when the parent dies.

    The death signal is tied to the *thread* that forks, so ask for it only
    when forking from a thread that lives as long as the process (the main
    thread); :class:`Broker` does that itself.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    parent = os.getpid()
    libc = _LIBC if die_with_parent else None

    def setup() -> None:  # runs in the child, between fork and exec
        if target > soft:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl
                os._exit(1)

    return setup


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class Broker:
    """One throwaway broker process on a fixed port, restartable.

    Made by :func:`start_broker` / :func:`run_broker`; the methods without
    ``_sync`` are for event-loop code, the others for plain code (a pytest
    fixture).  :meth:`stop` and :meth:`start` keep the port and the temporary
    directory; :meth:`close` / :meth:`aclose` stop the broker and remove them.
    """

    def __init__(
        self,
        kind: BrokerKind,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tuned: bool = True,
        mosquitto: str | None = None,
        extra_config: Sequence[str] = (),
        start_timeout: float = 20.0,
        dynsec: bool | DynsecAccounts = False,
    ) -> None:
        if kind not in ("mosquitto", "embedded"):
            raise ValueError(f"unknown broker kind {kind!r}")
        self.dynsec: DynsecAccounts | None = None
        self._dynsec_plugin: str | None = None
        if dynsec:
            if kind != "mosquitto":
                raise BrokerError("dynsec=True needs Mosquitto (its dynamic security plugin)")
            from .broker_auth.dynsec import DynsecAccounts as _Accounts

            self._dynsec_plugin = find_dynsec_plugin()
            if self._dynsec_plugin is None:
                raise BrokerError(
                    "Mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) was not found "
                    f"in {', '.join(DYNSEC_PLUGIN_GLOBS)}: Debian's mosquitto package ships it"
                )
            self.dynsec = dynsec if isinstance(dynsec, _Accounts) else _Accounts.generate()
        if kind == "mosquitto":
            mosquitto = mosquitto or find_mosquitto()
            if mosquitto is None:
                raise BrokerError(f"Mosquitto not found on PATH nor in {', '.join(MOSQUITTO_PATHS)}: {_INSTALL_HINT}")
        elif not embedded_available():
            raise BrokerError(f"the embedded broker needs amqtt: {_INSTALL_HINT}")
        self.kind: BrokerKind = kind
        self.host = host
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port(host)
        self.tuned = tuned
        self.start_timeout = start_timeout
        self._binary = mosquitto
        self._extra = tuple(extra_config)
        self.dir = Path(tempfile.mkdtemp(prefix=f"fleetrpc-{kind}-"))
        self.log_path = self.dir / "broker.log"
        self._proc: subprocess.Popen | None = None
        self._started_once = False
        self._write_config()

    # -- read-only facts ------------------------------------------------------

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs, else None."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log (for error messages)."""
        return _tail(self.log_path, lines)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<Broker {self.kind} {self.url} {state}>"

    # -- start and stop -------------------------------------------------------

    def _write_config(self) -> None:
        if self.kind == "mosquitto":
            self.config_path = self.dir / "mosquitto.conf"
            dynsec_config = None
            if self.dynsec is not None:
                dynsec_config = self.dir / "dynamic-security.json"
                if not dynsec_config.exists():  # the plugin keeps its state there across restarts
                    from .broker_auth.dynsec import initial_config

                    dynsec_config.write_text(json.dumps(initial_config(self.dynsec), indent=1))
                    dynsec_config.chmod(0o600)
            text = mosquitto_config(
                self.port, self.host, tuned=self.tuned, extra=self._extra, dynsec_plugin=self._dynsec_plugin,
                dynsec_config=str(dynsec_config) if dynsec_config else None,
            )
        else:
            self.config_path = self.dir / "amqtt.yaml"  # JSON is YAML
            text = json.dumps(_amqtt_config(self.port, self.host), indent=2)
        self.config_path.write_text(text)

    def preload_dynsec(self, devices: Iterable[tuple[str, str]], prefix: str | None = None) -> None:
        """Write the plugin's file with every ``(device_id, token)`` already
        provisioned, before the broker starts (one write instead of two
        plugin commands per device, each rewriting the whole file)."""
        if self.dynsec is None:
            raise BrokerError("preload_dynsec needs a broker made with dynsec=True")
        if self.running:
            raise BrokerError("preload_dynsec rewrites the plugin's file: stop the broker first")
        from ._core.constants import DEFAULT_PREFIX
        from .broker_auth.dynsec import initial_config

        path = self.dir / "dynamic-security.json"
        path.write_text(json.dumps(initial_config(self.dynsec, devices, prefix or DEFAULT_PREFIX)))
        path.chmod(0o600)

    def _command(self) -> list[str]:
        if self.kind == "mosquitto":
            return [self._binary, "-c", str(self.config_path)]
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(self.config_path)]

    def _spawn(self) -> None:
        if self.running:
            raise BrokerError(f"{self!r} is already running")
        main = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                preexec_fn=child_setup(die_with_parent=main),
            )

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _exited(self) -> BrokerError:
        code = self._proc.returncode if self._proc else None
        return BrokerError(
            f"{self.kind} exited with code {code} while starting on {self.url}; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _timed_out(self) -> BrokerError:
        return BrokerError(
            f"{self.kind} did not accept connections on {self.url} within "
            f"{self.start_timeout:g} s; log:\n{self.log_tail()}"
        )

    def _new_port(self) -> bool:
        # Only before the first start: a restart must keep its port.
        if self._started_once:
            return False
        self.port = free_port(self.host)
        self._write_config()
        return True

    def _retry_port(self) -> bool:
        # A freshly picked port can be taken between picking and binding.
        return not self._fixed_port and "in use" in self.log_tail(5) and self._new_port()

    # Starting and stopping are written once, as generators that yield how
    # long to wait before looking again; the sync and async methods differ
    # only in how they wait.

    def _start_steps(self) -> Iterator[float]:
        for _ in range(3):
            # Someone else listening there would answer our readiness probe.
            if not port_is_free(self.port, self.host):
                if self._fixed_port or not self._new_port():
                    raise BrokerError(f"cannot start {self.kind} on {self.url}: the port is in use")
                continue
            self._spawn()
            deadline = time.monotonic() + self.start_timeout
            while self._proc.poll() is None:
                # Still alive after the connect: it was this broker that accepted.
                if self._accepts() and self._proc.poll() is None:
                    self._started_once = True
                    return
                if time.monotonic() > deadline:
                    self._proc.kill()
                    self._proc.wait()
                    raise self._timed_out()
                yield 0.02
            if not self._retry_port():
                raise self._exited()
        raise self._exited()

    def _stop_steps(self, timeout: float) -> Iterator[float]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                return
            yield 0.005

    def start_sync(self) -> None:
        """Start the broker (same port as before) and wait until it accepts."""
        for delay in self._start_steps():
            time.sleep(delay)

    async def start(self) -> None:
        """Start the broker (same port as before) and wait until it accepts."""
        for delay in self._start_steps():
            await asyncio.sleep(delay)

    def stop_sync(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; a no-op when stopped."""
        for delay in self._stop_steps(timeout):
            time.sleep(delay)

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; a no-op when stopped."""
        for delay in self._stop_steps(timeout):
            await asyncio.sleep(delay)

    def close(self) -> None:
        """Stop the broker and remove its directory."""
        try:
            self.stop_sync()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def aclose(self) -> None:
        """Stop the broker and remove its directory."""
        try:
            await self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _choose(prefer: Preference) -> BrokerKind:
    if prefer == "mosquitto" or prefer == "embedded":
        return prefer
    if prefer != "auto":
        raise ValueError(f"prefer must be 'mosquitto', 'embedded' or 'auto', not {prefer!r}")
    if find_mosquitto() is not None:
        return "mosquitto"
    if embedded_available():
        return "embedded"
    raise BrokerError(f"no MQTT broker available: {_INSTALL_HINT}")


@contextlib.asynccontextmanager
async def start_broker(
    prefer: Preference = "auto",
    *,
    tuned: bool = True,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra_config: Sequence[str] = (),
    start_timeout: float = 20.0,
    dynsec: bool | DynsecAccounts = False,
) -> AsyncIterator[Broker]:
    """Run a throwaway broker for the duration of an ``async with`` block.

    ``prefer``: ``"mosquitto"``, ``"embedded"`` (amqtt) or ``"auto"``
    (Mosquitto when found, else amqtt).  ``tuned`` and ``extra_config`` apply
    to Mosquitto; see :func:`mosquitto_config`.  Raises :class:`BrokerError`
    when the broker cannot be found or started.  ``dynsec``: see the
    module docstring (Mosquitto only).
    """
    broker = Broker(
        _choose(prefer), host=host, port=port, tuned=tuned,
        extra_config=extra_config, start_timeout=start_timeout, dynsec=dynsec,
    )
    try:
        await broker.start()
        yield broker
    finally:
        await broker.aclose()


@contextlib.contextmanager
def run_broker(
    prefer: Preference = "auto",
    *,
    tuned: bool = True,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra_config: Sequence[str] = (),
    start_timeout: float = 20.0,
    dynsec: bool | DynsecAccounts = False,
) -> Iterator[Broker]:
    """The blocking twin of :func:`start_broker`, for code without a loop."""
    broker = Broker(
        _choose(prefer), host=host, port=port, tuned=tuned,
        extra_config=extra_config, start_timeout=start_timeout, dynsec=dynsec,
    )
    try:
        broker.start_sync()
        yield broker
    finally:
        broker.close()
