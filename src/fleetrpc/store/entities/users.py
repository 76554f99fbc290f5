"""Users: who logs in, their passwords and the lockout bookkeeping.

Passwords are hashed with Argon2id (argon2-cffi, RFC 9106's recommended
profile as that library defaults it): memory-hard, so a stolen table is
expensive to guess through on GPUs, and without bcrypt's silent 72-byte
truncation.  Hashing takes tens of milliseconds of CPU on purpose, so it
runs in a worker thread (argon2-cffi releases the GIL), never on the event
loop: on threads of its own, one per core, so that a burst of logins never
holds the loop's default executor (which also resolves host names when the
broker connection comes back); past ``max_waiting_hashes`` checks at once
a login is refused at once (:class:`~fleetrpc.errors.BusyError`, REST 429)
instead of queueing behind seconds of others' hashing.  :meth:`UserRepository.verify` costs the same whether or not the
email exists (a dummy hash is checked for unknown emails), so timing does
not tell which accounts exist.

Lockout: the server calls :meth:`~UserRepository.record_failed_login` after
a wrong password and :meth:`~UserRepository.reset_failed_logins` after a
right one, and refuses a user while :meth:`User.is_locked`; the counting
is one atomic UPDATE, so concurrent failures are all counted.

Token revocation (ThingsBoard's TokenOutdatingService): deleting a user,
disabling it or changing its password records, in the same transaction,
"tokens issued before now are void" (``user_token_revocation``, epoch ms);
the API keeps that table in memory (``api/auth.py``).  Listeners
(:meth:`~UserRepository.add_revocation_listener`) hear this node's
revocations after the commit; other nodes hear them through a PostgreSQL
notification sent by the same transaction (:meth:`~UserRepository.follow_revocations`),
and every node also reads the table now and then, so a lost notification
or another process's change (``fleetrpc admin set-password``) is caught
up with too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ...errors import AlreadyExistsError, BusyError, EntityNotFoundError, ValidationError
from ..db import Database, listen
from .model import (
    User,
    _check_json,
    _check_text,
    check_authority,
    check_email,
    check_uuid,
    decode_json,
    encode_json,
    findable,
    new_id,
    now_ms,
    owner_id,
    NULL_UUID,
)
from .paging import ListQuery, PageData, check_paging

__all__ = ["UserRepository", "default_password_hasher", "MAX_PASSWORD", "revocation_channel"]

log = logging.getLogger("fleetrpc.store.users")

#: ``fn(user_id, valid_since_ms)``: the user's tokens issued before are void.
RevocationListener = Callable[[str, int], Any]
#: (user id, valid since in epoch ms) of each user whose tokens a transaction voided
Revoked = list[tuple[str, int]]
#: Slack for the revoking nodes' clocks when asking what was revoked since.
_CLOCK_SLACK_MS = 60_000


def revocation_channel(schema: str | None) -> str:
    """The PostgreSQL channel of token revocations (one per schema)."""
    return "fleetrpc_users" if not schema else f"fleetrpc_users_{schema}"[:63]

#: Longest password accepted (hashing cost grows with length).
MAX_PASSWORD = 1024

_USER_COLUMNS = (
    "id, tenant_id, customer_id, created_time, email, authority, first_name, last_name, phone, "
    "additional_info, enabled, password_hash IS NOT NULL AS has_password, failed_login_attempts, "
    "locked_until, last_login_time, version"
)
_SORT = {"createdTime": "created_time", "email": "email", "firstName": "first_name", "lastName": "last_name"}


#: The threads password hashes run on (made on first use, one per core:
#: Argon2 is CPU-bound and takes 64 MiB per hash, more threads only cost memory).
_hash_pool: ThreadPoolExecutor | None = None


def _hash_threads() -> ThreadPoolExecutor:
    global _hash_pool
    if _hash_pool is None:
        _hash_pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="fleetrpc-argon2")
    return _hash_pool


def default_password_hasher() -> PasswordHasher:
    """argon2-cffi's defaults (Argon2id, RFC 9106 low-memory profile)."""
    return PasswordHasher()


def _user(row: Any) -> User:
    return User(
        id=row["id"], tenant_id=row["tenant_id"], customer_id=row["customer_id"],
        created_time=row["created_time"], email=row["email"], authority=row["authority"],
        first_name=row["first_name"], last_name=row["last_name"], phone=row["phone"],
        additional_info=decode_json(row["additional_info"]), enabled=bool(row["enabled"]),
        has_password=bool(row["has_password"]), failed_login_attempts=row["failed_login_attempts"],
        locked_until=row["locked_until"], last_login_time=row["last_login_time"], version=row["version"],
    )


