"""Devices and their access-token credentials.

Every method that reaches a tenant's devices takes ``tenant_id``, and a
device of another tenant is "not found" (None, or EntityNotFoundError for a
change).  Three methods are server-internal and take no tenant, because
what they start from is not scoped by one: :meth:`~DeviceRepository.get_by_id`
(a device id from an MQTT topic), :meth:`~DeviceRepository.by_token` (a
token a device presents to the broker) and
:meth:`~DeviceRepository.all_credentials` (the broker's full resync).

Listeners (:meth:`~DeviceRepository.add_listener`) hear about every device
created, re-tokened, updated (renamed...), assigned to a customer or
unassigned (one by one, or all of a customer's when it is deleted) or
deleted, after the change is committed; the broker provisioning
(``fleetrpc.broker_auth``), the API's cache of the devices it checks calls
against (``api/thingsboard/access.py``) and the console's event hub (which
customer sees a device's events) stand on them.

On PostgreSQL several nodes may share the database; each change is also
announced to the other nodes by a notification on :func:`device_channel`
(sent after the commit, by the node that made the change), and
:meth:`~DeviceRepository.follow_other_nodes` hands those to the listeners
that asked for them (``add_listener(fn, other_nodes=True)``): pure caches
(the endpoint's token directory, the API's device cache, the console hub's
owners, the registered-device ids), never a listener with side effects
that must happen once (the broker provisioning acts on the shared broker,
done by the node of the change).  A node ignores its own notifications
(:attr:`DeviceRepository.origin`, one per
:class:`~fleetrpc.store.db.Database` handle).  A notification missed (the
LISTEN connection lost, a node that crashed between its commit and its
notification) is not replayed: each cache's own expiry stays the bound of
how long it can be wrong.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import Any, Literal

import msgspec

from ...errors import AlreadyExistsError, EntitiesLimitExceededError, EntityNotFoundError, ValidationError
from ..db import Database, listen, placeholders
from .model import (
    Device,
    DeviceCredentials,
    _check_json,
    _check_text,
    check_token,
    check_uuid,
    decode_json,
    findable,
    encode_json,
    new_access_token,
    new_id,
    now_ms,
    owner_id,
    NULL_UUID,
)
from .paging import ListQuery, PageData, check_paging

__all__ = ["DeviceRepository", "DeviceChange", "DEVICE_NAME_TAKEN", "TOKEN_TAKEN", "device_channel"]

log = logging.getLogger("fleetrpc.store.devices")

#: ThingsBoard's messages for the two unique keys.
DEVICE_NAME_TAKEN = "Device with such name already exists!"
TOKEN_TAKEN = "Device credentials are already assigned to another device!"

_DEVICE_COLUMNS = (
    "d.id, d.tenant_id, d.customer_id, d.created_time, d.name, d.type, d.label, d.additional_info, "
    "d.version, d.last_activity_time"
)
_CREDENTIALS_COLUMNS = "c.id, c.device_id, c.created_time, c.credentials_type, c.credentials_id, c.version"
_SORT = {
    "createdTime": "d.created_time",
    "name": "d.name",
    "type": "d.type",
    # Profiles are named after types here.
    "deviceProfileName": "d.type",
    "label": "d.label",
    "customerTitle": "cu.title",
}


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: "Leave as it is" for :meth:`DeviceRepository.update`.
UNSET: Any = _Unset()


class DeviceChange(msgspec.Struct, frozen=True):
    """What a listener hears: ``kind`` "created", "credentials" (the token
    changed), "updated" (its name, type, label or additional info: what
    :meth:`DeviceRepository.update` changes), "assigned" (its customer
    changed, unassigned included) or "deleted"; ``token`` is the current
    token (None when deleted, and for "updated" and "assigned": unchanged,
    not read), ``old_token`` the one it replaced or that was deleted."""

    kind: Literal["created", "credentials", "updated", "assigned", "deleted"]
    device: Device
    token: str | None
    old_token: str | None = None
    #: Made on another node (heard through PostgreSQL, see the module
    #: docstring).  Then ``device`` is a sketch: only ``id``, ``tenant_id``
    #: and ``customer_id`` are the device's (its name, type... are not sent;
    #: a listener that needs them reads the device by id).
    remote: bool = False


Listener = Callable[[list[DeviceChange]], Any]

_KINDS = ("created", "credentials", "updated", "assigned", "deleted")

#: Largest notification payload sent (PostgreSQL refuses more than 8000
#: bytes); a batch of changes (a tenant's devices deleted) is split.
_MAX_PAYLOAD = 7000


#: One origin per Database handle, i.e. per node (a process's pool): every
#: repository on it ignores what any of them sent.  (A second repository on
#: the same handle is no other node; tests use one to stand for a node whose
#: notifications this one missed.)
_ORIGINS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _origin(db: Any) -> str:
    try:
        return _ORIGINS.setdefault(db, secrets.token_hex(8))
    except TypeError:  # not weakly referable: an origin of its own
        return secrets.token_hex(8)


def device_channel(schema: str | None) -> str:
    """The PostgreSQL channel of device changes (one per schema)."""
    return "fleetrpc_devices" if not schema else f"fleetrpc_devices_{schema}"[:63]


def _encode_changes(origin: str, changes: list[DeviceChange]) -> list[str]:
    """The notification payloads announcing ``changes``: JSON
    ``{"o": origin, "c": [[kind, device id, tenant id, customer id, token,
    old token], ...]}``, as many as needed to stay under _MAX_PAYLOAD.

    The tokens are sent (not only the device id) because the endpoint's
    directory is keyed by token: a token created or replaced elsewhere may
    sit in its cache as *unknown*, and only the token itself names that
    entry (a device -> tokens index could not).  Sending them exposes
    nothing new: they are stored in clear in ``device_credentials`` of this
    same database (as ThingsBoard stores them), a notification reaches only
    sessions of that database that LISTEN, and PostgreSQL logs a payload
    only where it also logs every statement's parameters -- the credentials'
    INSERT/UPDATE with the token among them."""
    head = f'{{"o":{msgspec.json.encode(origin).decode()},"c":['
    out: list[str] = []
    items: list[str] = []
    size = len(head)
    for c in changes:
        d = c.device
        item = msgspec.json.encode([c.kind, d.id, d.tenant_id, d.customer_id, c.token, c.old_token]).decode()
        if items and size + len(item.encode()) + 1 > _MAX_PAYLOAD:
            out.append(head + ",".join(items) + "]}")
            items, size = [], len(head)
        items.append(item)
        size += len(item.encode()) + 1
    if items:
        out.append(head + ",".join(items) + "]}")
    return out


def _decode_changes(payload: str) -> tuple[str, list[DeviceChange]]:
    """(origin, changes) of a payload of :func:`_encode_changes`; the
    devices are sketches (see :attr:`DeviceChange.remote`)."""
    data = _decode_payload(payload)  # (its types checked: raises msgspec.DecodeError)
    changes = []
    for kind, device_id, tenant_id, customer_id, token, old_token in data.c:
        if kind not in _KINDS:
            continue
        device = Device(id=device_id, tenant_id=tenant_id, customer_id=customer_id or NULL_UUID,
                        created_time=0, name="")
        changes.append(DeviceChange(kind, device, token, old_token, remote=True))
    return data.o, changes


class _Payload(msgspec.Struct):
    o: str
    c: list[tuple[str, str, str, str | None, str | None, str | None]]


_decode_payload = msgspec.json.Decoder(_Payload).decode


def _device(row: Any) -> Device:
    return Device(
        id=row["id"], tenant_id=row["tenant_id"], customer_id=row["customer_id"],
        created_time=row["created_time"], name=row["name"], type=row["type"], label=row["label"],
        additional_info=decode_json(row["additional_info"]), version=row["version"],
        last_activity_time=row["last_activity_time"],
    )


def _credentials(row: Any) -> DeviceCredentials:
    return DeviceCredentials(
        id=row["id"], device_id=row["device_id"], created_time=row["created_time"],
        credentials_type=row["credentials_type"], credentials_id=row["credentials_id"], version=row["version"],
    )


def _check_name(name: object) -> str:
    out = _check_text("Device name", name, required=True)
    assert out is not None
    return out


def _check_type(type_: object) -> str:
    out = _check_text("Device type", type_, required=False)
    return out if out else "default"


async def delete_devices(conn: Any, tenant_id: str, device_id: str | None = None) -> list[tuple[Device, str | None]]:
    """Delete a tenant's devices (or one of them) with their credentials,
    inside the caller's transaction; returns each (device, token) removed."""
    one, one_d, args = "", "", [tenant_id]
    if device_id is not None:
        one, one_d, args = " AND id = $2", " AND d.id = $2", [tenant_id, device_id]
    rows = await conn.fetch(
        f"SELECT {_DEVICE_COLUMNS}, c.credentials_id AS token FROM device d "
        f"LEFT JOIN device_credentials c ON c.device_id = d.id WHERE d.tenant_id = $1{one_d}",
        *args,
    )
    if rows:
        await conn.execute(
            f"DELETE FROM device_credentials WHERE device_id IN (SELECT id FROM device WHERE tenant_id = $1{one})",
            *args,
        )
        await conn.execute(f"DELETE FROM device WHERE tenant_id = $1{one}", *args)
    return [(_device(r), r["token"]) for r in rows]


