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
when none exists; a database without any user refuses to start, saying how
to create one (there is never a default password).
"""

from __future__ import annotations

import logging
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

__all__ = ["open_repositories", "ServerUsers", "ServerCustomers", "NoUsersError", "first_sysadmin"]

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


async def first_sysadmin(users: ServerUsers, auth: AuthSection) -> User | None:
    """The server's first start: create the system administrator of the
    settings when no system administrator exists (``fleetrpc.admin``'s
    ``ensure_sysadmin``: at least 8 characters, never an invented
    password).  Raises :class:`NoUsersError` when the database has no user
    at all and the settings name none."""
    from ..admin import ensure_sysadmin

    if auth.sysadmin_email is None and not await users.count():
        raise NoUsersError(HOW_TO_CREATE_SYSADMIN)
    return await ensure_sysadmin(users, auth.sysadmin_email, sysadmin_password(auth))


async def _nothing() -> None:
    return None


async def open_repositories(ctx: ServerContext) -> Callable[[], Awaitable[None]]:
    """Fill ``ctx.devices``, ``ctx.users``, ``ctx.tenants``, ``ctx.customers``
    on ``ctx.db``; load the demo data (``ctx.demo``); make sure a system
    administrator can log in.  Returns the function that closes them (the
    database itself is the ``database`` part's).  ``ctx.open_repositories``
    replaces all this (the REST bench's in-memory directory)."""
    if ctx.open_repositories is not None:
        return await ctx.open_repositories(ctx)
    db = ctx.db
    ctx.devices = DeviceRepository(db)
    ctx.tenants = TenantRepository(db, devices=ctx.devices)
    ctx.customers = ServerCustomers(db)
    ctx.users = ServerUsers(db, ctx.settings.auth, hasher=ctx.password_hasher)
    if ctx.demo:
        from .demo_data import demo_repositories, load_demo_data

        await load_demo_data(**demo_repositories(ctx))
    await first_sysadmin(ctx.users, ctx.settings.auth)
    return _nothing
