"""Tenants and customers: the owners of everything else."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import AlreadyExistsError, EntityNotFoundError, ValidationError
from ..base import UNFINISHED_SQL
from ..db import Database
from .model import (
    CONTACT_FIELDS as _CONTACT,
    Customer,
    Tenant,
    _check_json,
    _check_text,
    check_uuid,
    decode_json,
    encode_json,
    findable,
    new_id,
    now_ms,
)
from .paging import ListQuery, PageData, check_paging
from .devices import delete_devices, unassign_devices

if TYPE_CHECKING:
    from .devices import DeviceRepository
    from .users import Revoked, UserRepository

__all__ = ["TenantRepository", "CustomerRepository"]

_TENANT_FIELDS = ("region", *_CONTACT)
_TENANT_COLUMNS = "id, created_time, title, " + ", ".join(_TENANT_FIELDS) + ", additional_info, version"
_CUSTOMER_COLUMNS = "id, tenant_id, created_time, title, " + ", ".join(_CONTACT) + ", additional_info, version"

_TITLE_SORT = {"createdTime": "created_time", "title": "title", "email": "email", "country": "country",
               "city": "city"}


def _fields(allowed: tuple[str, ...], fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(allowed) - {"additional_info"}
    if unknown:
        raise ValidationError(f"unknown fields {sorted(unknown)}; known: {', '.join(allowed)}, additional_info")
    out = {f: _check_text(f, fields.get(f), required=False) for f in allowed}
    out["additional_info"] = _check_json("additionalInfo", fields.get("additional_info"))
    return out


def _tenant(row: Any) -> Tenant:
    return Tenant(
        id=row["id"], created_time=row["created_time"], title=row["title"],
        **{f: row[f] for f in _TENANT_FIELDS},
        additional_info=decode_json(row["additional_info"]), version=row["version"],
    )


def _customer(row: Any) -> Customer:
    return Customer(
        id=row["id"], tenant_id=row["tenant_id"], created_time=row["created_time"], title=row["title"],
        **{f: row[f] for f in _CONTACT},
        additional_info=decode_json(row["additional_info"]), version=row["version"],
    )


async def _delete_users(conn: Any, users: UserRepository | None, where: str, *args: Any) -> Revoked:
    """Delete the users ``where`` says, inside the caller's transaction;
    with ``users``, each one's tokens are revoked in it too (the database's
    trigger records that as well, but tells nobody: the other nodes hear it
    at the commit, through the notification this sends).  The caller hands
    the result to ``users.announce_revoked`` after the commit."""
    rows = await conn.fetch(f"DELETE FROM tb_user WHERE {where} RETURNING id", *args)
    return await users.revoke_in(conn, [r["id"] for r in rows]) if users is not None else []


class TenantRepository:
    """Tenants.  System-administrator data: these methods take no tenant
    scope, the API lets only SYS_ADMIN reach them.

    ``devices``: the :class:`DeviceRepository` whose listeners hear about
    the devices a tenant's deletion removes (the broker must forget them);
    ``users``: the :class:`UserRepository` whose revocation listeners (and
    the other nodes) hear at once that the users it deletes are gone.
    """

    def __init__(self, db: Database, *, devices: DeviceRepository | None = None,
                 users: UserRepository | None = None) -> None:
        self.db = db
        self._devices = devices
        self._users = users

    async def create(self, title: str, *, id: str | None = None, **fields: Any) -> Tenant:
        """A new tenant.  ``fields``: region, country, state, city, address,
        address2, zip, phone, email, additional_info."""
        title = _check_text("Tenant title", title, required=True)  # type: ignore[assignment]
        values = _fields(_TENANT_FIELDS, fields)
        tenant_id = check_uuid("tenant id", id) if id is not None else new_id()
        created = now_ms()
        await self.db.execute(
            f"INSERT INTO tenant ({_TENANT_COLUMNS}) VALUES "
            f"($1, $2, $3, {', '.join(f'${i + 4}' for i in range(len(_TENANT_FIELDS)))}, "
            f"${len(_TENANT_FIELDS) + 4}, 1)",
            tenant_id, created, title, *(values[f] for f in _TENANT_FIELDS),
            encode_json(values["additional_info"]),
        )
        return Tenant(id=tenant_id, created_time=created, title=title,
                      **{f: values[f] for f in _TENANT_FIELDS}, additional_info=values["additional_info"])

    async def update(self, tenant_id: str, title: str, **fields: Any) -> Tenant:
        """Replace a tenant's title and fields (ThingsBoard's POST with an id)."""
        tenant_id = check_uuid("tenant id", tenant_id)
        title = _check_text("Tenant title", title, required=True)  # type: ignore[assignment]
        values = _fields(_TENANT_FIELDS, fields)
        sets = ", ".join(f"{f} = ${i + 3}" for i, f in enumerate(_TENANT_FIELDS))
        n = await self.db.execute(
            f"UPDATE tenant SET title = $2, {sets}, additional_info = ${len(_TENANT_FIELDS) + 3}, "
            "version = version + 1 WHERE id = $1",
            tenant_id, title, *(values[f] for f in _TENANT_FIELDS), encode_json(values["additional_info"]),
        )
        if not n:
            raise EntityNotFoundError(f"Tenant with id [{tenant_id}] is not found")
        tenant = await self.get(tenant_id)
        assert tenant is not None
        return tenant

    async def get(self, tenant_id: str) -> Tenant | None:
        row = await self.db.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenant WHERE id = $1",
                                     check_uuid("tenant id", tenant_id))
        return _tenant(row) if row is not None else None

    async def by_title(self, title: str) -> Tenant | None:
        """The oldest tenant with this title (titles need not be unique)."""
        if not findable(title):
            return None
        row = await self.db.fetchrow(
            f"SELECT {_TENANT_COLUMNS} FROM tenant WHERE title = $1 ORDER BY created_time, id LIMIT 1", title
        )
        return _tenant(row) if row is not None else None

    async def exists(self, tenant_id: str) -> bool:
        return bool(await self.db.fetchval("SELECT 1 FROM tenant WHERE id = $1", check_uuid("tenant id", tenant_id)))

    async def list(
        self,
        page_size: int,
        page: int,
        text_search: str | None = None,
        sort_property: str | None = None,
        sort_order: str | None = None,
    ) -> PageData:
        page_size, page = check_paging(page_size, page)
        q = ListQuery(self.db.dialect)
        q.search(("title",), text_search)
        order = q.order_sql(sort_property, sort_order, _TITLE_SORT, "createdTime", "id")
        return await q.fetch_page(self.db, "tenant", _TENANT_COLUMNS, order, page_size, page, _tenant)

    async def unfinished_rpc_ids(self, tenant_id: str) -> list[str]:
        """The ids of the tenant's persistent calls that can still change
        (what must be stopped, not just forgotten, before the tenant is
        deleted: the RPC engine may hold them in memory)."""
        rows = await self.db.fetch(f"SELECT id FROM rpc WHERE tenant_id = $1 AND {UNFINISHED_SQL}",
                                   check_uuid("tenant id", tenant_id))
        return [r["id"] for r in rows]

    async def delete(self, tenant_id: str) -> None:
        """Delete a tenant and everything it owns: customers, users, devices
        and their credentials, its persistent calls and its RPC settings
        (ThingsBoard's ``TenantServiceImpl.deleteTenant`` removes the same
        kinds, RPC included).  Calls still in flight should be stopped
        first (:meth:`unfinished_rpc_ids`, the engine's ``delete``): this
        only removes rows.  Fleet jobs and the Elves tables keep their rows
        (their engines own them)."""
        tenant_id = check_uuid("tenant id", tenant_id)
        async with self.db.transaction() as conn:
            if not await conn.fetchval("SELECT 1 FROM tenant WHERE id = $1", tenant_id):
                raise EntityNotFoundError(f"Tenant with id [{tenant_id}] is not found")
            removed = await delete_devices(conn, tenant_id)
            revoked = await _delete_users(conn, self._users, "tenant_id = $1", tenant_id)
            await conn.execute("DELETE FROM customer WHERE tenant_id = $1", tenant_id)
            await conn.execute("DELETE FROM rpc WHERE tenant_id = $1", tenant_id)
            await conn.execute("DELETE FROM tenant_settings WHERE tenant_id = $1", tenant_id)
            await conn.execute("DELETE FROM tenant WHERE id = $1", tenant_id)
        if self._users is not None:
            await self._users.announce_revoked(revoked)
        if self._devices is not None and removed:
            await self._devices.announce_deleted(removed)


class CustomerRepository:
    """A tenant's customers; every method is scoped by ``tenant_id``.

    ``devices``: the :class:`DeviceRepository` whose listeners hear about
    the devices a customer's deletion leaves unassigned (the RPC path's
    device cache and the console's event hub must not keep the old owner);
    ``users``: the :class:`UserRepository` whose revocation listeners (and
    the other nodes) hear at once that the customer's users are gone.
    """

    def __init__(self, db: Database, *, devices: DeviceRepository | None = None,
                 users: UserRepository | None = None) -> None:
        self.db = db
        self._devices = devices
        self._users = users

    async def create(self, tenant_id: str, title: str, *, id: str | None = None, **fields: Any) -> Customer:
        """A new customer of ``tenant_id`` (which must exist).  ``fields``:
        country, state, city, address, address2, zip, phone, email,
        additional_info.  A title taken in that tenant raises
        AlreadyExistsError("Customer with such title already exists!")."""
        tenant_id = check_uuid("tenant id", tenant_id)
        title = _check_text("Customer title", title, required=True)  # type: ignore[assignment]
        values = _fields(_CONTACT, fields)
        customer_id = check_uuid("customer id", id) if id is not None else new_id()
        created = now_ms()
        try:
            async with self.db.transaction() as conn:
                if not await conn.fetchval("SELECT 1 FROM tenant WHERE id = $1", tenant_id):
                    raise EntityNotFoundError(f"Tenant with id [{tenant_id}] is not found")
                await conn.execute(
                    f"INSERT INTO customer ({_CUSTOMER_COLUMNS}) VALUES ($1, $2, $3, $4, "
                    f"{', '.join(f'${i + 5}' for i in range(len(_CONTACT)))}, ${len(_CONTACT) + 5}, 1)",
                    customer_id, tenant_id, created, title, *(values[f] for f in _CONTACT),
                    encode_json(values["additional_info"]),
                )
        except AlreadyExistsError as e:
            raise AlreadyExistsError("Customer with such title already exists!") from e
        return Customer(id=customer_id, tenant_id=tenant_id, created_time=created, title=title,
                        **{f: values[f] for f in _CONTACT}, additional_info=values["additional_info"])

    async def update(self, tenant_id: str, customer_id: str, title: str, **fields: Any) -> Customer:
        tenant_id = check_uuid("tenant id", tenant_id)
        customer_id = check_uuid("customer id", customer_id)
        title = _check_text("Customer title", title, required=True)  # type: ignore[assignment]
        values = _fields(_CONTACT, fields)
        sets = ", ".join(f"{f} = ${i + 4}" for i, f in enumerate(_CONTACT))
        try:
            n = await self.db.execute(
                f"UPDATE customer SET title = $3, {sets}, additional_info = ${len(_CONTACT) + 4}, "
                "version = version + 1 WHERE id = $1 AND tenant_id = $2",
                customer_id, tenant_id, title, *(values[f] for f in _CONTACT),
                encode_json(values["additional_info"]),
            )
        except AlreadyExistsError as e:
            raise AlreadyExistsError("Customer with such title already exists!") from e
        if not n:
            raise EntityNotFoundError(f"Customer with id [{customer_id}] is not found")
        customer = await self.get(tenant_id, customer_id)
        assert customer is not None
        return customer

    async def get(self, tenant_id: str, customer_id: str) -> Customer | None:
        """The customer, or None when it does not exist in ``tenant_id``."""
        row = await self.db.fetchrow(
            f"SELECT {_CUSTOMER_COLUMNS} FROM customer WHERE id = $1 AND tenant_id = $2",
            check_uuid("customer id", customer_id), check_uuid("tenant id", tenant_id),
        )
        return _customer(row) if row is not None else None

    async def by_title(self, tenant_id: str, title: str) -> Customer | None:
        if not findable(title):
            return None
        row = await self.db.fetchrow(
            f"SELECT {_CUSTOMER_COLUMNS} FROM customer WHERE tenant_id = $1 AND title = $2",
            check_uuid("tenant id", tenant_id), title,
        )
        return _customer(row) if row is not None else None

    async def list(
        self,
        tenant_id: str,
        page_size: int,
        page: int,
        text_search: str | None = None,
        sort_property: str | None = None,
        sort_order: str | None = None,
    ) -> PageData:
        page_size, page = check_paging(page_size, page)
        q = ListQuery(self.db.dialect)
        q.equals("tenant_id", check_uuid("tenant id", tenant_id))
        q.search(("title",), text_search)
        order = q.order_sql(sort_property, sort_order, _TITLE_SORT, "createdTime", "id", unique=("title",))
        return await q.fetch_page(self.db, "customer", _CUSTOMER_COLUMNS, order, page_size, page, _customer)

    async def delete(self, tenant_id: str, customer_id: str) -> None:
        """Delete a customer and its users (their tokens void at once with
        ``users``); its devices stay with the tenant, unassigned
        (ThingsBoard does the same), each announced to the device listeners
        as "assigned" after the commit."""
        tenant_id = check_uuid("tenant id", tenant_id)
        customer_id = check_uuid("customer id", customer_id)
        async with self.db.transaction() as conn:
            if not await conn.execute("DELETE FROM customer WHERE id = $1 AND tenant_id = $2", customer_id, tenant_id):
                raise EntityNotFoundError(f"Customer with id [{customer_id}] is not found")
            unassigned = await unassign_devices(conn, tenant_id, customer_id)
            revoked = await _delete_users(conn, self._users, "tenant_id = $1 AND customer_id = $2",
                                          tenant_id, customer_id)
        if self._users is not None:
            await self._users.announce_revoked(revoked)
        if self._devices is not None and unassigned:
            await self._devices.announce_assigned(unassigned)
