"""The persistent-call repository's interface: what the persistent-RPC
lifecycle stands on.

:class:`Store` is the abstract interface of the persistent-call table (the
``rpc`` repository); both dialects implement it over the shared
:class:`~fleetrpc.store.db.Database`; :class:`RpcRecord` is the stored call, shaped after ThingsBoard's
``Rpc`` entity; :class:`StatusChange` is one optimistic status update;
:class:`Page` is one page of a device's calls.

A database failure raises :class:`~fleetrpc.errors.StoreError` (its subclass
:class:`~fleetrpc.errors.StoreUnavailableError` when the database cannot be
reached, :class:`DuplicateRpcError` for an id already taken), never a
driver's own exception; the driver's exception is kept as ``__cause__``.
Bad arguments raise :class:`~fleetrpc.errors.ValidationError` or
:class:`~fleetrpc.errors.InvalidTransitionError` before the database is
touched.

Every method that reads or removes a call on somebody's behalf takes the
tenant, required: a call of another tenant is "not found".  Only the
engine's own bookkeeping (status changes of calls it owns, recovery, the
TTL clean-up) works across tenants.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ..errors import DuplicateRpcError, ValidationError
from ..rpc.status import RpcStatus, check_transition, is_allowed
from .db import Database

__all__ = [
    "RpcRecord",
    "StatusChange",
    "Page",
    "WriteResult",
    "StoreStats",
    "Store",
    "DuplicateRpcError",
    "SORT_PROPERTIES",
]


# -- records --------------------------------------------------------------------

_json_encode = msgspec.json.Encoder().encode


class RpcRecord(msgspec.Struct, kw_only=True, gc=False):
    """One persistent RPC as stored (ThingsBoard's ``Rpc`` entity).

    Times are epoch milliseconds.  ``params``, ``response`` and
    ``additional_info`` are any JSON value.  ``retries`` is the most resends
    this call may get; ``attempts`` counts the sends so far; ``timeout_ms`` is
    the transport timeout of one attempt.  ``owner_node`` is the node that
    drives the call while it is unfinished, ``lease_until`` (epoch ms) when
    that claim lapses (None: it does not lapse; clustering renews it).

    Not tracked by the cyclic GC (``gc=False``): a record holds scalars and
    JSON values, so it is never part of a reference cycle, and the engine
    keeps one per unfinished call (tracking them made the collector walk
    every live call over and over).  Do not store the record inside its
    own ``params``, ``response`` or ``additional_info``.
    """

    id: str
    device_id: str
    created_time: int
    expiration_time: int
    method: str
    params: Any = None
    tenant_id: str = "default"
    oneway: bool = False
    persisted: bool = True
    retries: int = 0
    timeout_ms: int = 10_000
    attempts: int = 0
    response: Any = None
    status: RpcStatus = RpcStatus.QUEUED
    additional_info: Any = None
    updated_time: int = 0
    error: str | None = None
    owner_node: str | None = None
    lease_until: int | None = None

    def __post_init__(self) -> None:
        if self.status.__class__ is not RpcStatus:
            self.status = RpcStatus(self.status)
        if not self.updated_time:
            self.updated_time = self.created_time

    def to_thingsboard(self) -> dict[str, Any]:
        """ThingsBoard's JSON shape of this call: the body of its events
        (``RPC_QUEUED`` ... ``RPC_DELETED``) and of ``GET
        /api/rpc/persistent/{rpcId}``.

        As in ThingsBoard, ``request.body.params`` is the parameters' JSON
        *text* (``ToDeviceRpcRequestBody.params`` is a string there), and a
        FAILED call without a reply says why in ``response.error`` (where
        ThingsBoard puts "There was a Timeout and all retry attempts have
        been exhausted"; its console shows that text).
        """
        tenant = {"entityType": "TENANT", "id": self.tenant_id}
        device = {"entityType": "DEVICE", "id": self.device_id}
        return {
            "id": {"entityType": "RPC", "id": self.id},
            "createdTime": self.created_time,
            "tenantId": tenant,
            "deviceId": device,
            "expirationTime": self.expiration_time,
            "request": {
                "id": self.id,
                "tenantId": tenant,
                "deviceId": device,
                "oneway": self.oneway,
                "expirationTime": self.expiration_time,
                "body": {"method": self.method, "params": _json_encode(self.params).decode()},
                "persisted": self.persisted,
                "retries": self.retries,
            },
            "response": (
                {"error": self.error}
                if self.response is None and self.error is not None and self.status is RpcStatus.FAILED
                else self.response
            ),
            "status": self.status.value,
            "additionalInfo": self.additional_info,
        }


class StatusChange(msgspec.Struct, kw_only=True, gc=False):
    """One optimistic status update of a stored call.

    Applied only if the stored status still equals ``expected_status``, so a
    writer acting on a stale view cannot overwrite a newer status.  Fields
    left at ``UNSET`` (``response``, ``error``) or ``None`` (``attempts``)
    keep their stored value.

    ``partition`` and ``epoch`` fence the write in a cluster (PostgreSQL):
    it applies only while the device's partition still has that epoch in
    ``cluster_partition``, i.e. while the node that made it still owns the
    partition (fleetrpc/cluster); None: not fenced (one node).

    Not tracked by the cyclic GC (``gc=False``): scalars and JSON values only.
    """

    id: str
    expected_status: RpcStatus
    status: RpcStatus
    updated_time: int
    attempts: int | None = None
    response: Any | msgspec.UnsetType = msgspec.UNSET
    error: str | None | msgspec.UnsetType = msgspec.UNSET
    partition: int | None = None
    epoch: int | None = None

    def __post_init__(self) -> None:
        if self.status.__class__ is not RpcStatus:
            self.status = RpcStatus(self.status)
        if self.expected_status.__class__ is not RpcStatus:
            self.expected_status = RpcStatus(self.expected_status)

    def check(self) -> None:
        """Raise :class:`~fleetrpc.errors.InvalidTransitionError` if no call,
        one-way or two-way, may make this move.  (Moves allowed for two-way
        calls only are refused by the store for one-way rows.)"""
        check_transition(self.expected_status, self.status, oneway=False, rpc_id=self.id)

    @property
    def allowed_for_oneway(self) -> bool:
        """Whether a one-way call may make this move (the stores check the
        row's ``oneway`` flag against this)."""
        return is_allowed(self.expected_status, self.status, oneway=True)


class Page(msgspec.Struct, kw_only=True):
    """One page of a listing (ThingsBoard's ``PageData``)."""

    data: list[RpcRecord]
    total_pages: int
    total_elements: int
    has_next: bool

    @classmethod
    def build(cls, data: list[RpcRecord], total: int, page_size: int, page: int) -> Page:
        return cls(
            data=data,
            total_pages=math.ceil(total / page_size) if page_size else 0,
            total_elements=total,
            has_next=total > (page + 1) * page_size,
        )

    def to_thingsboard(self) -> dict[str, Any]:
        """``{"data": [...], "totalPages", "totalElements", "hasNext"}``."""
        return {
            "data": [r.to_thingsboard() for r in self.data],
            "totalPages": self.total_pages,
            "totalElements": self.total_elements,
            "hasNext": self.has_next,
        }


class WriteResult(msgspec.Struct, kw_only=True, gc=False):
    """Outcome of :meth:`Store.write`, positional: ``inserted[i]`` is False
    when ``inserts[i]``'s id was already taken (in the store, or earlier in
    the same batch); ``applied[j]`` is False when ``changes[j]`` found no
    row in its expected status."""

    inserted: list[bool]
    applied: list[bool]


class StoreStats(msgspec.Struct, kw_only=True, gc=False):
    """Counters kept by every store (read them, never write)."""

    transactions: int = 0  # committed write transactions
    rows_inserted: int = 0
    rows_changed: int = 0


# -- listing arguments ----------------------------------------------------------

#: ThingsBoard's sortProperty values -> column.  Only these reach SQL.
SORT_PROPERTIES: dict[str, str] = {
    "createdTime": "created_time",
    "expirationTime": "expiration_time",
    "request": "method",
    "method": "method",
    "status": "status",
}
MAX_PAGE_SIZE = 10_000


def check_list_args(
    page_size: int,
    page: int,
    status: RpcStatus | str | None,
    sort_property: str,
    sort_order: str,
    text_search: str | None,
) -> tuple[str, str, RpcStatus | None, str | None]:
    """Validate listing arguments; return (column, ASC|DESC, status, LIKE
    pattern or None).  Raises :class:`ValidationError`."""
    if not isinstance(page_size, int) or isinstance(page_size, bool) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValidationError(f"pageSize must be an integer from 1 to {MAX_PAGE_SIZE}, got {page_size!r}")
    if not isinstance(page, int) or isinstance(page, bool) or page < 0:
        raise ValidationError(f"page must be an integer >= 0, got {page!r}")
    column = SORT_PROPERTIES.get(sort_property) if isinstance(sort_property, str) else None
    if column is None:
        raise ValidationError(
            f"sortProperty must be one of {', '.join(SORT_PROPERTIES)}; got {sort_property!r}"
        )
    order = sort_order.upper() if isinstance(sort_order, str) else None
    if order not in ("ASC", "DESC"):
        raise ValidationError(f"sortOrder must be ASC or DESC, got {sort_order!r}")
    if status is not None:
        try:
            status = RpcStatus(status)
        except ValueError:
            raise ValidationError(
                f"rpcStatus must be one of {', '.join(s.value for s in RpcStatus)}; got {status!r}"
            ) from None
    pattern = None
    if text_search:
        # Substring of the method name, case-insensitive; LIKE wildcards in the
        # search text are literal ('\' is the escape character in both SQLs).
        escaped = text_search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
    return column, order, status, pattern


def list_query(
    device_id: str,
    tenant_id: str,
    page_size: int,
    page: int,
    status: RpcStatus | str | None,
    sort_property: str,
    sort_order: str,
    text_search: str | None,
) -> tuple[str, list[Any], str, str]:
    """``list_by_device``'s arguments checked (:func:`check_list_args`) and
    turned into (WHERE condition with ``$n`` placeholders, its arguments,
    sort column, ASC|DESC).  Column and order come from fixed tables, never
    from the input."""
    check_tenant(tenant_id)
    column, order, status, pattern = check_list_args(
        page_size, page, status, sort_property, sort_order, text_search
    )
    terms: list[tuple[str, Any]] = [("device_id = {}", device_id), ("tenant_id = {}", tenant_id)]
    if status is not None:
        terms.append(("status = {}", status.value))
    if pattern is not None:
        terms.append(("lower(method) LIKE {} ESCAPE '\\'", pattern))
    cond = " AND ".join(term.format(f"${n}") for n, (term, _) in enumerate(terms, 1))
    return cond, [value for _, value in terms], column, order

DAY_MS = 86_400_000


# -- the interface ----------------------------------------------------------------


class Store(abc.ABC):
    """The persistent-call table (``rpc``): the abstract repository.

    A store works on a :class:`~fleetrpc.store.db.Database` (shared with the
    other repositories, or its own when built from a URL or path, then
    ``owns_db`` and closed with the store).  ``await store.open()`` (or
    ``async with store``) opens the database if it is not yet, which applies
    pending migrations.  Write methods run in one transaction each and
    return only after it committed; on any failure nothing of that call is
    stored.
    """

    #: "sqlite" or "postgresql"
    backend: str = ""

    def __init__(self, db: Database, *, owns_db: bool = False) -> None:
        self.db = db
        self.owns_db = owns_db
        self.stats = StoreStats()

    @staticmethod
    def _database(
        db: Database | str, make: Callable[..., Database], migrate_on_open: bool, options: dict[str, Any]
    ) -> tuple[Database, bool]:
        """A dialect store's database and whether the store owns it: the
        shared one given, or for a path or URL one of its own made by
        ``make`` with ``options`` (which a shared database cannot take)."""
        if isinstance(db, str):
            return make(db, migrate=migrate_on_open, **options), True
        if options:
            raise TypeError(f"options {sorted(options)} are the database's, not the store's")
        return db, False

    # -- lifecycle --

    async def open(self) -> None:
        """Open the database if it is not open yet (connects and applies
        pending migrations).  Raises :class:`StoreUnavailableError` when the
        database cannot be reached."""
        if not self.db.is_open:
            await self.db.open()

    async def close(self) -> None:
        """Close the database if the store owns it.  Idempotent."""
        if self.owns_db:
            await self.db.close()

    async def migrate(self) -> list[int]:
        """Apply the migrations not yet applied (see :meth:`Database.migrate`)."""
        return await self.db.migrate()

    async def schema_version(self) -> int:
        """The highest applied migration number (0 on an empty database)."""
        return await self.db.schema_version()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writes --

    @abc.abstractmethod
    async def write(
        self,
        inserts: Sequence[RpcRecord] = (),
        changes: Sequence[StatusChange] = (),
        *,
        atomic: bool = False,
    ) -> WriteResult:
        """Insert ``inserts``, then apply ``changes`` in order, in ONE
        transaction.  The building block of group commit.

        An insert whose id is already taken is skipped and reported in
        :attr:`WriteResult.inserted` -- unless ``atomic``, when the whole
        transaction rolls back and :class:`DuplicateRpcError` is raised.  A
        change is applied only if the row's status equals its
        ``expected_status`` (and, for a one-way row, the move is legal for
        one-way calls).  Any other failure rolls everything back and raises.
        Raises :class:`InvalidTransitionError` before touching the database
        if a change is illegal for every call.
        """

    async def insert_many(self, records: Sequence[RpcRecord]) -> None:
        """Insert ``records`` in one transaction, all or nothing.  Raises
        :class:`DuplicateRpcError` naming the ids already taken."""
        await self.write(records, (), atomic=True)

    async def insert(self, record: RpcRecord) -> None:
        """Insert one record (one transaction)."""
        await self.write((record,), (), atomic=True)

    async def apply_changes(self, changes: Sequence[StatusChange]) -> list[str]:
        """Apply ``changes`` in order, in one transaction; return the ids of
        the changes that applied (in order; an id appears once per applied
        change)."""
        result = await self.write((), changes)
        return [c.id for c, ok in zip(changes, result.applied, strict=True) if ok]

    async def change(self, change: StatusChange) -> bool:
        """Apply one change; True if it applied."""
        return (await self.write((), (change,))).applied[0]

    async def delete(self, rpc_id: str, tenant_id: str) -> RpcRecord | None:
        """Remove that tenant's call and return it as it was, or None if
        the tenant has no such call."""
        check_tenant(tenant_id)
        row = await self.db.fetchrow(
            f"DELETE FROM rpc WHERE id = $1 AND tenant_id = $2 RETURNING {', '.join(COLUMNS)}", rpc_id, tenant_id
        )
        self.stats.transactions += 1
        return None if row is None else row_record(row)

    # -- reads --

    @abc.abstractmethod
    async def get(self, rpc_id: str, tenant_id: str) -> RpcRecord | None:
        """That tenant's call by id, or None."""

    @abc.abstractmethod
    async def list_by_device(
        self,
        device_id: str,
        *,
        tenant_id: str,
        page_size: int = 10,
        page: int = 0,
        status: RpcStatus | str | None = None,
        sort_property: str = "createdTime",
        sort_order: str = "DESC",
        text_search: str | None = None,
    ) -> Page:
        """One page of a device's calls of that tenant (ThingsBoard's
        ``GET /api/rpc/persistent/device/{deviceId}``).

        ``sort_property`` is one of createdTime, expirationTime,
        request (= method), method, status; ties keep insertion order.
        ``text_search`` matches a substring of the method, ignoring case.
        Raises :class:`ValidationError` on a bad argument.
        """

    @abc.abstractmethod
    async def load_unfinished(self) -> list[RpcRecord]:
        """Every call that can still change status (QUEUED, SENT, TIMEOUT,
        and DELIVERED two-way calls), oldest first, of every tenant."""

    @abc.abstractmethod
    async def claim_unfinished(self, node_id: str) -> list[RpcRecord]:
        """Crash recovery: record ``node_id`` as the owner of every
        unfinished call and return them, oldest first.  (One node for now;
        clustering will claim only calls whose lease lapsed.)"""

    # -- TTL (the SQL of these two is the same in both dialects) --

    async def purge_terminal(self, older_than_ms: int, tenant_id: str) -> int:
        """Delete that tenant's finished calls created before
        ``older_than_ms``; return how many.  Calls that can still change are
        never purged."""
        check_tenant(tenant_id)
        n = await self.db.execute(
            f"DELETE FROM rpc WHERE created_time < $1 AND tenant_id = $2 AND {TERMINAL_SQL}", older_than_ms, tenant_id
        )
        self.stats.transactions += 1
        return n

    async def set_tenant_ttl(self, tenant_id: str, days: int | None) -> None:
        """Set a tenant's RPC TTL in days (ThingsBoard's "RPC TTL days"):
        ``0`` keeps its calls forever, ``None`` falls back to the default."""
        check_tenant(tenant_id)
        check_ttl_days(days)
        if days is None:
            await self.db.execute("DELETE FROM tenant_settings WHERE tenant_id = $1", tenant_id)
        else:
            await self.db.execute(
                "INSERT INTO tenant_settings (tenant_id, rpc_ttl_days) VALUES ($1, $2) "
                "ON CONFLICT (tenant_id) DO UPDATE SET rpc_ttl_days = excluded.rpc_ttl_days",
                tenant_id,
                days,
            )
        self.stats.transactions += 1

    @abc.abstractmethod
    async def get_tenant_ttl(self, tenant_id: str) -> int | None:
        """A tenant's own TTL in days, or None when it uses the default."""

    @abc.abstractmethod
    async def purge_expired(self, now_ms: int, default_days: int | None) -> int:
        """TTL clean-up of every tenant: delete finished calls older than
        their tenant's TTL (``default_days`` for tenants without one; 0 or
        None keeps them); return how many."""


# -- what the databases refuse ------------------------------------------------------------


def storable_problem(value: Any) -> str | None:
    """Why the databases would refuse ``value`` as a JSON column, or None.

    The same answer for both dialects, so that a call behaves alike on
    SQLite and PostgreSQL: a value msgspec cannot encode as JSON (a lone
    surrogate, an integer beyond what JSON numbers carry here, a Python
    object), or any string or key holding U+0000 (PostgreSQL refuses it in
    jsonb and text, SQLExceptions 22P05 / 22021).  Costs one encode, plus a
    walk of the value only when the encoded text has ``\\u0000`` in it.
    """
    try:
        encoded = _json_encode(value)
    except (TypeError, ValueError, OverflowError) as e:  # msgspec.EncodeError is a ValueError
        return f"it is not JSON ({e})"
    # find(), not `in`: bytes.__contains__ first tries its argument as an
    # int and builds a TypeError for every bytes argument (~2k instructions).
    if encoded.find(b"\\u0000") >= 0 and _has_nul(value):
        return "it contains the character U+0000, which the database cannot store"
    return None


def text_problem(text: str) -> str | None:
    """Why the databases would refuse ``text`` in a text column, or None."""
    if "\x00" in text:
        return "it contains the character U+0000, which the database cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"it is not valid Unicode ({e.reason})"
    return None


def storable_text(text: str) -> str:
    """``text`` made storable: U+0000 and lone surrogates become U+FFFD.
    For the engine's own messages, which may quote a device."""
    if text_problem(text) is None:
        return text
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)


def _has_nul(value: Any) -> bool:
    # with a stack, not recursion: a value may nest as deep as the JSON
    # decoder allows (about 1,000 levels), past what Python's recursion does
    stack = [value]
    while stack:
        value = stack.pop()
        if type(value) is str:
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return False


def check_tenant(tenant_id: object) -> None:
    """A tenant id is a non-empty string: never None (there is no "every
    tenant"), never anything else."""
    if type(tenant_id) is not str or not tenant_id:
        raise ValidationError(f"tenant_id must be a non-empty string, got {tenant_id!r}")


#: SQL conditions (both dialects) on the rpc table's status.
TERMINAL_SQL = "(status IN ('SUCCESSFUL', 'EXPIRED', 'FAILED', 'DELETED') OR (status = 'DELIVERED' AND oneway))"
UNFINISHED_SQL = "(status IN ('QUEUED', 'SENT', 'TIMEOUT') OR (status = 'DELIVERED' AND NOT oneway))"


def check_ttl_days(days: int | None) -> None:
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or days < 0):
        raise ValidationError(f"TTL must be a number of days >= 0 or None, got {days!r}")


def dedupe_inserts(records: Sequence[RpcRecord]) -> tuple[list[int], list[bool]]:
    """Indexes of the first record of each id, and a per-record flag that is
    False for a later record repeating an earlier id (it loses)."""
    seen: set[str] = set()
    first: list[int] = []
    keep = [True] * len(records)
    for i, r in enumerate(records):
        if r.id in seen:
            keep[i] = False
        else:
            seen.add(r.id)
            first.append(i)
    return first, keep


def change_payload(changes: Sequence[StatusChange], idx: Sequence[int]) -> bytes:
    """One round of changes as a JSON array of arrays, the single parameter
    of both backends' set-based UPDATE:
    ``[id, expected, status, updated_time, attempts, has_response, response,
    has_error, error, oneway_ok, position, partition, epoch]``; ``response``
    is the JSON value itself (no text-in-JSON)."""
    unset = msgspec.UNSET
    items = []
    for j in idx:
        c = changes[j]
        resp = c.response
        err = c.error
        items.append(
            (
                c.id,
                c.expected_status,
                c.status,
                c.updated_time,
                c.attempts,
                resp is not unset,
                None if resp is unset else resp,
                err is not unset,
                None if err is unset else err,
                is_allowed(c.expected_status, c.status, oneway=True),
                j,
                c.partition,
                c.epoch,
            )
        )
    try:
        return _json_encode(items)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"a status change has a response that is not JSON: {e}") from e


def change_rounds(changes: Sequence[StatusChange]) -> list[list[int]]:
    """Split changes into rounds with distinct ids each, keeping order per id:
    one set-based UPDATE touches a row at most once, so a second change of
    the same id (SENT->DELIVERED then DELIVERED->SUCCESSFUL in one batch)
    goes in the next round."""
    rounds: list[list[int]] = []
    depth: dict[str, int] = {}
    for j, c in enumerate(changes):
        d = depth.get(c.id, 0)
        depth[c.id] = d + 1
        if d == len(rounds):
            rounds.append([])
        rounds[d].append(j)
    return rounds


# -- rows -------------------------------------------------------------------------

#: Column order shared by both backends' SQL and the row helpers below.
COLUMNS: tuple[str, ...] = (
    "id",
    "tenant_id",
    "device_id",
    "created_time",
    "expiration_time",
    "method",
    "params",
    "oneway",
    "persisted",
    "retries",
    "timeout_ms",
    "attempts",
    "response",
    "status",
    "additional_info",
    "updated_time",
    "error",
    "owner_node",
    "lease_until",
)
JSON_COLUMNS = frozenset({"params", "response", "additional_info"})
_json_decode = msgspec.json.Decoder().decode


def json_text(value: Any) -> str | None:
    """A JSON column's value: JSON text, or SQL NULL for None."""
    return None if value is None else _json_encode(value).decode()


