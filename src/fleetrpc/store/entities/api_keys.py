"""API keys (ThingsBoard 4.3's ``ApiKey``): long-lived credentials of one
user, sent as ``X-Authorization: ApiKey <value>``.

The value is made as ThingsBoard makes it (``tb_`` and 64 random bytes in
unpadded URL-safe Base64) and shown once, when the key is created.  Only
its SHA-256 is stored (``api_key.value_hash``, unique): 512 random bits
cannot be guessed, so a slow password hash (Argon2, as for passwords)
would buy nothing and cost tens of milliseconds per uncached request; a
fast hash is the standard answer for high-entropy secrets (GitHub's tokens,
RFC 6819 5.1.4.1.3).  Whoever reads the table learns no usable key.

Changes that stop a key (disabled, deleted) are told to listeners on this
node after the commit (:meth:`ApiKeyRepository.add_change_listener`; new
and enabled keys to :meth:`ApiKeyRepository.add_create_listener`'s, so that
the API, which remembers refused values (no key, a disabled or expired key)
for a few seconds, forgets them) and to
the other nodes through a PostgreSQL notification sent by the same
transaction (:meth:`ApiKeyRepository.follow_changes`); the API re-reads a
cached key every ``cluster.poll_interval_s`` anyway, which catches a lost
notification and another process's change (``api/auth.py``).
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import logging
import secrets
from collections.abc import Callable
from typing import Any

import msgspec

from ...errors import EntityNotFoundError, ValidationError
from ..db import Database, listen
from .model import NULL_UUID, check_uuid, new_id, now_ms
from .paging import ListQuery, PageData, check_paging

__all__ = ["ApiKey", "ApiKeyRepository", "VALUE_PREFIX", "hash_value", "new_value", "api_key_channel"]

log = logging.getLogger("fleetrpc.store.api_keys")

#: ThingsBoard's ``security.api_key.value_prefix`` default.
VALUE_PREFIX = "tb_"
#: ThingsBoard's ``security.api_key.value_bytes_size`` default.
VALUE_BYTES = 64
#: The longest value worth hashing (ThingsBoard caps values at 255).
MAX_VALUE = 255
#: ThingsBoard's ``@Length`` default for the description.
MAX_DESCRIPTION = 255

_COLUMNS = "id, tenant_id, user_id, created_time, expiration_time, description, enabled"
_SORT = {"createdTime": "created_time", "expirationTime": "expiration_time", "description": "description",
         "enabled": "enabled"}

#: ``fn(key_id, user_id)``: that key was disabled or deleted (or, for a
#: create listener, created or enabled).
ChangeListener = Callable[[str, str], Any]


def api_key_channel(schema: str | None) -> str:
    """The PostgreSQL channel of stopped keys (one per schema)."""
    return "fleetrpc_api_keys" if not schema else f"fleetrpc_api_keys_{schema}"[:63]


def new_value() -> str:
    """A new secret as ThingsBoard makes it (``StringUtils.generateSafeToken``)."""
    return VALUE_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(VALUE_BYTES)).rstrip(b"=").decode()


def hash_value(value: str) -> str:
    """What is stored of a value: its SHA-256, hex (see the module docstring)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class ApiKey(msgspec.Struct, kw_only=True, gc=False):
    """An API key as stored (never its value)."""

    id: str
    tenant_id: str
    user_id: str
    created_time: int
    expiration_time: int
    description: str
    enabled: bool

    def expired(self, now: int | None = None) -> bool:
        """ThingsBoard's ``isExpired``: 0 never expires."""
        return self.expiration_time != 0 and (now_ms() if now is None else now) > self.expiration_time

    def to_thingsboard(self, value: str | None = None) -> dict[str, Any]:
        """``ApiKeyInfo`` (``ApiKey`` with ``value``, once, on creation)."""
        out: dict[str, Any] = {
            "id": {"entityType": "API_KEY", "id": self.id},
            "createdTime": self.created_time,
            "tenantId": {"entityType": "TENANT", "id": self.tenant_id},
            "userId": {"entityType": "USER", "id": self.user_id},
            "expirationTime": self.expiration_time,
            "description": self.description,
            "enabled": self.enabled,
            "expired": self.expired(),
        }
        if value is not None:
            out["value"] = value
        return out


def _key(row: Any) -> ApiKey:
    return ApiKey(id=row["id"], tenant_id=row["tenant_id"], user_id=row["user_id"],
                  created_time=int(row["created_time"]), expiration_time=int(row["expiration_time"]),
                  description=row["description"], enabled=bool(row["enabled"]))


