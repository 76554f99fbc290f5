"""Constants shared by the compiled core and its pure twins (pure Python, so
both variants agree on every value)."""

from __future__ import annotations

from enum import IntEnum


class DeliveryStrategy(IntEnum):
    """How a device's queued calls are released (ThingsBoard's three)."""

    #: Send everything at once (up to the device's in-flight window).
    BURST = 0
    #: Send the next call once the device acknowledged receipt of the previous.
    SEQUENTIAL_ON_ACK = 1
    #: Send the next call once the previous got its reply, or timed out.
    SEQUENTIAL_ON_RESPONSE = 2


class Kind(IntEnum):
    """What an inbound MQTT message is, decided from its topic."""

    #: device -> server: the reply to a server-side call.
    REPLY = 1
    #: device -> server: delivery acknowledgement of a server-side call.
    ACK = 2
    #: device -> server: a client-side RPC request.
    CALL = 3
    #: device -> server: retained online/offline status (also the Last Will).
    PRESENCE = 4
    #: device -> server: periodic heartbeat with agent statistics.
    HEARTBEAT = 5
    #: an Elves service envelope ({"mqt", "mqs", "mqf", ...}).
    ELVES = 6
    #: server -> device: a server-side call (decoded by the device SDK).
    REQUEST = 7
    #: server -> device: the reply to a client-side call.
    RETURN = 8


#: Default topic prefix; every topic of the protocol starts with it.
DEFAULT_PREFIX = "fleetrpc"
#: Largest payload the codec accepts (bytes); larger ones are a CodecError.
DEFAULT_MAX_PAYLOAD = 256 * 1024
#: Longest device id / node id / method name accepted.
MAX_ID_LENGTH = 128