def json_value(text: str | bytes | None) -> Any:
    return None if text is None else _json_decode(text)


def record_row(r: RpcRecord) -> tuple[Any, ...]:
    """A record as a row in :data:`COLUMNS` order, JSON columns as text."""
    return (
        r.id,
        r.tenant_id,
        r.device_id,
        r.created_time,
        r.expiration_time,
        r.method,
        json_text(r.params),
        r.oneway,
        r.persisted,
        r.retries,
        r.timeout_ms,
        r.attempts,
        json_text(r.response),
        r.status.value,
        json_text(r.additional_info),
        r.updated_time,
        r.error,
        r.owner_node,
        r.lease_until,
    )


def record_rows(records: Sequence[RpcRecord], idx: Sequence[int]) -> list[tuple[Any, ...]]:
    """``records[i]`` for i in ``idx`` as rows (:func:`record_row`).  Raises
    :class:`ValidationError` if a JSON column's value is not JSON."""
    try:
        return [record_row(records[i]) for i in idx]
    except (TypeError, ValueError) as e:  # msgspec.EncodeError is a ValueError
        raise ValidationError(f"an RPC record has a value that is not JSON: {e}") from e


def row_record(row: Sequence[Any]) -> RpcRecord:
    """The inverse of :func:`record_row` (a row selected in COLUMNS order)."""
    return RpcRecord(
        id=row[0],
        tenant_id=row[1],
        device_id=row[2],
        created_time=row[3],
        expiration_time=row[4],
        method=row[5],
        params=json_value(row[6]),
        oneway=bool(row[7]),
        persisted=bool(row[8]),
        retries=row[9],
        timeout_ms=row[10],
        attempts=row[11],
        response=json_value(row[12]),
        status=RpcStatus(row[13]),
        additional_info=json_value(row[14]),
        updated_time=row[15],
        error=row[16],
        owner_node=row[17],
        lease_until=row[18],
    )
