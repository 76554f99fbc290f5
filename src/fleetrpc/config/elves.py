"""``[elves]``: the Elves services of ``fleetrpc serve`` (docs/elves.md).

One flat section, as every section of the server is (one environment
variable per key, ``FLEETRPC_ELVES_CRON_LOOKAHEAD_S``): the keys of the
services' own :class:`~fleetrpc.services.elves.ElvesSettings` as they are,
those of the cron part prefixed ``cron_`` (``CronSettings``) and those of
the CMDB part prefixed ``cmdb_`` (``CmdbSettings``).  The three typed objects
the services take are built by :meth:`ElvesSection.elves`,
:meth:`~ElvesSection.cron` and :meth:`~ElvesSection.cmdb`; a test checks
that every field of theirs is here with the same default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta

from ..errors import ValidationError

__all__ = ["ElvesSection"]


def _doc(text: str, **kw: Any) -> Meta:
    return Meta(description=text, **kw)


class ElvesSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The Elves services: apps run instructions on agents (devices named by their IP), by MQTT and HTTP. Several nodes: give them the same dispatch.share_group, so that each Elves call and agent result is handled by one node (center crons fire once per run regardless)."""

    enabled: Annotated[bool, _doc(
        "Serve Elves: the envelope on {prefix}/elves/{app}/call and POST /api/elves, the OpenAPI v2 "
        "(/api/v2/...), app-key administration (/api/elves/apps), center cron firing.")] = True
    mqtt_auth: Annotated[Literal["key", "topic"], _doc(
        "How an app calling over MQTT is authenticated. key: the envelope carries the app's auth key "
        "(key or auth_key). topic: the {app} topic level is the app's auth id, and the broker's ACL "
        "is trusted to let only that app publish there.")] = "key"
    online_interval_s: Annotated[float, _doc(
        "An agent is online while its presence says so and its last heartbeat is at most this old.",
        gt=0)] = 180.0
    agent_grace_s: Annotated[float, _doc(
        "Added to an instruction's timeout for the call to the agent, so that the agent's own "
        "'app exec timeout' answer arrives first.", ge=0)] = 5.0
    accept_timeout_s: Annotated[float, _doc(
        "How long sendAsync (and a cron firing) waits for the agent to accept an instruction.", gt=0)] = 10.0
    processor_timeout_s: Annotated[float, _doc(
        "How long the POST of a worker's result to an app's processor (mode P) may take.", gt=0)] = 10.0
    task_retention_days: Annotated[float, _doc(
        "Task logs older than this are deleted (0: kept forever).", ge=0)] = 30.0
    retention_check_s: Annotated[float, _doc("How often the task-log clean-up runs.", gt=0)] = 3600.0
    cron_poll_interval_s: Annotated[float, _doc(
        "Longest a node sleeps without looking for due center crons (bounds how late it sees crons "
        "created on another node).", gt=0)] = 1.0
    cron_lookahead_s: Annotated[float, _doc(
        "How far ahead of their fire time center crons are claimed, so that only the sending is "
        "left at the fire time (0: claimed when due).", ge=0)] = 2.0
    cron_batch: Annotated[int, _doc("Most cron firings taken per pass of the firing loop.", ge=1)] = 50_000
    cron_push_timeout_s: Annotated[float, _doc(
        "How long pushing a self cron to its agent may take.", gt=0)] = 10.0
    cron_firing_retention_days: Annotated[float, _doc(
        "Firing records (the exactly-once claims) older than this are deleted.", gt=0)] = 7.0
    cron_timezone: Annotated[str, _doc("The time zone cron rules are read in (an IANA name).")] = "UTC"
    cmdb_upstream_url: Annotated[str | None, _doc(
        "An upstream HTTP CMDB asked for IPs not in the imported table: a URL with {ip} "
        "(http://cmdb.example/api/host/{ip}). Unset: the table only.")] = None
    cmdb_cache_ttl_s: Annotated[float, _doc(
        "How long the upstream CMDB's answers (found or not) are cached.", ge=0)] = 300.0
    cmdb_cache_size: Annotated[int, _doc("Most upstream CMDB answers cached.", ge=0)] = 100_000
    cmdb_upstream_timeout_s: Annotated[float, _doc(
        "How long a request to the upstream CMDB may take.", gt=0)] = 5.0

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.cron_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError(f"elves.cron_timezone: unknown time zone {self.cron_timezone!r}") from None
        url = self.cmdb_upstream_url
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValidationError(f"elves.cmdb_upstream_url must be an http:// or https:// URL, not {url!r}")

    # -- the services' own settings objects --

    def _fields(self, prefix: str, cls: type) -> dict[str, Any]:
        names = {f.name for f in msgspec.structs.fields(cls)}
        return {n: getattr(self, prefix + n) for n in names}

    def elves(self) -> Any:
        """The :class:`~fleetrpc.services.elves.ElvesSettings` of these values."""
        from ..services.elves.config import ElvesSettings

        return ElvesSettings(**self._fields("", ElvesSettings))

    def cron(self) -> Any:
        """The :class:`~fleetrpc.services.elves.cron.CronSettings` of these values."""
        from ..services.elves.cron import CronSettings

        return CronSettings(**self._fields("cron_", CronSettings))

    def cmdb(self) -> Any:
        """The :class:`~fleetrpc.services.elves.cmdb.CmdbSettings` of these values."""
        from ..services.elves.cmdb import CmdbSettings

        return CmdbSettings(**self._fields("cmdb_", CmdbSettings))
