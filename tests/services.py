"""pytest plugin: a real MQTT broker and a real PostgreSQL for the tests.

Fixtures
--------
``mqtt_url`` (session)
    ``FLEETRPC_MQTT_URL`` when set, else the URL of a throwaway tuned
    Mosquitto started for the session (:mod:`fleetrpc.broker`).
``mqtt_broker`` (function)
    A private throwaway Mosquitto (:class:`fleetrpc.broker.Broker`) that the
    test may ``await .stop()`` and ``await .start()`` on the same port.
``pg_dsn`` (session)
    ``FLEETRPC_PG_DSN`` when set, else the DSN of database ``fleetrpc_test``
    on a throwaway PostgreSQL cluster started for the session.
``pg_server`` (function)
    A private throwaway PostgreSQL (:class:`PgServer`): ``.dsn``,
    ``await .stop()`` / ``await .start()`` on the same port, for outage tests.
``chromium_path`` (session)
    Debian's Chromium for the console's browser tests (Playwright drives it
    with ``executable_path``).
``fresh_pg_db`` (function)
    The DSN of a new, empty database on ``pg_dsn``'s server, dropped after
    the test.

Throwaway servers listen on free ports of 127.0.0.1 and live in temporary
directories that are removed afterwards.  A missing binary is installed from
Debian's packages (``tools/dev system-deps``) when running as root, once per
session and before any test starts; otherwise every test that needs it fails
with a message saying what to install or which variable to set.  Nothing is
skipped.  Tests using these fixtures get the ``mqtt`` / ``pg`` markers, so
``-m "not pg"`` deselects them explicitly.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import pytest

from fleetrpc.broker import Broker, BrokerError, child_setup, find_mosquitto, free_port

REPO = Path(__file__).resolve().parents[1]
MQTT_ENV = "FLEETRPC_MQTT_URL"
PG_ENV = "FLEETRPC_PG_DSN"
PG_BINDIR_ENV = "FLEETRPC_PG_BINDIR"
TEST_DB = "fleetrpc_test"
PG_SUPERUSER = "postgres"

MQTT_FIXTURES = frozenset({"mqtt_url", "mqtt_broker"})
PG_FIXTURES = frozenset({"pg_dsn", "pg_server", "fresh_pg_db"})


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# -- driving the start/stop step generators ------------------------------------


def _drive(steps: Iterator[float]) -> None:
    for delay in steps:
        time.sleep(delay)


async def _adrive(steps: Iterator[float]) -> None:
    for delay in steps:
        await asyncio.sleep(delay)


def run_async(fn, *args):
    """Run ``await fn(*args)`` in a thread of its own, with its own loop.

    Works from sync fixtures and from inside a running loop alike, and never
    touches the loop pytest-asyncio gives the test.
    """
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(fn(*args))
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="fleetrpc-services")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- PostgreSQL -----------------------------------------------------------------


def find_pg_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``.

    ``$FLEETRPC_PG_BINDIR``, then PATH, then ``/usr/lib/postgresql/*/bin``
    (newest major first, as Debian installs it), then ``/usr/local/pgsql/bin``.
    """
    candidates: list[Path] = []
    if _env(PG_BINDIR_ENV):
        candidates.append(Path(os.environ[PG_BINDIR_ENV]))
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
        candidates.append(Path(on_path).parent)

    def major(path: str) -> int:
        try:
            return int(Path(path).parent.name.split(".")[0])
        except ValueError:
            return -1

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)]
    candidates.append(Path("/usr/local/pgsql/bin"))
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "postgres")):
            return bindir
    return None