async def unassign_devices(conn: Any, tenant_id: str, customer_id: str) -> list[Device]:
    """Leave every device of a customer with its tenant, unassigned, inside
    the caller's transaction; returns the devices as they are now (for
    the "assigned" changes the caller announces after the commit)."""
    rows = await conn.fetch(
        "UPDATE device SET customer_id = $3, version = version + 1 WHERE tenant_id = $1 AND customer_id = $2 "
        f"RETURNING {_DEVICE_COLUMNS.replace('d.', '')}",
        tenant_id, customer_id, NULL_UUID,
    )
    return [_device(r) for r in rows]


class DeviceRepository:
    """A tenant's devices and their access tokens.

    ``max_devices_per_tenant``: most devices one tenant may have (0: no
    limit, as ThingsBoard's default tenant profile's ``maxDevices``).
    :meth:`create` is where every device is made (the REST API, a gateway's
    announcement, the demo data), so the limit holds whatever the path."""

    def __init__(self, db: Database, *, max_devices_per_tenant: int = 0) -> None:
        if type(max_devices_per_tenant) is not int or max_devices_per_tenant < 0:
            raise ValueError(f"max_devices_per_tenant must be an int >= 0, not {max_devices_per_tenant!r}")
        self.db = db
        self.max_devices_per_tenant = max_devices_per_tenant
        self._listeners: list[Listener] = []
        #: those of _listeners also told other nodes' changes
        self._other_nodes: list[Listener] = []
        #: this node's mark on the notifications it sends (it ignores them
        #: when they come back: its listeners heard the change already)
        self.origin = _origin(db)
        #: other nodes' batches of changes heard (tests, diagnostics)
        self.heard = 0
        self._pending: set[asyncio.Future] = set()

    # -- listeners -------------------------------------------------------------

    def add_listener(self, fn: Listener, *, other_nodes: bool = False) -> Listener:
        """Call ``fn(changes)`` (plain or async; awaited) after every
        committed change of devices or tokens.  A failing listener is
        logged, never undoes the change nor fails the caller: the database
        is the truth, and listeners resync from it (``all_credentials``).

        ``other_nodes``: also call it with the changes other nodes sharing
        the PostgreSQL database announce (:meth:`follow_other_nodes`;
        ``DeviceChange.remote`` is then true and the device a sketch).  For
        pure caches only: a listener that acts on something shared (the
        broker's accounts) must run once, on the node of the change."""
        self._listeners.append(fn)
        if other_nodes:
            self._other_nodes.append(fn)
        return fn

    def remove_listener(self, fn: Listener) -> None:
        self._listeners.remove(fn)
        if fn in self._other_nodes:
            self._other_nodes.remove(fn)

    async def _notify(self, changes: list[DeviceChange]) -> None:
        await self._announce(changes)
        for fn in self._listeners:
            try:
                result = fn(changes)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("device listener %r failed on %d changes", fn, len(changes))

    async def _announce(self, changes: list[DeviceChange]) -> None:
        """Tell the other nodes (PostgreSQL), after the commit.  A failure
        is logged: their caches expire anyway (see the module docstring)."""
        if self.db.dialect != "postgresql":
            return
        try:
            await self.db.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                                  device_channel(getattr(self.db, "schema", None)),
                                  _encode_changes(self.origin, changes))
        except Exception as e:
            log.warning("could not announce %d device changes to the other nodes: %s", len(changes), e)

    def _heard(self, payload: str) -> None:
        """A notification: another node's changes, to the listeners that
        asked for them (in order; an async one runs as a task)."""
        try:
            origin, changes = _decode_changes(payload)
        except msgspec.DecodeError:
            # (not logged whole: a payload carries access tokens)
            log.warning("ignored a device-change notification that is not one (%d bytes)", len(payload))
            return
        if origin == self.origin or not changes:
            return
        self.heard += 1
        for fn in list(self._other_nodes):
            try:
                result = fn(changes)
                if inspect.isawaitable(result):
                    fut = asyncio.ensure_future(result)
                    self._pending.add(fut)
                    fut.add_done_callback(self._done)
            except Exception:
                log.exception("device listener %r failed on %d changes of another node", fn, len(changes))

    def _done(self, fut: asyncio.Future) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("device listener failed on changes of another node", exc_info=fut.exception())

    async def follow_other_nodes(self) -> None:
        """Run until cancelled: on PostgreSQL, hand the changes other nodes
        announce to the listeners added with ``other_nodes=True``.  What is
        missed while the connection is down is not replayed (the caches'
        expiry is the bound).  Elsewhere there is only one node: return."""
        if self.db.dialect != "postgresql" or not getattr(self.db, "dsn", None):
            return
        await listen(self.db, device_channel(getattr(self.db, "schema", None)), self._heard, name="devices")

    async def announce_deleted(self, removed: Iterable[tuple[Device, str | None]]) -> None:
        """After the commit of a caller's transaction that deleted devices
        (:func:`delete_devices`, e.g. with their tenant): tell the listeners
        of this node and the others, as :meth:`delete` does."""
        changes = [DeviceChange("deleted", device, None, token) for device, token in removed]
        if changes:
            await self._notify(changes)

    async def announce_assigned(self, devices: Iterable[Device]) -> None:
        """After the commit of a caller's transaction that changed devices'
        customer (:func:`unassign_devices`, e.g. with their customer)."""
        changes = [DeviceChange("assigned", device, None) for device in devices]
        if changes:
            await self._notify(changes)

    # -- create, read ----------------------------------------------------------

    async def create(
        self,
        tenant_id: str,
        name: str,
        type: str = "default",
        label: str | None = None,
        customer_id: str | None = None,
        access_token: str | None = None,
        additional_info: Any = None,
        *,
        id: str | None = None,
    ) -> Device:
        """A new device of ``tenant_id`` (which must exist) with an
        access-token credential: ``access_token``, or a random one.  A name
        taken in the tenant raises AlreadyExistsError(DEVICE_NAME_TAKEN); a
        token taken by any device, AlreadyExistsError(TOKEN_TAKEN); a
        ``customer_id`` not of this tenant, EntityNotFoundError; a tenant
        that has ``max_devices_per_tenant`` devices already,
        EntitiesLimitExceededError (ThingsBoard's DeviceDataValidator checks
        the count likewise before it saves a new device)."""
        tenant_id = check_uuid("tenant id", tenant_id)
        customer_id = owner_id("customer id", customer_id)
        name = _check_name(name)
        type_ = _check_type(type)
        label = _check_text("Device label", label, required=False)
        _check_json("additionalInfo", additional_info)
        token = check_token(access_token) if access_token is not None else new_access_token()
        device_id = check_uuid("device id", id) if id is not None else new_id()
        created = now_ms()
        step = DEVICE_NAME_TAKEN
        limit = self.max_devices_per_tenant
        # With a limit, creates in one tenant take turns: on PostgreSQL the
        # tenant's row is locked until the commit (NO KEY UPDATE: against
        # each other only), so each counts the devices of the creates before
        # it (READ COMMITTED: a statement sees what committed before it
        # began) and two cannot both take the last place.  SQLite has one
        # writer at a time (BEGIN IMMEDIATE) already.
        lock = " FOR NO KEY UPDATE" if limit and self.db.dialect == "postgresql" else ""
        try:
            async with self.db.transaction() as conn:
                if not await conn.fetchval(f"SELECT 1 FROM tenant WHERE id = $1{lock}", tenant_id):
                    raise EntityNotFoundError(f"Tenant with id [{tenant_id}] is not found")
                if limit and await conn.fetchval(
                    "SELECT count(*) FROM device WHERE tenant_id = $1", tenant_id
                ) >= limit:
                    raise EntitiesLimitExceededError("DEVICE", limit)
                if customer_id != NULL_UUID and not await conn.fetchval(
                    "SELECT 1 FROM customer WHERE id = $1 AND tenant_id = $2", customer_id, tenant_id
                ):
                    raise EntityNotFoundError(f"Customer with id [{customer_id}] is not found")
                await conn.execute(
                    "INSERT INTO device (id, tenant_id, customer_id, created_time, name, type, label, "
                    "additional_info, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1)",
                    device_id, tenant_id, customer_id, created, name, type_, label, encode_json(additional_info),
                )
                step = TOKEN_TAKEN
                await conn.execute(
                    "INSERT INTO device_credentials (id, device_id, created_time, credentials_type, "
                    "credentials_id, version) VALUES ($1, $2, $3, 'ACCESS_TOKEN', $4, 1)",
                    new_id(), device_id, created, token,
                )
        except AlreadyExistsError as e:
            raise AlreadyExistsError(step) from e
        device = Device(id=device_id, tenant_id=tenant_id, customer_id=customer_id, created_time=created,
                        name=name, type=type_, label=label, additional_info=additional_info)
        await self._notify([DeviceChange("created", device, token)])
        return device

    async def get(self, tenant_id: str, device_id: str) -> Device | None:
        """The device, or None when ``tenant_id`` has no such device."""
        row = await self.db.fetchrow(
            f"SELECT {_DEVICE_COLUMNS} FROM device d WHERE d.id = $1 AND d.tenant_id = $2",
            check_uuid("device id", device_id), check_uuid("tenant id", tenant_id),
        )
        return _device(row) if row is not None else None

    async def by_name(self, tenant_id: str, name: str) -> Device | None:
        if not findable(name):
            return None
        row = await self.db.fetchrow(
            f"SELECT {_DEVICE_COLUMNS} FROM device d WHERE d.tenant_id = $1 AND d.name = $2",
            check_uuid("tenant id", tenant_id), name,
        )
        return _device(row) if row is not None else None

    async def get_by_id(self, device_id: str) -> Device | None:
        """Server-internal: the device with this id, whatever its tenant
        (a device id seen on the MQTT wire to its device and tenant).
        Returns None for an id that is not a UUID."""
        if not isinstance(device_id, str):
            return None
        try:
            device_id = check_uuid("device id", device_id)
        except ValidationError:
            return None
        row = await self.db.fetchrow(f"SELECT {_DEVICE_COLUMNS} FROM device d WHERE d.id = $1", device_id)
        return _device(row) if row is not None else None

    async def by_token(self, token: str) -> Device | None:
        """Server-internal: the device whose access token is ``token``
        (what the broker hooks check), or None."""
        if not findable(token) or not token or len(token) > 255:
            return None
        row = await self.db.fetchrow(
            f"SELECT {_DEVICE_COLUMNS} FROM device_credentials c JOIN device d ON d.id = c.device_id "
            "WHERE c.credentials_id = $1", token,
        )
        return _device(row) if row is not None else None

    async def by_tokens(self, tokens: Iterable[str], chunk: int = 500) -> dict[str, Device]:
        """Server-internal: :meth:`by_token` for many tokens, ``chunk`` per
        query (a connection storm: one query for hundreds of devices);
        ``{token: device}`` for the tokens that have one."""
        valid = [t for t in dict.fromkeys(tokens) if findable(t) and t and len(t) <= 255]
        found: dict[str, Device] = {}
        for i in range(0, len(valid), chunk):
            part = valid[i:i + chunk]
            rows = await self.db.fetch(
                f"SELECT {_DEVICE_COLUMNS}, c.credentials_id AS token FROM device_credentials c "
                f"JOIN device d ON d.id = c.device_id WHERE c.credentials_id IN ({placeholders(1, len(part))})",
                *part,
            )
            for r in rows:
                found[r["token"]] = _device(r)
        return found

    async def names(self, tenant_id: str, device_ids: Iterable[str], chunk: int = 1000) -> dict[str, str]:
        """``{device id: name}`` for the ids that are devices of the tenant
        (a page of a job's rows names its devices in one query per
        ``chunk``; ids of deleted devices, or not UUIDs, are left out)."""
        tenant_id = check_uuid("tenant id", tenant_id)
        valid = []
        for device_id in dict.fromkeys(device_ids):
            try:
                valid.append(check_uuid("device id", device_id))
            except ValidationError:
                pass  # a library job's free-form id: no device of the registry
        found: dict[str, str] = {}
        for k in range(0, len(valid), chunk):
            part = valid[k:k + chunk]
            rows = await self.db.fetch(
                f"SELECT d.id, d.name FROM device d WHERE d.tenant_id = $1 AND d.id IN ({placeholders(2, len(part))})",
                tenant_id, *part,
            )
            found.update((r["id"], r["name"]) for r in rows)
        return found

    async def list(
        self,
        tenant_id: str,
        page_size: int,
        page: int,
        customer_id: str | None = None,
        type: str | None = None,
        text_search: str | None = None,
        sort_property: str | None = None,
        sort_order: str | None = None,
        *,
        among: Collection[str] | None = None,
        not_among: Collection[str] | None = None,
    ) -> PageData:
        """One page of a tenant's devices (of one customer, of one type;
        ``customer_id`` None: every device of the tenant, :data:`NULL_UUID`:
        the unassigned ones, as ThingsBoard stores them).
        ``text_search``: a case-insensitive substring of the name or label.
        ``sort_property``: createdTime (default), name, type,
        deviceProfileName (= type), label, customerTitle.
        ``among`` / ``not_among``: only the devices whose id is (is not) in
        that set, counted and paged in SQL (DeviceInfo's ``active`` filter:
        the ids online now, which only the server's memory knows); one
        parameter whatever the set's size."""
        page_size, page = check_paging(page_size, page)
        q = ListQuery(self.db.dialect)
        q.equals("d.tenant_id", check_uuid("tenant id", tenant_id))
        if customer_id is not None:
            q.equals("d.customer_id", check_uuid("customer id", customer_id))
        if type is not None and type != "":
            q.equals("d.type", _check_type(type))
        if among is not None:
            q.where.append(self._id_in(q, among, negate=False))
        if not_among is not None:
            q.where.append(self._id_in(q, not_among, negate=True))
        q.search(("d.name", "d.label"), text_search)
        order = q.order_sql(sort_property, sort_order, _SORT, "createdTime", "d.id", unique=("name",))
        join = (" LEFT JOIN customer cu ON cu.id = d.customer_id AND cu.tenant_id = d.tenant_id"
                if "cu." in order else "")
        return await q.fetch_page(self.db, "device d", _DEVICE_COLUMNS, order, page_size, page, _device, join)

    def _id_in(self, q: ListQuery, ids: Collection[str], *, negate: bool) -> str:
        """``d.id [NOT] IN <ids>`` with the set bound as one parameter (an
        array on PostgreSQL, JSON text on SQLite): no limit on its size,
        and one statement text whatever it is, so it stays cached."""
        values = [i for i in ids if isinstance(i, str) and findable(i)]
        not_ = "NOT " if negate else ""
        if self.db.dialect == "postgresql":
            return f"d.id {not_}IN (SELECT unnest({q.arg(values)}::text[]))"
        return f"d.id {not_}IN (SELECT value FROM json_each({q.arg(encode_json(values))}))"

    async def types(self, tenant_id: str) -> list[str]:
        """The distinct types of the tenant's devices, sorted (ThingsBoard's
        ``GET /api/device/types``: the profiles its devices use; profiles
        are named after types here)."""
        rows = await self.db.fetch("SELECT DISTINCT type FROM device WHERE tenant_id = $1",
                                   check_uuid("tenant id", tenant_id))
        return sorted(r["type"] for r in rows)

    async def by_ids(self, tenant_id: str, device_ids: Iterable[str], *, customer_id: str | None = None,
                     chunk: int = 500) -> list[Device]:
        """The devices of the tenant (of one customer when ``customer_id``
        is given) among ``device_ids``, in the order asked, each once; ids
        of other tenants' devices, unknown ids and ids that are not UUIDs
        are left out (ThingsBoard's ``GET /api/devices?deviceIds=``)."""
        tenant_id = check_uuid("tenant id", tenant_id)
        extra, args = "", [tenant_id]
        if customer_id is not None:
            extra, args = " AND d.customer_id = $2", [tenant_id, check_uuid("customer id", customer_id)]
        valid = []
        for device_id in dict.fromkeys(device_ids):
            try:
                valid.append(check_uuid("device id", device_id))
            except ValidationError:
                pass
        found: dict[str, Device] = {}
        for k in range(0, len(valid), chunk):
            part = valid[k:k + chunk]
            rows = await self.db.fetch(
                f"SELECT {_DEVICE_COLUMNS} FROM device d WHERE d.tenant_id = $1{extra} "
                f"AND d.id IN ({placeholders(len(args) + 1, len(part))})", *args, *part,
            )
            found.update((r["id"], _device(r)) for r in rows)
        return [found[i] for i in valid if i in found]

    async def count(self, tenant_id: str, customer_id: str | None = None) -> int:
        """How many devices the tenant (or one customer of it; the null UUID:
        unassigned) has: one index-only count."""
        if customer_id is None:
            return await self.db.fetchval("SELECT count(*) FROM device WHERE tenant_id = $1",
                                          check_uuid("tenant id", tenant_id))
        return await self.db.fetchval(
            "SELECT count(*) FROM device WHERE tenant_id = $1 AND customer_id = $2",
            check_uuid("tenant id", tenant_id), check_uuid("customer id", customer_id),
        )

    # -- change ----------------------------------------------------------------

    async def update(
        self,
        tenant_id: str,
        device_id: str,
        *,
        name: str | Any = UNSET,
        type: str | Any = UNSET,
        label: str | None | Any = UNSET,
        additional_info: Any = UNSET,
    ) -> Device:
        """Change a device's name, type, label or additional info (those
        given); the version goes up by one.  A name taken in the tenant
        raises AlreadyExistsError(DEVICE_NAME_TAKEN)."""
        tenant_id = check_uuid("tenant id", tenant_id)
        device_id = check_uuid("device id", device_id)
        sets: list[str] = []
        args: list[Any] = [device_id, tenant_id]

        def put(column: str, value: Any) -> None:
            args.append(value)
            sets.append(f"{column} = ${len(args)}")

        if name is not UNSET:
            put("name", _check_name(name))
        if type is not UNSET:
            put("type", _check_type(type))
        if label is not UNSET:
            put("label", _check_text("Device label", label, required=False))
        if additional_info is not UNSET:
            put("additional_info", encode_json(_check_json("additionalInfo", additional_info)))
        sets.append("version = version + 1")
        try:
            n = await self.db.execute(
                f"UPDATE device SET {', '.join(sets)} WHERE id = $1 AND tenant_id = $2", *args
            )
        except AlreadyExistsError as e:
            raise AlreadyExistsError(DEVICE_NAME_TAKEN) from e
        if not n:
            raise EntityNotFoundError(f"Device with id [{device_id}] is not found")
        device = await self.get(tenant_id, device_id)
        assert device is not None
        await self._notify([DeviceChange("updated", device, None)])
        return device

    async def assign(self, tenant_id: str, device_id: str, customer_id: str | None) -> Device:
        """Assign the device to a customer of the same tenant, or unassign
        it (``customer_id`` None or the null UUID)."""
        tenant_id = check_uuid("tenant id", tenant_id)
        device_id = check_uuid("device id", device_id)
        customer_id = owner_id("customer id", customer_id)
        async with self.db.transaction() as conn:
            if customer_id != NULL_UUID and not await conn.fetchval(
                "SELECT 1 FROM customer WHERE id = $1 AND tenant_id = $2", customer_id, tenant_id
            ):
                raise EntityNotFoundError(f"Customer with id [{customer_id}] is not found")
            n = await conn.execute(
                "UPDATE device SET customer_id = $3, version = version + 1 WHERE id = $1 AND tenant_id = $2",
                device_id, tenant_id, customer_id,
            )
            if not n:
                raise EntityNotFoundError(f"Device with id [{device_id}] is not found")
        device = await self.get(tenant_id, device_id)
        assert device is not None
        await self._notify([DeviceChange("assigned", device, None)])
        return device

    async def delete(self, tenant_id: str, device_id: str) -> None:
        """Delete the device and its credentials."""
        tenant_id = check_uuid("tenant id", tenant_id)
        device_id = check_uuid("device id", device_id)
        async with self.db.transaction() as conn:
            removed = await delete_devices(conn, tenant_id, device_id)
        if not removed:
            raise EntityNotFoundError(f"Device with id [{device_id}] is not found")
        await self.announce_deleted(removed)

    # -- credentials -----------------------------------------------------------

    async def credentials(self, tenant_id: str, device_id: str) -> DeviceCredentials | None:
        """The device's credentials, or None when ``tenant_id`` has no such device."""
        row = await self.db.fetchrow(
            f"SELECT {_CREDENTIALS_COLUMNS} FROM device_credentials c JOIN device d ON d.id = c.device_id "
            "WHERE c.device_id = $1 AND d.tenant_id = $2",
            check_uuid("device id", device_id), check_uuid("tenant id", tenant_id),
        )
        return _credentials(row) if row is not None else None

    async def set_credentials(self, tenant_id: str, device_id: str, token: str) -> DeviceCredentials:
        """Replace the device's access token (its old token stops working at
        the broker once listeners ran).  A token of another device raises
        AlreadyExistsError(TOKEN_TAKEN)."""
        tenant_id = check_uuid("tenant id", tenant_id)
        device_id = check_uuid("device id", device_id)
        token = check_token(token)
        try:
            async with self.db.transaction() as conn:
                row = await conn.fetchrow(
                    f"SELECT {_DEVICE_COLUMNS}, c.credentials_id AS token FROM device d "
                    "LEFT JOIN device_credentials c ON c.device_id = d.id WHERE d.id = $1 AND d.tenant_id = $2",
                    device_id, tenant_id,
                )
                if row is None:
                    raise EntityNotFoundError(f"Device with id [{device_id}] is not found")
                old = row["token"]
                if old is None:
                    await conn.execute(
                        "INSERT INTO device_credentials (id, device_id, created_time, credentials_type, "
                        "credentials_id, version) VALUES ($1, $2, $3, 'ACCESS_TOKEN', $4, 1)",
                        new_id(), device_id, now_ms(), token,
                    )
                elif old != token:
                    await conn.execute(
                        "UPDATE device_credentials SET credentials_id = $2, version = version + 1 "
                        "WHERE device_id = $1", device_id, token,
                    )
                creds = await conn.fetchrow(
                    f"SELECT {_CREDENTIALS_COLUMNS} FROM device_credentials c WHERE c.device_id = $1", device_id
                )
        except AlreadyExistsError as e:
            raise AlreadyExistsError(TOKEN_TAKEN) from e
        if old != token:
            await self._notify([DeviceChange("credentials", _device(row), token, old)])
        return _credentials(creds)

    async def all_credentials(self, batch: int = 1000) -> AsyncIterator[tuple[Device, str]]:
        """Server-internal: every device of every tenant with its token, in
        id order, ``batch`` rows per query (the broker's full resync)."""
        after = ""
        while True:
            rows = await self.db.fetch(
                f"SELECT {_DEVICE_COLUMNS}, c.credentials_id AS token FROM device d "
                "JOIN device_credentials c ON c.device_id = d.id WHERE d.id > $1 ORDER BY d.id LIMIT $2",
                after, batch,
            )
            for r in rows:
                yield _device(r), r["token"]
            if len(rows) < batch:
                return
            after = rows[-1]["id"]

    async def all_ids(self, batch: int = 10_000) -> AsyncIterator[list[str]]:
        """Server-internal: the id of every device of every tenant, in id
        order, ``batch`` per list (the presence registry's view of which
        devices exist: ``server/registered.py``)."""
        after = ""
        while True:
            rows = await self.db.fetch("SELECT id FROM device WHERE id > $1 ORDER BY id LIMIT $2", after, batch)
            if rows:
                yield [r["id"] for r in rows]
            if len(rows) < batch:
                return
            after = rows[-1]["id"]

    async def ids_created_since(self, ms: int) -> list[str]:
        """Server-internal: the ids of devices created at or after ``ms``
        (epoch ms, the creating node's clock): what other nodes of a
        cluster added."""
        rows = await self.db.fetch("SELECT id FROM device WHERE created_time >= $1", int(ms))
        return [r["id"] for r in rows]

    # -- activity --------------------------------------------------------------

    async def touch_activity(self, device_id: str, ts: int) -> None:
        """Record that the device was active at ``ts`` (epoch ms); an older
        ``ts`` than the stored one changes nothing."""
        await self.touch_activity_many([(device_id, ts)])

    async def touch_activity_many(self, seen: Iterable[tuple[str, int]]) -> None:
        """:meth:`touch_activity` for many devices in one statement batch
        (the server collects presence and flushes it now and then)."""
        await self.db.executemany(
            "UPDATE device SET last_activity_time = $2 "
            "WHERE id = $1 AND (last_activity_time IS NULL OR last_activity_time < $2)",
            [(device_id, int(ts)) for device_id, ts in seen],
        )

    async def last_activity(self, tenant_id: str, device_id: str) -> int | None:
        """The device's last activity (epoch ms), None when never seen;
        EntityNotFoundError when ``tenant_id`` has no such device."""
        row = await self.db.fetchrow(
            "SELECT last_activity_time FROM device WHERE id = $1 AND tenant_id = $2",
            check_uuid("device id", device_id), check_uuid("tenant id", tenant_id),
        )
        if row is None:
            raise EntityNotFoundError(f"Device with id [{device_id}] is not found")
        return row[0]