def _check_password(password: object) -> str:
    if not isinstance(password, str) or not password:
        raise ValidationError("Password should be specified!")
    if len(password) > MAX_PASSWORD:
        raise ValidationError(f"Password length must be at most {MAX_PASSWORD} characters")
    return password


class UserRepository:
    """Users of every authority.  ``hasher``: an argon2-cffi
    :class:`~argon2.PasswordHasher` (tests pass a cheap one)."""

    def __init__(self, db: Database, *, hasher: PasswordHasher | None = None) -> None:
        self.db = db
        self.hasher = hasher or default_password_hasher()
        self._dummy_hash: str | None = None
        self._revocation_listeners: list[RevocationListener] = []
        #: Most password hashes and checks waiting or running at once (about
        #: 50 ms of a core each: 128 is ~3 s of work on two cores); more
        #: are refused with BusyError.
        self.max_waiting_hashes = 128
        self._waiting_hashes = 0

    # -- token revocation -------------------------------------------------------

    def add_revocation_listener(self, fn: RevocationListener) -> RevocationListener:
        """Call ``fn(user_id, valid_since_ms)`` (plain or async) after this
        node committed a revocation.  A failing listener is logged."""
        self._revocation_listeners.append(fn)
        return fn

    def remove_revocation_listener(self, fn: RevocationListener) -> None:
        self._revocation_listeners.remove(fn)

    async def revoke_in(self, conn: Any, user_ids: Iterable[str]) -> Revoked:
        """Inside the caller's transaction: void the tokens of ``user_ids``
        issued before now (a later time already recorded stays), e.g. of
        users the transaction deletes or disables.  On PostgreSQL the other
        nodes are notified when the transaction commits; this node's
        listeners hear it from :meth:`announce_revoked`, which the caller
        calls with the result after the commit."""
        since = now_ms()
        revoked: Revoked = []
        channel = revocation_channel(getattr(self.db, "schema", None)) if self.db.dialect == "postgresql" else None
        for user_id in user_ids:
            await conn.execute(
                "INSERT INTO user_token_revocation (user_id, valid_since) VALUES ($1, $2) "
                "ON CONFLICT (user_id) DO UPDATE SET valid_since = CASE WHEN excluded.valid_since > "
                "user_token_revocation.valid_since THEN excluded.valid_since "
                "ELSE user_token_revocation.valid_since END",
                user_id, since,
            )
            if channel is not None:
                await conn.execute("SELECT pg_notify($1, $2)", channel, f"{user_id}:{since}")
            revoked.append((user_id, since))
        return revoked

    async def announce_revoked(self, revoked: Revoked) -> None:
        """After the commit of :meth:`revoke_in`: call this node's listeners
        (``fn(user_id, valid_since_ms)``) for each revocation, so it stops
        the tokens now rather than at its next read of the table."""
        for user_id, since in revoked:
            for fn in self._revocation_listeners:
                try:
                    result = fn(user_id, since)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("revocation listener %r failed", fn)

    async def revoke_tokens(self, user_id: str) -> int:
        """Void every token issued to ``user_id`` until now; returns that
        time (epoch ms).  The user need not exist (any more)."""
        user_id = check_uuid("user id", user_id)
        async with self.db.transaction() as conn:
            revoked = await self.revoke_in(conn, (user_id,))
        await self.announce_revoked(revoked)
        return revoked[0][1]

    async def revocations(self, since_ms: int = 0) -> dict[str, int]:
        """``{user id: valid since}`` of the revocations recorded at or
        after ``since_ms`` (epoch ms)."""
        rows = await self.db.fetch(
            "SELECT user_id, valid_since FROM user_token_revocation WHERE valid_since >= $1", int(since_ms))
        return {r["user_id"]: int(r["valid_since"]) for r in rows}

    async def purge_revocations(self, before_ms: int) -> int:
        """Forget revocations older than ``before_ms``: every token they
        void has expired by then."""
        return await self.db.execute("DELETE FROM user_token_revocation WHERE valid_since < $1", int(before_ms))

    async def follow_revocations(self, on_revoked: RevocationListener, *, poll_interval_s: float,
                                 since_ms: int) -> None:
        """Run until cancelled: call ``on_revoked(user_id, valid_since)`` for
        the revocations of every node.  On PostgreSQL a LISTEN connection
        hears them as their transactions commit; on every backend the table
        is read every ``poll_interval_s`` (from ``since_ms`` on, less a slack
        for the nodes' clocks), which catches what a notification missed
        (a reconnect, another process such as ``fleetrpc admin``)."""
        listening = None
        if self.db.dialect == "postgresql" and getattr(self.db, "dsn", None):
            listening = asyncio.ensure_future(self._listen_revocations(on_revoked))
        store_down = False
        try:
            while True:
                await asyncio.sleep(poll_interval_s)  # a period, not a synchronisation
                started = now_ms()
                try:
                    for user_id, since in (await self.revocations(since_ms - _CLOCK_SLACK_MS)).items():
                        on_revoked(user_id, since)
                    since_ms = started
                    if store_down:
                        log.info("reading token revocations again")
                        store_down = False
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    if not store_down:
                        log.warning("cannot read token revocations (%s); trying every %g s", e, poll_interval_s)
                        store_down = True
        finally:
            if listening is not None:
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)

    async def _listen_revocations(self, on_revoked: RevocationListener) -> None:
        def received(payload: str) -> None:
            user_id, _, since = payload.rpartition(":")
            on_revoked(user_id, int(since))

        async def connected() -> None:
            # What was revoked while not listening: read it now, not at the next poll.
            for user_id, since in (await self.revocations(now_ms() - 2 * _CLOCK_SLACK_MS)).items():
                on_revoked(user_id, since)

        await listen(self.db, revocation_channel(getattr(self.db, "schema", None)), received,
                     name="users", on_connected=connected)

    async def _hash(self, password: str) -> str:
        return await self._in_hash_threads(self.hasher.hash, password)

    async def _in_hash_threads(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the hashing threads, or BusyError when
        ``max_waiting_hashes`` are already waiting.  A caller cancelled
        while its hash waits takes it out of the queue."""
        if self._waiting_hashes >= self.max_waiting_hashes:
            raise BusyError("Too many logins at once: try again in a moment")
        self._waiting_hashes += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(_hash_threads(), fn, *args)
        finally:
            self._waiting_hashes -= 1

    async def create(
        self,
        tenant_id: str | None,
        customer_id: str | None,
        email: str,
        authority: str,
        first_name: str | None = None,
        last_name: str | None = None,
        password: str | None = None,
        *,
        phone: str | None = None,
        additional_info: Any = None,
        enabled: bool = True,
        id: str | None = None,
    ) -> User:
        """A new user.  SYS_ADMIN: no tenant, no customer; TENANT_ADMIN: a
        tenant that exists, no customer; CUSTOMER_USER: a customer of that
        tenant.  ``password`` None: the user cannot log in until
        :meth:`set_password`.  A taken email raises AlreadyExistsError with
        ThingsBoard's message."""
        tenant_id = owner_id("tenant id", tenant_id)
        customer_id = owner_id("customer id", customer_id)
        email = check_email(email)
        authority = check_authority(authority)
        if authority == "SYS_ADMIN" and (tenant_id != NULL_UUID or customer_id != NULL_UUID):
            raise ValidationError("A system administrator belongs to no tenant and no customer")
        if authority == "TENANT_ADMIN" and (tenant_id == NULL_UUID or customer_id != NULL_UUID):
            raise ValidationError("A tenant administrator needs a tenant and no customer")
        if authority == "CUSTOMER_USER" and (tenant_id == NULL_UUID or customer_id == NULL_UUID):
            raise ValidationError("A customer user needs a tenant and a customer")
        first_name = _check_text("firstName", first_name, required=False)
        last_name = _check_text("lastName", last_name, required=False)
        phone = _check_text("phone", phone, required=False)
        _check_json("additionalInfo", additional_info)
        password_hash = await self._hash(_check_password(password)) if password is not None else None
        user_id = check_uuid("user id", id) if id is not None else new_id()
        created = now_ms()
        try:
            async with self.db.transaction() as conn:
                if tenant_id != NULL_UUID and not await conn.fetchval("SELECT 1 FROM tenant WHERE id = $1", tenant_id):
                    raise EntityNotFoundError(f"Tenant with id [{tenant_id}] is not found")
                if customer_id != NULL_UUID and not await conn.fetchval(
                    "SELECT 1 FROM customer WHERE id = $1 AND tenant_id = $2", customer_id, tenant_id
                ):
                    raise EntityNotFoundError(f"Customer with id [{customer_id}] is not found")
                await conn.execute(
                    "INSERT INTO tb_user (id, tenant_id, customer_id, created_time, email, authority, first_name, "
                    "last_name, phone, additional_info, password_hash, enabled) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    user_id, tenant_id, customer_id, created, email, authority, first_name, last_name, phone,
                    encode_json(additional_info), password_hash, bool(enabled),
                )
        except AlreadyExistsError as e:
            raise AlreadyExistsError(f"User with email '{email}'  already present in database!") from e
        return User(
            id=user_id, tenant_id=tenant_id, customer_id=customer_id, created_time=created, email=email,
            authority=authority, first_name=first_name, last_name=last_name, phone=phone,
            additional_info=additional_info, enabled=bool(enabled), has_password=password_hash is not None,
        )

    async def update(
        self,
        user_id: str,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        phone: str | None = None,
        additional_info: Any = None,
        enabled: bool | None = None,
    ) -> User:
        """Replace a user's names, phone and additional info (and, when
        given, ``enabled``); email, authority, tenant and customer stay.
        Disabling voids the user's tokens (:meth:`set_enabled`)."""
        user_id = check_uuid("user id", user_id)
        args = (
            user_id, _check_text("firstName", first_name, required=False),
            _check_text("lastName", last_name, required=False), _check_text("phone", phone, required=False),
            encode_json(_check_json("additionalInfo", additional_info)), enabled,
        )
        return await self._update(
            "UPDATE tb_user SET first_name = $2, last_name = $3, phone = $4, additional_info = $5, "
            "enabled = COALESCE($6, enabled), version = version + 1 WHERE id = $1", args, enabled is False)

    async def set_enabled(self, user_id: str, enabled: bool) -> User:
        """Enable or disable a user (ThingsBoard's ``userCredentialsEnabled``).
        Disabling voids every token issued to it so far, in the same
        transaction; enabling again does not bring them back."""
        user_id = check_uuid("user id", user_id)
        return await self._update("UPDATE tb_user SET enabled = $2, version = version + 1 WHERE id = $1",
                                  (user_id, bool(enabled)), not enabled)

    async def _update(self, sql: str, args: tuple, disabling: bool) -> User:
        """One UPDATE of the user ``args[0]``; when it disables the user, its
        tokens are voided in the same transaction (then announced)."""
        user_id = args[0]
        async with self.db.transaction() as conn:
            n = await conn.execute(sql, *args)
            revoked = await self.revoke_in(conn, (user_id,) if n and disabling else ())
        if not n:
            raise EntityNotFoundError(f"User with id [{user_id}] is not found")
        await self.announce_revoked(revoked)
        user = await self.get(user_id)
        if user is None:  # deleted meanwhile
            raise EntityNotFoundError(f"User with id [{user_id}] is not found")
        return user

    async def get(self, user_id: str) -> User | None:
        """The user, whatever its tenant (a JWT's ``userId`` to its user);
        the API checks that the caller may see it."""
        row = await self.db.fetchrow(f"SELECT {_USER_COLUMNS} FROM tb_user WHERE id = $1",
                                     check_uuid("user id", user_id))
        return _user(row) if row is not None else None

    async def by_email(self, email: str) -> User | None:
        if not findable(email):
            return None
        row = await self.db.fetchrow(f"SELECT {_USER_COLUMNS} FROM tb_user WHERE email = $1", email.lower())
        return _user(row) if row is not None else None

    async def count(self, authority: str | None = None) -> int:
        """How many users (of one authority); e.g. whether a system
        administrator exists yet."""
        if authority is None:
            return await self.db.fetchval("SELECT count(*) FROM tb_user")
        return await self.db.fetchval("SELECT count(*) FROM tb_user WHERE authority = $1", check_authority(authority))

    async def set_password(self, user_id: str, password: str) -> None:
        """Set (or replace) a user's password; also clears a lockout and
        voids every token issued to the user so far (a first password
        has none to void)."""
        user_id = check_uuid("user id", user_id)
        password_hash = await self._hash(_check_password(password))
        async with self.db.transaction() as conn:
            n = await conn.execute(
                "UPDATE tb_user SET password_hash = $2, failed_login_attempts = 0, locked_until = 0 WHERE id = $1",
                user_id, password_hash,
            )
            revoked = await self.revoke_in(conn, (user_id,) if n else ())
        if not n:
            raise EntityNotFoundError(f"User with id [{user_id}] is not found")
        await self.announce_revoked(revoked)

    async def check_password(self, user_id: str, password: str) -> bool:
        """Whether ``password`` is the user's (False without a password or
        user); hashing runs in a worker thread."""
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return False
        stored = await self.db.fetchval("SELECT password_hash FROM tb_user WHERE id = $1",
                                        check_uuid("user id", user_id))
        if stored is None:
            return False
        return await self._in_hash_threads(self._check, stored, password)

    async def verify(self, email: str, password: str) -> User | None:
        """The user when ``password`` is theirs, else None (unknown email,
        no password set, wrong password).  Takes the same time either way.
        Says nothing about ``enabled`` or a lockout: the caller checks
        :attr:`User.enabled` and :meth:`User.is_locked` (before calling,
        so a locked account's password is not even tried).  A hash made
        with older parameters is upgraded on success."""
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return None
        row = None
        if findable(email):
            row = await self.db.fetchrow(
                f"SELECT {_USER_COLUMNS}, password_hash FROM tb_user WHERE email = $1", email.lower()
            )
        stored = row["password_hash"] if row is not None else None
        if stored is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash("fleetrpc: no such user")
            stored = self._dummy_hash
        ok = await self._in_hash_threads(self._check, stored, password)
        if not ok or row is None or row["password_hash"] is None:
            return None
        if self.hasher.check_needs_rehash(stored):
            await self.db.execute("UPDATE tb_user SET password_hash = $2 WHERE id = $1",
                                  row["id"], await self._hash(password))
        return _user(row)

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def record_failed_login(
        self, user_id: str, *, max_attempts: int, lockout_ms: int, now: int | None = None
    ) -> User:
        """Count a failed login.  The ``max_attempts``-th failure in a row
        locks the account until ``now + lockout_ms`` and starts the count
        again (``max_attempts`` 0: never lock).  Returns the user as now
        stored."""
        user_id = check_uuid("user id", user_id)
        now = now_ms() if now is None else now
        reached = "($2 > 0 AND failed_login_attempts + 1 >= $2)"
        row = await self.db.fetchrow(
            f"UPDATE tb_user SET "
            f"locked_until = CASE WHEN {reached} THEN $3 ELSE locked_until END, "
            f"failed_login_attempts = CASE WHEN {reached} THEN 0 ELSE failed_login_attempts + 1 END "
            f"WHERE id = $1 RETURNING {_USER_COLUMNS}",
            user_id, int(max_attempts), now + int(lockout_ms),
        )
        if row is None:
            raise EntityNotFoundError(f"User with id [{user_id}] is not found")
        return _user(row)

    async def reset_failed_logins(self, user_id: str, *, login_time: int | None = None) -> None:
        """A successful login: the failure count goes back to 0 and the
        login time is recorded (``lastLoginTs``)."""
        await self.db.execute(
            "UPDATE tb_user SET failed_login_attempts = 0, locked_until = 0, last_login_time = $2 WHERE id = $1",
            check_uuid("user id", user_id), now_ms() if login_time is None else login_time,
        )

    async def list(
        self,
        tenant_id: str | None,
        customer_id: str | None,
        page_size: int,
        page: int,
        *,
        authority: str | None = None,
        text_search: str | None = None,
        sort_property: str | None = None,
        sort_order: str | None = None,
    ) -> PageData:
        """Users of one tenant (``tenant_id`` None or the null UUID: the
        system administrators), of one customer when ``customer_id`` is
        given (the null UUID: the tenant's own users, not customers'), of
        one ``authority`` when given.  ``text_search`` matches
        email, first and last name."""
        page_size, page = check_paging(page_size, page)
        q = ListQuery(self.db.dialect)
        q.equals("tenant_id", owner_id("tenant id", tenant_id))
        if customer_id is not None:
            q.equals("customer_id", check_uuid("customer id", customer_id))
        if authority is not None:
            q.equals("authority", check_authority(authority))
        q.search(("email", "first_name", "last_name"), text_search)
        order = q.order_sql(sort_property, sort_order, _SORT, "createdTime", "id", unique=("email",))
        return await q.fetch_page(self.db, "tb_user", _USER_COLUMNS, order, page_size, page, _user)

    async def count_tenant_admins(self, tenant_id: str) -> int:
        """How many tenant administrators ``tenant_id`` has."""
        return await self.db.fetchval(
            "SELECT count(*) FROM tb_user WHERE tenant_id = $1 AND authority = 'TENANT_ADMIN'",
            check_uuid("tenant id", tenant_id))

    async def delete(self, user_id: str, *, tenant_id: str | None = None) -> None:
        """Delete a user (of ``tenant_id`` when given: another tenant's user
        is not found); every token issued to it is void from now on."""
        user_id = check_uuid("user id", user_id)
        async with self.db.transaction() as conn:
            if tenant_id is None:
                n = await conn.execute("DELETE FROM tb_user WHERE id = $1", user_id)
            else:
                n = await conn.execute("DELETE FROM tb_user WHERE id = $1 AND tenant_id = $2",
                                       user_id, check_uuid("tenant id", tenant_id))
            revoked = await self.revoke_in(conn, (user_id,) if n else ())
        if not n:
            raise EntityNotFoundError(f"User with id [{user_id}] is not found")
        await self.announce_revoked(revoked)
