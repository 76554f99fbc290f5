"""Which device is the agent at an IP: Elves addresses agents by IP, the
dispatcher by device id.

Library mode: :class:`IdentityDirectory`, the IP *is* the device id (an
agent started with ``fleetrpc agent --ip 10.0.0.5`` connects as device
``10.0.0.5``).  Server: :class:`RegistryDirectory` over the device registry
(:func:`device_registry`), where an Elves agent is a device of the tenant
whose *name* is its IP and whose wire id is its UUID.

Why the name and not an ``ip`` in the device's additionalInfo: names are
unique per tenant (the registry's own constraint and index), so one IP is
one agent and a lookup of 10,000 IPs is one indexed query; an
additionalInfo value is neither unique nor indexed.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable, Protocol

__all__ = ["AgentDirectory", "IdentityDirectory", "RegistryDirectory", "device_registry"]

#: Names or ids per query (two parameters short of both dialects' limits).
_CHUNK = 1000


class AgentDirectory(Protocol):
    async def resolve(self, tenant_id: str, ips: list[str]) -> dict[str, str]:
        """``{ip: device id}`` for the IPs that are agents of the tenant
        (unknown ones are left out)."""

    async def owned(self, tenant_id: str, devices: Iterable[str]) -> dict[str, str]:
        """``{device id: ip}`` for those of ``devices`` that are agents of
        the tenant."""


class IdentityDirectory:
    """Library mode: one tenant, the IP is the device id."""

    async def resolve(self, tenant_id: str, ips: list[str]) -> dict[str, str]:
        return {ip: ip for ip in ips}

    async def owned(self, tenant_id: str, devices: Iterable[str]) -> dict[str, str]:
        return {d: d for d in devices}


class RegistryDirectory:
    """The server's device registry: ``by_name(tenant_id, names) -> {name:
    device id}`` and ``names_of(tenant_id, device ids) -> {device id: name}``,
    both limited to the tenant (the server binds them to its
    DeviceRepository)."""

    def __init__(
        self,
        by_name: Callable[[str, list[str]], Awaitable[dict[str, str]]],
        names_of: Callable[[str, list[str]], Awaitable[dict[str, str]]],
    ) -> None:
        self._by_name = by_name
        self._names_of = names_of

    async def resolve(self, tenant_id: str, ips: list[str]) -> dict[str, str]:
        return await self._by_name(tenant_id, ips)

    async def owned(self, tenant_id: str, devices: Iterable[str]) -> dict[str, str]:
        return await self._names_of(tenant_id, list(devices))


def device_registry(db: Any) -> RegistryDirectory:
    """The server's directory: the ``device`` table of the entities
    (``store/entities``), read by name (the agent's IP) and by id, always
    within one tenant.  Read-only; one query per 1000 IPs."""

    async def lookup(tenant_id: str, column: str, values: list[str]) -> dict[str, str]:
        other = "id" if column == "name" else "name"
        out: dict[str, str] = {}
        values = [v for v in dict.fromkeys(values) if isinstance(v, str)]
        for i in range(0, len(values), _CHUNK):
            part = values[i:i + _CHUNK]
            marks = ", ".join(f"${j + 2}" for j in range(len(part)))
            rows = await db.fetch(
                f"SELECT {column}, {other} FROM device WHERE tenant_id = $1 AND {column} IN ({marks})",
                tenant_id, *part,
            )
            out.update((r[0], r[1]) for r in rows)
        return out

    async def by_name(tenant_id: str, names: list[str]) -> dict[str, str]:
        return await lookup(tenant_id, "name", names)

    async def names_of(tenant_id: str, ids: list[str]) -> dict[str, str]:
        return await lookup(tenant_id, "id", ids)

    return RegistryDirectory(by_name, names_of)
