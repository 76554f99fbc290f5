"""Device partitions: the unit of ownership of persistent work.

A device belongs to one partition for as long as the cluster's partition
count stays the same; the node holding a partition's lease keeps that
device's one sequential queue.  The hash is BLAKE2b (stable across
processes, Python versions and machines, unlike ``hash()``), reduced modulo
the partition count.  Changing the count moves nearly every device, so it
is a whole-cluster change (every node stopped; see docs/scaling.md).
"""

from __future__ import annotations

from hashlib import blake2b

from ..errors import ValidationError

__all__ = ["DEFAULT_PARTITIONS", "MAX_PARTITIONS", "partition_of"]

DEFAULT_PARTITIONS = 1024
MAX_PARTITIONS = 1 << 24


def partition_of(device_id: str, partitions: int = DEFAULT_PARTITIONS) -> int:
    """The partition of ``device_id``: in ``range(partitions)``, the same in
    every process.  About 0.4 us per call."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValidationError(f"partitions must be in 1..{MAX_PARTITIONS}, not {partitions!r}")
    digest = blake2b(device_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions
