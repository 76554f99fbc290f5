"""cmdbproxy: asset data of an agent by its IP.

``getCmdbInfoByIp(agentip)`` -> ``sn``, ``iplist``, ``idc``, ``main_cat``,
``sub_cat``, ``app_info``, ``manager``; ``getCmdbInfoByIpList(agentiplist)``
-> ``info``: one such record per IP, in the order asked, each with its
``ip`` and ``found``.  The seed writes both as ``checkipauthbykey``: an
``agentiplist`` argument means the list.  Lookups are limited to the
caller's tenant.

Where the data comes from: the ``elves_cmdb`` table, filled by CSV import
(``POST /api/elves/cmdb`` with a ``text/csv`` body, a tenant administrator;
``?replace=true`` replaces the tenant's whole table; header ``ip,sn,iplist,
idc,main_cat,sub_cat,app_info,manager``, only ``ip`` required); for an IP
not in the table, optionally an upstream HTTP CMDB
(``CmdbSettings.upstream_url``, ``{ip}`` replaced by the IP, answering the
record as a JSON object, or ``{"data": {...}}``), whose answers -- found or
not -- are kept ``cache_ttl_s`` seconds.

The supervisor's category grants (``main_cat`` / ``sub_cat``) are matched
against this data (``supervisor.categories_of``).
"""

from __future__ import annotations

import csv
import io
import time
from collections import OrderedDict
from typing import Any

import msgspec
from aiohttp import web

from .envelope import Envelope, check_ip, check_ip_list
from .errors import Code, ElvesError
from .router import Alias, ElvesCall, ElvesRouter
from ...api.keys import PRINCIPAL

__all__ = ["CmdbService", "CmdbRepository", "CmdbSettings", "FIELDS", "parse_csv", "install", "setup_http"]

FIELDS = ("sn", "iplist", "idc", "main_cat", "sub_cat", "app_info", "manager")
#: Largest CSV accepted.
MAX_CSV_BYTES = 16 * 1024 * 1024


class CmdbSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: ``http://cmdb.example/api/host/{ip}``; None: the table only.
    upstream_url: str | None = None
    cache_ttl_s: float = 300.0
    cache_size: int = 100_000
    upstream_timeout_s: float = 5.0


