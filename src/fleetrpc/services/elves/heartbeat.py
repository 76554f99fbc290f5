"""heartbeat: which agents are online, and what they told about themselves.

Read from the dispatcher's presence information (``device_info``,
``online_devices``): an agent is online while its retained presence says
so (its Last Will turns it offline at once) and its last heartbeat is at
most ``online_interval_s`` old (an agent that hangs without disconnecting
drops out too).  Before its first heartbeat an agent counts as online for
``online_interval_s`` after it came online.

The agent's heartbeat (``fleetrpc agent``) carries ``elves`` (its version,
which marks the device as an Elves agent), ``ip``, ``os``, ``hostname``,
``hw``, ``apps`` and ``crons`` (its self crons), next to the SDK's ``ts``
and ``started`` (epoch ms).

Functions: ``getStatByIp(agentip)`` -> ``status``; ``getInfoByIp(agentip)``
-> ``agent_starttime``, ``hw_config``, ``cronlist`` (the seed writes it
``getstatbyip``, with the same argument: that name answers both, ``status``
and the info fields); ``getStatByIpList(iplist)`` -> ``status`` in the
order of ``iplist``; ``getOnlineStat`` -> ``stat{totalonline, linuxonline,
winonline, otheronline}`` by the OS the agents report.  Status is
``"true"``/``"false"``.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

import msgspec

from .config import ElvesSettings
from .directory import AgentDirectory
from .envelope import FLAG_FALSE, FLAG_TRUE, Envelope, check_ip, check_ip_list
from .errors import Code, ElvesError
from .router import ElvesCall, ElvesRouter
from .tasklog import elves_time

__all__ = ["Heartbeat", "AgentState"]

#: ``cron_lister(tenant_id, ip) -> [cron entries]``: the center crons of an
#: agent (set by the cron service), listed in getInfoByIp's ``cronlist``.
CronLister = Callable[[str, str], Awaitable[list[Any]]]


class AgentState(msgspec.Struct):
    """What the heartbeat service knows about one agent."""

    device: str
    online: bool
    heartbeat: dict | None = None

    @property
    def os(self) -> str:
        hb = self.heartbeat or {}
        return str(hb.get("os") or "")


class _IpArgs(msgspec.Struct):
    agentip: str


class _IpListArgs(msgspec.Struct):
    iplist: list[str]


def os_family(os_name: str) -> str:
    """``linux``, ``win`` or ``other``, from what the agent reported."""
    name = os_name.strip().lower()
    if name.startswith("linux"):
        return "linux"
    if name.startswith("win"):
        return "win"
    return "other"


class Heartbeat:
    """Agent online state over the dispatcher's presence; the heartbeat functions."""

    def __init__(self, dispatcher: Any, directory: AgentDirectory, settings: ElvesSettings | None = None) -> None:
        self.dispatcher = dispatcher
        self.directory = directory
        self.settings = settings or ElvesSettings()
        #: Set by the cron service: the center crons in getInfoByIp.
        self.cron_lister: CronLister | None = None

    # -- state ------------------------------------------------------------------

    def state(self, device: str, now: float | None = None) -> AgentState:
        """The agent's state now (seconds since the epoch)."""
        now = time.time() if now is None else now
        info = self.dispatcher.device_info(device)
        if info is None:
            return AgentState(device, False)
        hb = info.heartbeat
        online = bool(info.online) and self.dispatcher.is_online(device)
        if online:
            limit = self.settings.online_interval_s
            ts = hb.get("ts") if isinstance(hb, dict) else None
            if isinstance(ts, (int, float)) and not isinstance(ts, bool):
                online = now - ts / 1000.0 <= limit
            else:
                online = now - info.since <= limit
        return AgentState(device, online, hb if isinstance(hb, dict) else None)

    def known(self, device: str) -> bool:
        """Whether presence or a heartbeat ever came from ``device``."""
        return self.dispatcher.device_info(device) is not None

    async def states(self, tenant_id: str, ips: list[str]) -> dict[str, AgentState | None]:
        """``{ip: state}``; None for an IP that is no agent of the tenant."""
        devices = await self.directory.resolve(tenant_id, ips)
        now = time.time()
        return {ip: (self.state(devices[ip], now) if ip in devices else None) for ip in ips}

    async def online_stat(self, tenant_id: str) -> dict[str, int]:
        now = time.time()
        candidates = []
        for device in self.dispatcher.online_devices:
            info = self.dispatcher.device_info(device)
            if info is not None and isinstance(info.heartbeat, dict) and "elves" in info.heartbeat:
                candidates.append(device)
        owned = await self.directory.owned(tenant_id, candidates)
        stat = {"totalonline": 0, "linuxonline": 0, "winonline": 0, "otheronline": 0}
        for device in owned:
            st = self.state(device, now)
            if st.online:
                stat["totalonline"] += 1
                stat[os_family(st.os) + "online"] += 1
        return stat

    # -- Elves functions ----------------------------------------------------------

    def register(self, router: ElvesRouter) -> None:
        router.register("heartbeat", "getStatByIp", self.get_stat_by_ip)
        router.register("heartbeat", "getInfoByIp", self.get_info_by_ip)
        router.register("heartbeat", "getStatByIpList", self.get_stat_by_ip_list)
        router.register("heartbeat", "getOnlineStat", self.get_online_stat)

    async def _one(self, env: Envelope, call: ElvesCall) -> tuple[str, AgentState | None]:
        ip = check_ip(env.args(_IpArgs).agentip)
        return ip, (await self.states(call.tenant_id, [ip]))[ip]

    async def get_stat_by_ip(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        ip, st = await self._one(env, call)
        reply: dict[str, Any] = {"status": FLAG_TRUE if st is not None and st.online else FLAG_FALSE}
        # The seed writes getInfoByIp as getstatbyip with the same argument
        # (and names are case-insensitive): answer both, so that either
        # caller finds its fields.
        reply.update(await self._info(call, ip, st))
        return reply

    async def get_info_by_ip(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        ip, st = await self._one(env, call)
        if st is None or not self.known(st.device):
            raise ElvesError(Code.AGENT_NOT_FOUND, f"Agent Info Not Found: {ip}")
        return {"status": FLAG_TRUE if st.online else FLAG_FALSE, **await self._info(call, ip, st)}

    async def _info(self, call: ElvesCall, ip: str, st: AgentState | None) -> dict[str, Any]:
        hb = (st.heartbeat if st is not None else None) or {}
        started = hb.get("started")
        crons = list(hb.get("crons") or [])
        if self.cron_lister is not None and st is not None:
            crons = list(await self.cron_lister(call.tenant_id, ip)) + crons
        hw = dict(hb.get("hw") or {})
        for name in ("os", "hostname", "version"):
            if name in hb:
                hw.setdefault(name, hb[name])
        if "elves" in hb:
            hw.setdefault("agent_version", hb["elves"])
        return {
            "agent_starttime": elves_time(started) if isinstance(started, int) else "",
            "last_hb_time": elves_time(hb["ts"]) if isinstance(hb.get("ts"), int) else "",
            "hw_config": hw,
            "apps": hb.get("apps") or {},
            "cronlist": crons,
        }

    async def get_stat_by_ip_list(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        ips = check_ip_list(env.args(_IpListArgs).iplist)
        states = await self.states(call.tenant_id, list(dict.fromkeys(ips)))
        return {"status": [FLAG_TRUE if (s := states[ip]) is not None and s.online else FLAG_FALSE for ip in ips]}

    async def get_online_stat(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        return {"stat": await self.online_stat(call.tenant_id)}
