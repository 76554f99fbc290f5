"""The identity repositories (tenants, customers, users, devices) of a
running server, on the shared database, and what authentication needs of
the users' repository (:class:`~fleetrpc.api.auth.UserDirectory`).

Failed logins are counted **in the database** (``tb_user.failed_login_attempts``
and ``locked_until``, one atomic UPDATE per failure): a lockout holds on
every node of a cluster and across restarts.  A failure is also answered
after a delay that doubles per failure in a row (``auth.failed_login_delay_ms``,
at most 4 s), which slows guessing on one connection.

At start (:func:`open_repositories`): ``--demo`` loads ThingsBoard's demo
accounts; a first system administrator is created from ``auth.sysadmin_*``
when none exists.  A database without any user and nothing configured:

- SQLite (the embedded default): the system administrator
  ``sysadmin@localhost`` is created with a random password, written to
  ``{server.data_dir}/sysadmin-password`` (mode 0600) and printed once on
  stderr with the file's path, so that ``fleetrpc serve`` works on a fresh
  machine without a default password;
- PostgreSQL: the server refuses to start, saying how to create one.  That
  database is shared by the nodes of a cluster and usually outlives any
  one machine: a password written into one node's data directory (often a
  container's throwaway disk) would be lost or found on the wrong machine,
  and a production deployment names its administrator on purpose.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ..api.auth import BAD_CREDENTIALS, LOCKED, NOT_ACTIVE, LoginRefused
from ..config.server import AuthSection
from ..errors import FleetRpcError, ValidationError
from ..store.db import Database
from ..store.entities import (
    CustomerRepository,
    DeviceRepository,
    TenantRepository,
    User,
    UserRepository,
    check_uuid,
)
from .context import ServerContext

__all__ = [
    "GENERATED_SYSADMIN_EMAIL",
    "SYSADMIN_PASSWORD_FILE",
    "NoUsersError",
    "ServerCustomers",
    "ServerUsers",
    "first_sysadmin",
    "open_repositories",
]

log = logging.getLogger("fleetrpc.server")

#: Longest delay a failed login is answered after.
MAX_LOGIN_DELAY_S = 4.0


class NoUsersError(FleetRpcError):
    """The database has no user and the settings name no system administrator."""


class ServerUsers(UserRepository):
    """The users' repository plus :class:`~fleetrpc.api.auth.UserDirectory`
    (``authenticate``, ``by_id``) with the lockout kept in the database."""

    def __init__(self, db: Database, auth: AuthSection, **kw: Any) -> None:
        super().__init__(db, **kw)
        self.auth = auth

    def _delay(self, in_a_row: int) -> float:
        base = self.auth.failed_login_delay_ms / 1000.0
        return min(base * 2 ** max(in_a_row - 1, 0), MAX_LOGIN_DELAY_S)

    async def authenticate(self, email: str, password: str) -> User:
        """The user of ``email`` when ``password`` is theirs; else
        :class:`LoginRefused` with ThingsBoard's message and the delay to
        answer after.  A locked account is refused without trying the
        password; the ``auth.max_failed_logins``-th failure in a row locks
        it for ``auth.lockout_s``."""
        user = await self.by_email(email)
        if user is not None and user.is_locked():
            raise LoginRefused(LOCKED, delay=self._delay(1))
        verified = await self.verify(email, password)
        if verified is None:
            if user is None:
                raise LoginRefused(BAD_CREDENTIALS, delay=self._delay(1))
            a = self.auth
            after = await self.record_failed_login(
                user.id, max_attempts=a.max_failed_logins, lockout_ms=int(a.lockout_s * 1000))
            if after.is_locked():
                log.warning("login of %s locked for %.0f s after %d failures in a row",
                            user.email, a.lockout_s, a.max_failed_logins)
                in_a_row = a.max_failed_logins
            else:
                in_a_row = after.failed_login_attempts
            raise LoginRefused(BAD_CREDENTIALS, delay=self._delay(in_a_row))
        if not verified.enabled:
            raise LoginRefused(NOT_ACTIVE)
        await self.reset_failed_logins(verified.id)
        return verified

    async def by_id(self, user_id: str) -> User | None:
        """The user, or None (also for an id that is no UUID)."""
        try:
            return await self.get(user_id)
        except ValidationError:
            return None


class ServerCustomers(CustomerRepository):
    """The customers' repository plus the titles a page of devices shows
    (DeviceInfo's ``customerTitle``) in one query."""

    async def titles(self, tenant_id: str, customer_ids: set[str]) -> dict[str, str]:
        """``{customer id: title}`` of those of ``customer_ids`` that are
        customers of ``tenant_id``."""
        tenant_id = check_uuid("tenant id", tenant_id)
        ids = sorted(customer_ids)
        out: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join(f"${i + 2}" for i in range(len(chunk)))
            rows = await self.db.fetch(
                f"SELECT id, title FROM customer WHERE tenant_id = $1 AND id IN ({marks})", tenant_id, *chunk)
            out.update((r["id"], r["title"]) for r in rows)
        return out


def sysadmin_password(auth: AuthSection) -> str | None:
    """``auth.sysadmin_password``, else the first line of
    ``auth.sysadmin_password_file``, else None."""
    if auth.sysadmin_password is not None:
        return auth.sysadmin_password
    if auth.sysadmin_password_file is None:
        return None
    try:
        with open(auth.sysadmin_password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except OSError as exc:
        raise ValidationError(
            f"auth.sysadmin_password_file: cannot read {auth.sysadmin_password_file!r}: {exc.strerror}") from None
    if not password:
        raise ValidationError(f"auth.sysadmin_password_file: {auth.sysadmin_password_file!r} is empty")
    return password


HOW_TO_CREATE_SYSADMIN = (
    "the database has no users: give the first system administrator with auth.sysadmin_email and "
    "auth.sysadmin_password_file (or $FLEETRPC_AUTH_SYSADMIN_EMAIL and $FLEETRPC_AUTH_SYSADMIN_PASSWORD), "
    "or create one with `fleetrpc admin create-sysadmin --db <store url> --email <email>`; "
    "`fleetrpc serve --demo` loads ThingsBoard's demo accounts instead (public passwords: not for production)"
)

#: The system administrator an embedded first start creates.
GENERATED_SYSADMIN_EMAIL = "sysadmin@localhost"
#: Its password, in the data directory (mode 0600).
SYSADMIN_PASSWORD_FILE = "sysadmin-password"


async def first_sysadmin(users: ServerUsers, auth: AuthSection, *, dialect: str = "postgresql",
                         data_dir: str | os.PathLike = ".") -> User | None:
    """The server's first start: create the system administrator of the
    settings when no system administrator exists (``fleetrpc.admin``'s
    ``ensure_sysadmin``: at least 8 characters).  When the database has no
    user at all and the settings name none: on SQLite, generate one
    (:func:`generate_sysadmin`); elsewhere raise :class:`NoUsersError`."""
    from ..admin import ensure_sysadmin

    if auth.sysadmin_email is None and not await users.count():
        if dialect != "sqlite":
            raise NoUsersError(HOW_TO_CREATE_SYSADMIN)
        return await generate_sysadmin(users, data_dir)
    return await ensure_sysadmin(users, auth.sysadmin_email, sysadmin_password(auth))


async def generate_sysadmin(users: ServerUsers, data_dir: str | os.PathLike) -> User:
    """Create :data:`GENERATED_SYSADMIN_EMAIL` with a random password,
    written first (so that a password is never lost) to
    ``data_dir/sysadmin-password`` with mode 0600, then printed once on
    stderr with the file's path."""
    from ..admin import create_sysadmin

    password = secrets.token_urlsafe(18)  # 144 random bits, 24 characters
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(data_dir, SYSADMIN_PASSWORD_FILE))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
        os.write(fd, (password + "\n").encode())
    finally:
        os.close(fd)
    user = await create_sysadmin(users, GENERATED_SYSADMIN_EMAIL, password)
    sys.stderr.write(
        f"fleetrpc serve: first start: created the system administrator {GENERATED_SYSADMIN_EMAIL}\n"
        f"  password: {password}\n"
        f"  (also in {path}, mode 0600; change it with `fleetrpc admin set-password`, then delete the file)\n"
    )
    sys.stderr.flush()
    log.warning("first start: created the system administrator %s; its password is in %s",
                GENERATED_SYSADMIN_EMAIL, path)
    return user


async def open_repositories(ctx: ServerContext) -> Callable[[], Awaitable[None]]:
    """Fill ``ctx.devices``, ``ctx.users``, ``ctx.tenants``, ``ctx.customers``
    on ``ctx.db``; load the demo data (``ctx.demo``); make sure a system
    administrator can log in.  Returns the function that closes them (the
    database itself is the ``database`` part's).  ``ctx.open_repositories``
    replaces all this (the REST bench's in-memory directory)."""
    if ctx.open_repositories is not None:
        return await ctx.open_repositories(ctx)
    db = ctx.db
    ctx.devices = DeviceRepository(db, max_devices_per_tenant=ctx.settings.store.max_devices_per_tenant)
    ctx.users = ServerUsers(db, ctx.settings.auth, hasher=ctx.password_hasher)
    ctx.tenants = TenantRepository(db, devices=ctx.devices, users=ctx.users)
    ctx.customers = ServerCustomers(db, devices=ctx.devices, users=ctx.users)
    # Other nodes' device changes, for the caches that listen to them
    # (PostgreSQL; on SQLite this returns at once: one process).
    following = asyncio.ensure_future(ctx.devices.follow_other_nodes())

    async def close() -> None:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)

    try:
        if ctx.demo:
            from .demo_data import demo_repositories, load_demo_data

            await load_demo_data(**demo_repositories(ctx))
        await first_sysadmin(ctx.users, ctx.settings.auth, dialect=db.dialect, data_dir=ctx.settings.data_dir)
    except BaseException:
        await close()
        raise
    return close
