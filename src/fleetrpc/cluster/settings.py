"""The cluster's settings: one typed section, ready to become
``ServerSettings.cluster`` (``[cluster]`` in fleetrpc.toml,
``FLEETRPC_CLUSTER_<KEY>`` in the environment).

The safety argument of the leases (docs/scaling.md, "Leases") needs
``renew_interval_s + margin_s < lease_ttl_s``: a node renews several times
per lease, and stops acting ``margin_s`` before the database would let
another node take over.  The margin also absorbs a node clock that runs
slow: a clock rate down to ``1 - margin_s / lease_ttl_s`` is tolerated
(20 % with the defaults); a clock's offset does not matter at all, since
expiry is decided on the database's clock.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from ..errors import ValidationError
from .partition import DEFAULT_PARTITIONS, MAX_PARTITIONS

__all__ = ["ClusterSettings"]


def _doc(text: str, **kw: Any) -> Meta:
    return Meta(description=text, **kw)


class ClusterSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Several nodes as one server: leases of device partitions and of singleton work."""

    enabled: Annotated[bool | None, _doc(
        "Run as one node of a cluster: persistent calls driven by the owner of their device's "
        "partition, jobs and center crons by the holder of their lease, client-side calls "
        "spread by a shared subscription. Unset: on with PostgreSQL, off with SQLite (one node; "
        "true with SQLite is refused).")] = None
    poll_interval_s: Annotated[float, _doc(
        "How often a node looks for unfinished calls of its partitions that it does not drive "
        "yet (stored by another node, whose notification it missed). New calls stored by another "
        "node normally reach the owner at once through a database notification.",
        gt=0, le=3600)] = 5.0

    partitions: Annotated[int, _doc(
        "Number of device partitions, the unit of ownership of persistent calls. Every node "
        "of a cluster must use the same number; changing it needs every node stopped.",
        ge=1, le=MAX_PARTITIONS)] = DEFAULT_PARTITIONS
    lease_ttl_s: Annotated[float, _doc(
        "Lease time: a node that stops renewing loses its partitions and named leases this "
        "long after its last renewal (on the database's clock); the others take them over.",
        gt=0, le=3600)] = 5.0
    # (Optional outside Annotated: msgspec sets bounds on numbers only.)
    margin_s: Annotated[float, _doc(
        "A node stops acting on its leases this long before they would expire. "
        "Unset: a fifth of lease_ttl_s.", ge=0)] | None = None
    renew_interval_s: Annotated[float, _doc(
        "Seconds between renewals. Unset: a quarter of lease_ttl_s.", gt=0)] | None = None
    claim_interval_s: Annotated[float, _doc(
        "Seconds between rounds while this node holds fewer partitions than its share "
        "(joining, or taking over a dead node's). Unset: a twentieth of lease_ttl_s.", gt=0)] | None = None
    release_timeout_s: Annotated[float, _doc(
        "How long a hand-over waits for on_lost callbacks (in-flight work to stop) before "
        "releasing partitions anyway.", gt=0)] = 1.0

    def __post_init__(self) -> None:
        if self.margin >= self.lease_ttl_s or self.renew_interval + self.margin >= self.lease_ttl_s:
            raise ValidationError(
                f"cluster: renew_interval_s ({self.renew_interval:g}) + margin_s ({self.margin:g}) must be "
                f"shorter than lease_ttl_s ({self.lease_ttl_s:g})"
            )
        if self.claim_interval > self.renew_interval:
            raise ValidationError("cluster: claim_interval_s must not be longer than renew_interval_s")

    @property
    def margin(self) -> float:
        return self.lease_ttl_s / 5 if self.margin_s is None else self.margin_s

    @property
    def renew_interval(self) -> float:
        return self.lease_ttl_s / 4 if self.renew_interval_s is None else self.renew_interval_s

    @property
    def claim_interval(self) -> float:
        default = min(self.lease_ttl_s / 20, self.renew_interval)
        return default if self.claim_interval_s is None else self.claim_interval_s

    @property
    def lease_ttl_ms(self) -> int:
        return max(1, round(self.lease_ttl_s * 1000))
