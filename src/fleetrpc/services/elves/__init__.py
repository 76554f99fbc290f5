"""Elves (an ops-automation platform) served on the dispatch core.

An Elves *agent* is a device addressed by its IP; an Elves *app* is a
caller that sends envelopes ``{"mqt": "call", "mqs": service, "mqf":
function, ...}`` over MQTT (``{p}/elves/{app}/call[/{cid}]``) or HTTP
(``POST /api/elves``).  Services: scheduler, heartbeat, supervisor,
tasklog (here), cron, cmdbproxy, queue and the OpenAPI v2 (optional parts).
docs/elves.md is the reference: aliases, dispatch rules, errors.
"""

from .config import ElvesSettings
from .directory import AgentDirectory, IdentityDirectory, RegistryDirectory, device_registry
from .envelope import FLAG_FALSE, FLAG_TRUE, Envelope, Instruction, parse_envelope
from .errors import Code, ElvesError
from .router import NULL_TENANT, Alias, ElvesCall, ElvesRouter

__all__ = [
    "Alias",
    "AgentDirectory",
    "Code",
    "ElvesCall",
    "ElvesError",
    "ElvesRouter",
    "ElvesService",
    "ElvesSettings",
    "Envelope",
    "FLAG_FALSE",
    "FLAG_TRUE",
    "IdentityDirectory",
    "Instruction",
    "NULL_TENANT",
    "RegistryDirectory",
    "device_registry",
    "parse_envelope",
]


def __getattr__(name: str):
    # The assembled service imports every part; load it only when asked for.
    if name == "ElvesService":
        from .service import ElvesService

        return ElvesService
    raise AttributeError(name)
