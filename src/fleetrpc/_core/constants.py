"""Constants shared by the compiled core and its pure twins (pure Python, so
both variants agree on every value).

The wire's constants live in :mod:`fleetrpc.wire.constants` and are
re-exported here for the compiled modules; the core imports the wire
package, never the other way round."""

from __future__ import annotations

from enum import IntEnum

from ..wire.constants import DEFAULT_MAX_PAYLOAD, DEFAULT_PREFIX, MAX_ID_LENGTH, Kind

__all__ = ["DeliveryStrategy", "Kind", "DEFAULT_PREFIX", "DEFAULT_MAX_PAYLOAD", "MAX_ID_LENGTH"]


class DeliveryStrategy(IntEnum):
    """How a device's queued calls are released (ThingsBoard's three)."""

    #: Send everything at once (up to the device's in-flight window).
    BURST = 0
    #: Send the next call once the device acknowledged receipt of the previous.
    SEQUENTIAL_ON_ACK = 1
    #: Send the next call once the previous got its reply, or timed out.
    SEQUENTIAL_ON_RESPONSE = 2