def with_database(dsn: str, database: str) -> str:
    """``dsn`` (a ``postgresql://`` URL) pointing at another database."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"expected a postgresql:// URL, got {dsn!r}")
    return urlunsplit(parts._replace(path="/" + database))


async def _pg_execute(dsn: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def drop_pg_schema(dsn: str, schema: str) -> None:
    """Drop a test's own schema (tests isolate themselves by schema in
    pg_dsn's database); from a fixture's teardown, outside the test's loop."""
    run_async(_pg_execute, dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _pg_drop_database(dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except asyncpg.PostgresSyntaxError:  # before PostgreSQL 13
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


class PgServer:
    """A throwaway PostgreSQL cluster in a temporary directory.

    Listens on 127.0.0.1 (fixed port, kept across :meth:`stop` /
    :meth:`start`) and on a Unix socket in its directory; trust auth for the
    superuser ``postgres``.  ``fsync`` stays on: durability tests mean what
    they say.  As root, the server runs as the ``postgres`` OS user (initdb
    and postgres refuse root).  ``template`` is a data directory to copy
    instead of running initdb (much faster; see the ``_pg_template`` fixture).
    """

    def __init__(self, bindir: Path, *, template: Path | None = None, database: str = TEST_DB) -> None:
        self.bindir = Path(bindir)
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.database = database
        self.dir = Path(tempfile.mkdtemp(prefix="fleetrpc-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self._proc: subprocess.Popen | None = None
        self._started_once = False  # a restart keeps its port: clients hold the DSN
        self._owner = None
        if _is_root():
            try:
                self._owner = pwd.getpwnam(PG_SUPERUSER)
            except KeyError:
                shutil.rmtree(self.dir, ignore_errors=True)
                raise RuntimeError(
                    "running as root, PostgreSQL needs an unprivileged OS user "
                    f"'{PG_SUPERUSER}' (Debian's postgresql package creates it)"
                ) from None
            os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)
        try:
            if template is not None:
                subprocess.run(["cp", "-a", str(template), str(self.data)], check=True)
                if self._owner is not None:
                    os.chown(self.data, self._owner.pw_uid, self._owner.pw_gid)
            else:
                self._initdb()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    # -- facts -----------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/fleetrpc_test``."""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{PG_SUPERUSER}@{self.host}:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<PgServer {self.host}:{self.port} {state}>"

    # -- processes -------------------------------------------------------------

    def _popen_kwargs(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        kwargs: dict = {"env": env, "cwd": self.dir, "stdin": subprocess.DEVNULL}
        if self._owner is not None:
            kwargs.update(user=self._owner.pw_uid, group=self._owner.pw_gid, extra_groups=[])
            env["HOME"] = self._owner.pw_dir
        return kwargs

    def _initdb(self) -> None:
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                [str(self.bindir / "initdb"), "-D", str(self.data), "-U", PG_SUPERUSER,
                 "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
                stdout=log, stderr=subprocess.STDOUT, **self._popen_kwargs(),
            )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {result.returncode}):\n{self.log_tail()}")

    def _spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        main = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                # An orphaned postmaster shuts down at once (immediate mode).
                preexec_fn=child_setup(die_with_parent=main, death_signal=signal.SIGQUIT),
                **self._popen_kwargs(),
            )

    def _ready(self) -> bool:
        # pg_ctl's own test: line 8 of postmaster.pid says "ready".
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def _start_steps(self, timeout: float) -> Iterator[float]:
        for attempt in range(3):
            self._spawn()
            deadline = time.monotonic() + timeout
            while not self._ready():
                if self._proc.poll() is not None:
                    # A freshly picked port can be taken between picking and
                    # binding (another throwaway service of the run): a new
                    # port, before the first start only, as the broker does.
                    if not self._started_once and attempt < 2 and "already in use" in self.log_tail(8):
                        self.port = free_port(self.host)
                        break
                    raise RuntimeError(
                        f"postgres exited with code {self._proc.returncode} while starting "
                        f"on port {self.port}:\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    self._proc.kill()
                    self._proc.wait()
                    raise RuntimeError(f"postgres not ready within {timeout:g} s:\n{self.log_tail()}")
                yield 0.02
            else:
                self._started_once = True
                return

    _STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

    def _stop_steps(self, mode: str, timeout: float) -> Iterator[float]:
        if mode not in self._STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(self._STOP_SIGNALS)}, not {mode!r}")
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self._STOP_SIGNALS[mode])
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                # Immediate shutdown still lets the postmaster reap its backends,
                # which a restart on the same data directory needs.
                proc.send_signal(signal.SIGQUIT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                return
            yield 0.01

    def start_sync(self, timeout: float = 60.0) -> None:
        """Start (same port and data as before) and wait until it accepts queries."""
        _drive(self._start_steps(timeout))

    async def start(self, timeout: float = 60.0) -> None:
        """Start (same port and data as before) and wait until it accepts queries."""
        await _adrive(self._start_steps(timeout))

    def stop_sync(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Shut down: ``fast`` (SIGINT: clients are disconnected, a clean
        checkpoint), ``immediate`` (SIGQUIT: like a crash, recovery at the next
        start) or ``smart`` (SIGTERM: waits for clients to leave)."""
        _drive(self._stop_steps(mode, timeout))

    async def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Shut down; see :meth:`stop_sync` for the modes."""
        await _adrive(self._stop_steps(mode, timeout))

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop_sync("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- what is missing, and installing it ------------------------------------------


class _Services:
    """What this session knows about the binaries (one per pytest config)."""

    def __init__(self) -> None:
        self.install_tried = False
        self.install_log = ""

    @staticmethod
    def missing(mqtt: bool = True, pg: bool = True, browser: bool = False) -> list[str]:
        names = []
        if mqtt and find_mosquitto() is None:
            names.append("mosquitto")
        if pg and find_pg_bindir() is None:
            names.append("postgresql")
        if browser and find_chromium() is None:
            names.append("chromium")
        return names

    def install(self, names: list[str], write) -> None:
        """Install Debian packages once per session, as root, via tools/dev."""
        if self.install_tried or not names:
            return
        self.install_tried = True
        if os.environ.get("FLEETRPC_SYSTEM_DEPS_TRIED"):  # tools/dev already did
            return
        if not _is_root() or shutil.which("apt-get") is None:
            return
        write(f"fleetrpc: installing {' '.join(names)} from Debian's packages (tools/dev system-deps) ...")
        result = subprocess.run(
            ["bash", str(REPO / "tools" / "dev"), "system-deps", *names],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.install_log = "\n".join(result.stdout.splitlines()[-15:])
        write(f"fleetrpc: tools/dev system-deps exited with {result.returncode}")

    def require(self, name: str, env: str) -> None:
        """Fail the test (never skip) when a binary is still missing."""
        if name not in self.missing(mqtt=name == "mosquitto", pg=name == "postgresql", browser=name == "chromium"):
            return
        what = {"mosquitto": "Mosquitto", "postgresql": "PostgreSQL (initdb and postgres)",
                "chromium": "Chromium (Debian's chromium package)"}[name]
        if _is_root():
            how = f"installing it from Debian's packages failed or was not possible; run `tools/dev system-deps {name}`"
        else:
            how = f"install it (`sudo apt-get install {name}`) or run the tests as root through `tools/dev test`"
        hint = f"{what} is needed by this test but was not found: {how}"
        if env != "-":
            hint += f"; or point the tests at a running server with {env}"
        if self.install_log:
            hint += f"\nlast lines of the installation:\n{self.install_log}"
        pytest.fail(hint, pytrace=False)


_SERVICES_KEY = pytest.StashKey[_Services]()


def _services(config: pytest.Config) -> _Services:
    return config.stash.setdefault(_SERVICES_KEY, _Services())


# -- hooks ------------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> list[str]:
    mqtt = _env(MQTT_ENV)
    pg = _env(PG_ENV)
    mosquitto = find_mosquitto()
    bindir = find_pg_bindir()
    return [
        "fleetrpc services: MQTT "
        + (f"{MQTT_ENV}={mqtt}" if mqtt else f"throwaway Mosquitto ({mosquitto or 'binary missing'})")
        + "; PostgreSQL "
        + (f"{PG_ENV}={pg}" if pg else f"throwaway cluster ({bindir or 'binaries missing'})")
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & MQTT_FIXTURES:
            item.add_marker(pytest.mark.mqtt)
        if names & PG_FIXTURES:
            item.add_marker(pytest.mark.pg)


def pytest_collection_finish(session: pytest.Session) -> None:
    # Install what the selected tests need now, outside any test's timeout.
    need_mqtt = need_pg = need_browser = False
    for item in session.items:
        names = set(getattr(item, "fixturenames", ()))
        # A marker covers fixtures reached through request.getfixturevalue().
        mqtt_marked = item.get_closest_marker("mqtt") is not None
        pg_marked = item.get_closest_marker("pg") is not None
        need_mqtt |= "mqtt_broker" in names or (mqtt_marked and not _env(MQTT_ENV))
        need_pg |= "pg_server" in names or (pg_marked and not _env(PG_ENV))
        need_browser |= "chromium_path" in names
    services = _services(session.config)
    missing = services.missing(mqtt=need_mqtt, pg=need_pg, browser=need_browser)
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        write = reporter.write_line if reporter is not None else print
        services.install(missing, write)


# -- a browser -----------------------------------------------------------------------


def find_chromium() -> str | None:
    """Debian's Chromium (the console's browser tests drive it with
    Playwright's ``executable_path``: no browser download)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium_path(request: pytest.FixtureRequest) -> str:
    """The path of a Chromium binary; installed from Debian's packages when
    missing and running as root, else the test fails saying how."""
    _services(request.config).require("chromium", "-")
    return find_chromium()


# -- MQTT fixtures -------------------------------------------------------------------


def _check_tcp(url: str, env: str) -> None:
    parts = urlsplit(url)
    default = 8883 if parts.scheme in ("mqtts", "ssl", "tls") else 1883
    try:
        host, port = parts.hostname or "127.0.0.1", parts.port or default
    except ValueError as exc:
        pytest.fail(f"{env}={url!r} is not a valid URL: {exc}", pytrace=False)
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as exc:
        pytest.fail(f"{env}={url} but nothing accepts connections at {host}:{port}: {exc}", pytrace=False)


def _new_broker(request: pytest.FixtureRequest, env: str) -> Broker:
    _services(request.config).require("mosquitto", env)
    try:
        broker = Broker("mosquitto", tuned=True)
    except BrokerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        broker.start_sync()
    except BrokerError as exc:
        broker.close()
        pytest.fail(f"could not start a throwaway Mosquitto: {exc}", pytrace=False)
    return broker


@pytest.fixture(scope="session")
def mqtt_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of the MQTT broker for the session: FLEETRPC_MQTT_URL, else a
    throwaway tuned Mosquitto."""
    url = _env(MQTT_ENV)
    if url:
        _check_tcp(url, MQTT_ENV)
        yield url
        return
    broker = _new_broker(request, MQTT_ENV)
    try:
        yield broker.url
    finally:
        broker.close()


@pytest.fixture
def mqtt_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A private throwaway tuned Mosquitto; ``await mqtt_broker.stop()`` and
    ``await mqtt_broker.start()`` (same port) simulate a broker restart."""
    broker = _new_broker(request, "-")
    try:
        yield broker
    finally:
        broker.close()


# -- PostgreSQL fixtures ---------------------------------------------------------------


def _pg_bindir(request: pytest.FixtureRequest, env: str) -> Path:
    _services(request.config).require("postgresql", env)
    return find_pg_bindir()


class _PgTemplate(NamedTuple):
    bindir: Path
    data: Path


@pytest.fixture(scope="session")
def _pg_template(request: pytest.FixtureRequest) -> Iterator[_PgTemplate]:
    """A stopped, initialised cluster with database fleetrpc_test, copied by
    every throwaway server (initdb once per session, not once per test)."""
    bindir = _pg_bindir(request, "-")
    try:
        server = PgServer(bindir)
        try:
            server.start_sync()
            run_async(_pg_execute, server.dsn_for("postgres"), f'CREATE DATABASE "{TEST_DB}"')
            server.stop_sync("fast")
        except BaseException:
            server.close()
            raise
    except Exception as exc:
        pytest.fail(f"could not initialise a throwaway PostgreSQL: {exc}", pytrace=False)
    try:
        yield _PgTemplate(bindir, server.data)
    finally:
        server.close()


def _new_pg_server(template: _PgTemplate) -> PgServer:
    try:
        server = PgServer(template.bindir, template=template.data)
    except Exception as exc:
        pytest.fail(f"could not set up a throwaway PostgreSQL: {exc}", pytrace=False)
    try:
        server.start_sync()
    except Exception as exc:
        server.close()
        pytest.fail(f"could not start a throwaway PostgreSQL: {exc}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def pg_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of the session's database: FLEETRPC_PG_DSN, else database
    fleetrpc_test on a throwaway PostgreSQL."""
    dsn = _env(PG_ENV)
    if dsn:
        try:
            run_async(_pg_execute, dsn, "SELECT 1")
        except Exception as exc:
            pytest.fail(f"{PG_ENV}={dsn} but connecting failed: {exc!r}", pytrace=False)
        yield dsn
        return
    _services(request.config).require("postgresql", PG_ENV)
    server = _new_pg_server(request.getfixturevalue("_pg_template"))
    try:
        yield server.dsn
    finally:
        server.close()


@pytest.fixture
def pg_server(_pg_template: _PgTemplate) -> Iterator[PgServer]:
    """A private throwaway PostgreSQL; ``await pg_server.stop()`` and
    ``await pg_server.start()`` (same port) simulate a database outage."""
    server = _new_pg_server(_pg_template)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fresh_pg_db(pg_dsn: str) -> Iterator[str]:
    """DSN of a new, empty database on pg_dsn's server, dropped afterwards."""
    name = f"fleetrpc_t_{uuid.uuid4().hex[:16]}"
    try:
        run_async(_pg_execute, pg_dsn, f'CREATE DATABASE "{name}"')
    except Exception as exc:
        pytest.fail(f"could not create database {name} through {pg_dsn}: {exc!r}", pytrace=False)
    try:
        yield with_database(pg_dsn, name)
    finally:
        run_async(_pg_drop_database, pg_dsn, name)