class CmdbRepository:
    """``elves_cmdb``."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def get_many(self, tenant_id: str, ips: list[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for i in range(0, len(ips), 1000):
            part = ips[i:i + 1000]
            marks = ", ".join(f"${j + 2}" for j in range(len(part)))
            rows = await self.db.fetch(
                f"SELECT ip, {', '.join(FIELDS)} FROM elves_cmdb WHERE tenant_id = $1 AND ip IN ({marks})",
                tenant_id, *part)
            for r in rows:
                out[r[0]] = {f: r[k + 1] for k, f in enumerate(FIELDS)}
        return out

    async def import_rows(self, tenant_id: str, rows: list[dict[str, str]], *, replace: bool = False) -> None:
        """Insert or update rows (``ip`` and some of :data:`FIELDS`): an
        update changes only the columns the rows have."""
        if not rows and not replace:
            return
        now = int(time.time() * 1000)
        present = [f for f in FIELDS if rows and f in rows[0]]
        cols = ", ".join(FIELDS)
        marks = ", ".join(f"${i + 3}" for i in range(len(FIELDS)))
        updates = "".join(f"{f} = excluded.{f}, " for f in present)
        async with self.db.transaction() as conn:
            if replace:
                await conn.execute("DELETE FROM elves_cmdb WHERE tenant_id = $1", tenant_id)
            if rows:
                await conn.executemany(
                    f"INSERT INTO elves_cmdb (tenant_id, ip, {cols}, updated_ms) "
                    f"VALUES ($1, $2, {marks}, ${len(FIELDS) + 3}) "
                    f"ON CONFLICT (tenant_id, ip) DO UPDATE SET {updates}updated_ms = excluded.updated_ms",
                    [(tenant_id, r["ip"], *(r.get(f, "") for f in FIELDS), now) for r in rows])


def parse_csv(text: str) -> list[dict[str, str]]:
    """Rows of a CMDB CSV, each with ``ip`` and the columns of the header;
    ElvesError 403.0 listing the bad lines."""
    try:
        return _parse_csv(text)
    except csv.Error as exc:
        raise ElvesError(Code.MALFORMED, f"Bad CSV: {exc}") from None


def _parse_csv(text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    if "ip" not in header:
        raise ElvesError(Code.MALFORMED, f"Bad CSV: the header needs an 'ip' column (has {header[:10]})")
    unknown = set(header) - {"ip", *FIELDS}
    if unknown:
        raise ElvesError(Code.MALFORMED, f"Bad CSV: unknown columns {sorted(unknown)[:10]} (known: ip, {', '.join(FIELDS)})")
    if len(set(header)) != len(header):
        raise ElvesError(Code.MALFORMED, "Bad CSV: a column appears twice in the header")
    reader.fieldnames = header
    present = [f for f in FIELDS if f in header]
    rows, errors, seen = [], [], set()
    for line, raw in enumerate(reader, start=2):
        if None in raw:
            errors.append(f"line {line}: more fields than the header")
            continue
        try:
            ip = check_ip((raw.get("ip") or "").strip())
        except ElvesError:
            errors.append(f"line {line}: bad ip {raw.get('ip')!r:.60}")
            continue
        if ip in seen:
            errors.append(f"line {line}: ip {ip} appears twice")
            continue
        seen.add(ip)
        rows.append({"ip": ip, **{f: (raw.get(f) or "").strip() for f in present}})
    if errors:
        shown = "; ".join(errors[:20]) + (f"; and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise ElvesError(Code.MALFORMED, f"Bad CSV: {shown}")
    return rows


class _IpArgs(msgspec.Struct):
    agentip: str


class _IpListArgs(msgspec.Struct):
    agentiplist: list[str]


_EMPTY = dict.fromkeys(FIELDS, "")


class CmdbService:
    def __init__(self, service: Any, settings: CmdbSettings | None = None) -> None:
        self.service = service
        self.repo = CmdbRepository(service.db)
        self.settings = settings or CmdbSettings()
        self._cache: OrderedDict[tuple[str, str], tuple[float, dict[str, str] | None]] = OrderedDict()
        self._session = None
        self.upstream_calls = 0

    def register(self, router: ElvesRouter) -> None:
        router.register("cmdbproxy", "getCmdbInfoByIp", self.get_cmdb_info_by_ip, aliases=["checkipauthbykey"])
        router.register("cmdbproxy", "getCmdbInfoByIpList", self.get_cmdb_info_by_ip_list,
                        aliases=[Alias("checkipauthbykey", when=lambda env: env.has("agentiplist"))])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- lookups -----------------------------------------------------------------------

    async def lookup(self, tenant_id: str, ips: list[str]) -> dict[str, dict[str, str]]:
        """``{ip: record}`` of the IPs known to the table or the upstream."""
        found = await self.repo.get_many(tenant_id, ips)
        if self.settings.upstream_url:
            for ip in ips:
                if ip not in found:
                    record = await self._upstream(tenant_id, ip)
                    if record is not None:
                        found[ip] = record
        return found

    async def categories_of(self, tenant_id: str, ips: list[str]) -> dict[str, tuple[str | None, str | None]]:
        found = await self.lookup(tenant_id, ips)
        return {ip: (r["main_cat"] or None, r["sub_cat"] or None) for ip, r in found.items()}

    async def _upstream(self, tenant_id: str, ip: str) -> dict[str, str] | None:
        key = (tenant_id, ip)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.upstream_timeout_s))
        self.upstream_calls += 1
        record: dict[str, str] | None = None
        try:
            async with self._session.get(self.settings.upstream_url.replace("{ip}", ip)) as resp:
                if resp.status == 200:
                    body = await resp.json(content_type=None)
                    if isinstance(body, dict) and isinstance(body.get("data"), dict):
                        body = body["data"]
                    if isinstance(body, dict):
                        record = {f: _text(body.get(f)) for f in FIELDS}
                elif resp.status != 404:
                    raise ElvesError(Code.INTERNAL, f"CMDB upstream answered HTTP {resp.status} for {ip}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Not cached: the next lookup asks again.
            raise ElvesError(Code.INTERNAL, f"CMDB upstream unreachable for {ip}: {type(exc).__name__}") from None
        self._cache[key] = (now + self.settings.cache_ttl_s, record)
        self._cache.move_to_end(key)
        while len(self._cache) > self.settings.cache_size:
            self._cache.popitem(last=False)
        return record

    # -- the functions -------------------------------------------------------------------

    async def get_cmdb_info_by_ip(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        ip = check_ip(env.args(_IpArgs).agentip)
        record = (await self.lookup(call.tenant_id, [ip])).get(ip)
        if record is None:
            raise ElvesError(Code.AGENT_NOT_FOUND, f"Cmdb Info Not Found: {ip}")
        return dict(record)

    async def get_cmdb_info_by_ip_list(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        ips = check_ip_list(env.args(_IpListArgs).agentiplist)
        found = await self.lookup(call.tenant_id, list(dict.fromkeys(ips)))
        return {"info": [{"ip": ip, "found": ip in found, **found.get(ip, _EMPTY)} for ip in ips]}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


# -- HTTP import ---------------------------------------------------------------------------


def setup_http(app: web.Application, service: Any) -> None:
    """``POST /api/elves/cmdb``: import a CSV into the principal's tenant."""

    async def handle(request: web.Request) -> web.Response:
        principal = request.get(PRINCIPAL)
        if principal is None or getattr(principal, "authority", None) != "TENANT_ADMIN":
            return web.json_response({"flag": "false", "error": f"[{Code.DENIED}]Permission Denied: tenant administrators import the CMDB"}, status=403)
        if request.content_length is not None and request.content_length > MAX_CSV_BYTES:
            return web.json_response({"flag": "false", "error": f"[{Code.MALFORMED}]Bad CSV: larger than {MAX_CSV_BYTES} bytes"}, status=413)
        body = await request.content.read(MAX_CSV_BYTES + 1)
        if len(body) > MAX_CSV_BYTES:
            return web.json_response({"flag": "false", "error": f"[{Code.MALFORMED}]Bad CSV: larger than {MAX_CSV_BYTES} bytes"}, status=413)
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            return web.json_response({"flag": "false", "error": f"[{Code.MALFORMED}]Bad CSV: not UTF-8"}, status=400)
        try:
            rows = parse_csv(text)
        except ElvesError as err:
            return web.json_response({"flag": "false", "error": str(err)}, status=400)
        replace = request.query.get("replace", "").lower() in ("1", "true", "yes")
        await service.cmdb.repo.import_rows(principal.tenant_id, rows, replace=replace)
        return web.json_response({"flag": "true", "error": "", "result": {"imported": len(rows), "replaced": replace}})

    app.router.add_post("/api/elves/cmdb", handle)


def install(service: Any) -> None:
    service.cmdb = CmdbService(service, getattr(service, "cmdb_settings", None))
    service.cmdb.register(service.router)
    service.supervisor.categories_of = service.cmdb.categories_of


async def stop(service: Any) -> None:
    await service.cmdb.close()