def check_description(value: object) -> str:
    """ThingsBoard's ``@NotBlank @Length`` description."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("description must not be blank")
    if len(value) > MAX_DESCRIPTION:
        raise ValidationError(f"description length must be equal or less than {MAX_DESCRIPTION}")
    if "\x00" in value:
        raise ValidationError("description must not contain the NUL character")
    return value


def check_expiration(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValidationError("expirationTime must be 0 (never) or an epoch time in milliseconds")
    return value


class ApiKeyRepository:
    """API keys of every user; the API checks who may reach which."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._listeners: list[ChangeListener] = []
        self._create_listeners: list[ChangeListener] = []

    # -- changes ----------------------------------------------------------------

    def add_change_listener(self, fn: ChangeListener) -> ChangeListener:
        """Call ``fn(key_id, user_id)`` (plain or async) after this node
        committed a change that may stop a key (disabled, deleted)."""
        self._listeners.append(fn)
        return fn

    def remove_change_listener(self, fn: ChangeListener) -> None:
        self._listeners.remove(fn)

    def add_create_listener(self, fn: ChangeListener) -> ChangeListener:
        """Call ``fn(key_id, user_id)`` (plain or async) after this node
        committed a new key or enabled one (other nodes are not told)."""
        self._create_listeners.append(fn)
        return fn

    def remove_create_listener(self, fn: ChangeListener) -> None:
        self._create_listeners.remove(fn)

    async def _changed(self, key_id: str, user_id: str, listeners: list[ChangeListener] | None = None) -> None:
        for fn in self._listeners if listeners is None else listeners:
            try:
                result = fn(key_id, user_id)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("API key listener %r failed", fn)

    async def _notify(self, conn: Any, key_id: str, user_id: str) -> None:
        if self.db.dialect == "postgresql":
            await conn.execute("SELECT pg_notify($1, $2)", api_key_channel(getattr(self.db, "schema", None)),
                               f"{key_id}:{user_id}")

    # -- reading ----------------------------------------------------------------

    async def get(self, key_id: str) -> ApiKey | None:
        row = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM api_key WHERE id = $1", check_uuid("API key id", key_id))
        return _key(row) if row is not None else None

    async def by_value(self, value: str) -> ApiKey | None:
        """The key whose value is ``value`` (looked up by its hash), or None."""
        if not isinstance(value, str) or not value or len(value) > MAX_VALUE:
            return None
        digest = hash_value(value)
        row = await self.db.fetchrow(f"SELECT {_COLUMNS}, value_hash FROM api_key WHERE value_hash = $1", digest)
        # The index found it by equality; compare again in constant time so
        # nothing downstream depends on how the backend compared.
        if row is None or not secrets.compare_digest(row["value_hash"], digest):
            return None
        return _key(row)

    async def list(self, user_id: str, page_size: int, page: int, *, text_search: str | None = None,
                   sort_property: str | None = None, sort_order: str | None = None) -> PageData:
        """One user's keys (``text_search``: in the description)."""
        page_size, page = check_paging(page_size, page)
        q = ListQuery(self.db.dialect)
        q.equals("user_id", check_uuid("user id", user_id))
        q.search(("description",), text_search)
        order = q.order_sql(sort_property, sort_order, _SORT, "createdTime", "id")
        return await q.fetch_page(self.db, "api_key", _COLUMNS, order, page_size, page, _key)

    # -- writing ----------------------------------------------------------------

    async def create(self, tenant_id: str | None, user_id: str, description: object, *,
                     expiration_time: object = 0, enabled: bool = False) -> tuple[ApiKey, str]:
        """A new key of ``user_id`` (of ``tenant_id``, the user's); returns
        it and its value, which is not kept anywhere and cannot be had again."""
        key = ApiKey(id=new_id(), tenant_id=NULL_UUID if tenant_id is None else check_uuid("tenant id", tenant_id),
                     user_id=check_uuid("user id", user_id), created_time=now_ms(),
                     expiration_time=check_expiration(expiration_time), description=check_description(description),
                     enabled=bool(enabled))
        value = new_value()
        async with self.db.transaction() as conn:
            if not await conn.fetchval("SELECT 1 FROM tb_user WHERE id = $1 AND tenant_id = $2",
                                       key.user_id, key.tenant_id):
                raise ValidationError("API key reference a non-existent user!")
            await conn.execute(
                "INSERT INTO api_key (id, tenant_id, user_id, created_time, expiration_time, description, enabled, "
                "value_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                key.id, key.tenant_id, key.user_id, key.created_time, key.expiration_time, key.description,
                key.enabled, hash_value(value))
        await self._changed(key.id, key.user_id, self._create_listeners)
        return key, value

    async def update(self, key_id: str, *, description: object = None, enabled: bool | None = None) -> ApiKey:
        """Change a key's description and/or ``enabled``; disabling stops it
        on every node, enabling tells the create listeners."""
        key_id = check_uuid("API key id", key_id)
        if description is not None:
            description = check_description(description)
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                f"UPDATE api_key SET description = COALESCE($2, description), enabled = COALESCE($3, enabled) "
                f"WHERE id = $1 RETURNING {_COLUMNS}", key_id, description, enabled)
            if row is None:
                raise EntityNotFoundError(f"API key with id [{key_id}] is not found")
            key = _key(row)
            if enabled is False:
                await self._notify(conn, key.id, key.user_id)
        if enabled is False:
            await self._changed(key.id, key.user_id)
        elif enabled:
            await self._changed(key.id, key.user_id, self._create_listeners)
        return key

    async def delete(self, key_id: str) -> None:
        key_id = check_uuid("API key id", key_id)
        async with self.db.transaction() as conn:
            user_id = await conn.fetchval("DELETE FROM api_key WHERE id = $1 RETURNING user_id", key_id)
            if user_id is None:
                raise EntityNotFoundError(f"API key with id [{key_id}] is not found")
            await self._notify(conn, key_id, user_id)
        await self._changed(key_id, user_id)

    # -- other nodes ------------------------------------------------------------

    async def follow_changes(self, on_change: ChangeListener, on_reconnect: Callable[[], Any]) -> None:
        """Run until cancelled: on PostgreSQL, call ``on_change(key_id,
        user_id)`` for the keys other nodes stop, as their transactions
        commit; ``on_reconnect()`` after (re)connecting, when notifications
        may have been missed.  Elsewhere there is only one node: return."""
        if self.db.dialect != "postgresql" or not getattr(self.db, "dsn", None):
            return

        def received(payload: str) -> None:
            key_id, _, user_id = payload.partition(":")
            on_change(key_id, user_id)

        await listen(self.db, api_key_channel(getattr(self.db, "schema", None)), received,
                     name="api-keys", on_connected=on_reconnect)
