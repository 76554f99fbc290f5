"""Which device is the agent at an IP: Elves addresses agents by IP, the
dispatcher by device id.

Library mode: :class:`IdentityDirectory`, the IP *is* the device id (an
agent started with ``fleetrpc agent --ip 10.0.0.5`` connects as device
``10.0.0.5``).  Server: :class:`RegistryDirectory` over the device registry,
where an Elves agent is a device of the tenant whose *name* is its IP and
whose wire id is its UUID.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Iterable, Protocol

__all__ = ["AgentDirectory", "IdentityDirectory", "RegistryDirectory"]


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
