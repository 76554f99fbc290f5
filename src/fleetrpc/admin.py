"""``fleetrpc admin``: the first system administrator, password resets,
demo data -- on the server's database, without the server running.

A production server never has a default password: its first system
administrator comes either from the settings (``auth.sysadmin_email`` and
``auth.sysadmin_password``, read by :func:`ensure_sysadmin` when the server
starts and finds none) or from this command::

    fleetrpc admin create-sysadmin --db postgresql://... \\
        --email admin@example.com --password-file /run/secrets/admin

``--password-file -`` reads the password from standard input; without
``--password-file`` the password is asked for (twice) on a terminal.  The
database URL comes from ``--db`` or ``$FLEETRPC_STORE_URL`` (the variable
``fleetrpc serve`` reads for ``store.url``).  ``load-demo`` creates devices
within the server's ``store.max_devices_per_tenant``, read as the server
reads it (``--config``, ``$FLEETRPC_CONFIG`` or ./fleetrpc.toml, then
``$FLEETRPC_STORE_MAX_DEVICES_PER_TENANT``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import click

from .errors import AlreadyExistsError, FleetRpcError, ValidationError

__all__ = ["admin", "create_sysadmin", "ensure_sysadmin", "MIN_PASSWORD"]

log = logging.getLogger("fleetrpc.admin")

#: Shortest password accepted for an administrator created here or from
#: the settings (the demo's public passwords are the demo's business).
MIN_PASSWORD = 8


def check_admin_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise ValidationError(f"the password must have at least {MIN_PASSWORD} characters")
    if password.strip() != password:
        raise ValidationError("the password must not start or end with whitespace")
    return password


async def create_sysadmin(users: Any, email: str, password: str, *, first_name: str | None = None,
                          last_name: str | None = None) -> Any:
    """A new SYS_ADMIN user (``users``: a UserRepository).  Raises
    ValidationError for a weak password, AlreadyExistsError for a taken email."""
    check_admin_password(password)
    return await users.create(None, None, email, "SYS_ADMIN", first_name, last_name, password)


async def ensure_sysadmin(users: Any, email: str | None, password: str | None) -> Any | None:
    """The server's first start: when no system administrator exists, create
    one from the settings' ``email`` and ``password``; with those unset, log
    how to create one.  Returns the user created, or None (one existed, or
    nothing was configured).  Never invents a password."""
    if await users.count("SYS_ADMIN"):
        return None
    if not email or not password:
        log.warning(
            "no system administrator exists: set auth.sysadmin_email and auth.sysadmin_password "
            "(FLEETRPC_AUTH_SYSADMIN_EMAIL / _PASSWORD), or run `fleetrpc admin create-sysadmin`"
        )
        return None
    try:
        user = await create_sysadmin(users, email, password)
    except AlreadyExistsError:
        # A user with that email exists but is not a system administrator,
        # or another node created it a moment ago: never change it here.
        if await users.count("SYS_ADMIN"):
            return None
        raise ValidationError(
            f"auth.sysadmin_email {email!r} belongs to a user who is not a system administrator"
        ) from None
    log.info("created the system administrator %s from the settings", user.email)
    return user


# -- the command ------------------------------------------------------------------------


def _read_password(password_file: str | None) -> str:
    if password_file is None:
        if not sys.stdin.isatty():
            raise click.UsageError("give --password-file (or - for standard input) when not on a terminal")
        return click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if password_file == "-":
        text = sys.stdin.readline()
    else:
        try:
            with open(password_file, encoding="utf-8") as f:
                text = f.readline()
        except OSError as e:
            raise click.BadParameter(f"cannot read {password_file}: {e.strerror}", param_hint="--password-file")
    return text.rstrip("\r\n")


async def _with_repos(db_url: str, fn, max_devices_per_tenant: int = 0) -> Any:
    from .store.db import open_database
    from .store.entities import CustomerRepository, DeviceRepository, TenantRepository, UserRepository

    db = await open_database(db_url)
    try:
        devices = DeviceRepository(db, max_devices_per_tenant=max_devices_per_tenant)
        return await fn(
            tenants=TenantRepository(db, devices=devices), customers=CustomerRepository(db),
            users=UserRepository(db), devices=devices,
        )
    finally:
        await db.close()


def _run(db_url: str, fn, max_devices_per_tenant: int = 0) -> Any:
    try:
        return asyncio.run(_with_repos(db_url, fn, max_devices_per_tenant))
    except FleetRpcError as e:
        raise click.ClickException(str(e)) from None


def _device_limit(config_path: str | None) -> int:
    """``store.max_devices_per_tenant`` as ``fleetrpc serve`` reads it (the
    file, then the environment), so that a command creating devices is held
    to the server's limit."""
    from .config import load_server_settings

    try:
        return load_server_settings(config_path).store.max_devices_per_tenant
    except ValidationError as e:
        raise click.ClickException(f"configuration error: {e}") from None


_db_option = click.option(
    "--db", "db_url", envvar="FLEETRPC_STORE_URL", required=True, metavar="URL",
    help="The server's database: sqlite:///path.db or postgresql://... (env FLEETRPC_STORE_URL).",
)


@click.group()
def admin() -> None:
    """Accounts and data on the server's database (the server may be stopped)."""


@admin.command("create-sysadmin")
@_db_option
@click.option("--email", required=True, help="Login of the new system administrator.")
@click.option("--password-file", metavar="PATH", help="File whose first line is the password; - for stdin.")
@click.option("--first-name")
@click.option("--last-name")
def create_sysadmin_command(db_url: str, email: str, password_file: str | None, first_name: str | None,
                            last_name: str | None) -> None:
    """Create a system administrator (the first one, or another)."""
    password = _read_password(password_file)
    try:
        check_admin_password(password)
    except ValidationError as e:
        raise click.ClickException(str(e)) from None

    async def go(*, users, **_):
        return await create_sysadmin(users, email, password, first_name=first_name, last_name=last_name)

    user = _run(db_url, go)
    click.echo(f"created system administrator {user.email} ({user.id})")


@admin.command("set-password")
@_db_option
@click.option("--email", required=True, help="Login of the user.")
@click.option("--password-file", metavar="PATH", help="File whose first line is the password; - for stdin.")
def set_password_command(db_url: str, email: str, password_file: str | None) -> None:
    """Set a user's password (and lift a lockout)."""
    try:
        password = check_admin_password(_read_password(password_file))
    except ValidationError as e:
        raise click.ClickException(str(e)) from None

    async def go(*, users, **_):
        user = await users.by_email(email)
        if user is None:
            raise ValidationError(f"no user with email {email!r}")
        await users.set_password(user.id, password)
        return user

    user = _run(db_url, go)
    click.echo(f"password of {user.email} set")


@admin.command("load-demo")
@_db_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="The server's TOML settings, for store.max_devices_per_tenant "
                   "(default: $FLEETRPC_CONFIG, else ./fleetrpc.toml if present)")
def load_demo_command(db_url: str, config_path: str | None) -> None:
    """Load ThingsBoard's demo accounts and devices (public passwords!),
    within the server's store.max_devices_per_tenant."""
    from .server.demo_data import load_demo_data

    demo = _run(db_url, load_demo_data, _device_limit(config_path))
    click.echo(f"demo data: {demo.created} entities created, tenant {demo.tenant_id}")
