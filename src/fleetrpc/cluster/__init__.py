"""Several fleetrpc nodes as one server: node identity, device partitions
and leases in the shared database (no cluster protocol of our own).

- :mod:`.identity`: node id (setting or generated, kept in the data
  directory) and a boot nonce per process start;
- :mod:`.partition`: :func:`partition_of` a device, the unit of ownership;
- :mod:`.table`: the lease table's semantics, and an in-memory twin;
- :mod:`.sql`: the same in PostgreSQL;
- :mod:`.leases`: :class:`LeaseManager`, one per node;
- :mod:`.settings`: the ``[cluster]`` settings.

docs/scaling.md explains the design and its limits.
"""

from .identity import NodeIdentity, generate_node_id, load_node_identity, validate_node_id
from .leases import LeaseManager, fair_share
from .partition import DEFAULT_PARTITIONS, partition_of
from .settings import ClusterSettings
from .table import LeaseTable, MemoryLeaseTable, PartitionCountMismatch

__all__ = [
    "DEFAULT_PARTITIONS",
    "ClusterSettings",
    "LeaseManager",
    "LeaseTable",
    "MemoryLeaseTable",
    "NodeIdentity",
    "PartitionCountMismatch",
    "fair_share",
    "generate_node_id",
    "load_node_identity",
    "partition_of",
    "validate_node_id",
]
