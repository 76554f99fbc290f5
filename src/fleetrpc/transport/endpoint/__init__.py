"""fleetrpc's own MQTT listener for devices (issue 13).

Devices written for ThingsBoard connect to it unchanged (access token as
user name, ``v1/devices/me/rpc/...``, the short ``v2/r/...`` topics, the
gateway API), and so do fleetrpc SDK devices (the topic layout of
docs/protocol.md).  It is a transport for the dispatcher, alone or beside
the broker (:class:`CompositeTransport`).  See docs/endpoint.md.
"""

from .composite import CompositeTransport
from .limits import RateLimit, parse_rate_limits
from .server import DeviceEndpoint, EndpointStats, Identity
from .settings import EndpointSettings

__all__ = [
    "CompositeTransport", "DeviceEndpoint", "EndpointSettings", "EndpointStats", "Identity",
    "RateLimit", "parse_rate_limits",
]
