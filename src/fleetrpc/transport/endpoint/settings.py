"""The device endpoint's settings: one typed object, checked when built."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ..._core.constants import DEFAULT_PREFIX
from ...errors import ValidationError
from .limits import parse_rate_limits

_ge0 = msgspec.Meta(ge=0)
_gt0 = msgspec.Meta(gt=0)


class EndpointSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Configuration of fleetrpc's own MQTT listener for devices."""

    #: Address to listen on.
    host: str = "0.0.0.0"
    #: Plain TCP port (0: any free port, see ``DeviceEndpoint.ports``; None: no TCP listener).
    port: int | None = 1883
    #: TLS port (None: no TLS listener); needs ``tls_cert`` and ``tls_key``.
    tls_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: CA bundle to verify client certificates with (None: no client certificates asked).
    tls_ca: str | None = None
    #: fleetrpc topic prefix: must be the dispatcher's ``Settings.prefix``.
    prefix: str = DEFAULT_PREFIX

    #: Largest PUBLISH payload a device may send, and that is sent to it
    #: (ThingsBoard's default is 65536); larger ones close the connection.
    max_payload: Annotated[int, _gt0] = 65536
    #: Most connections at once; more are closed as soon as they are accepted.
    max_connections: Annotated[int, _gt0] = 100_000
    #: QoS 1 requests in flight to one session before more wait (MQTT 5
    #: clients may ask for fewer with Receive Maximum); also what
    #: ``getSessionLimits`` reports as ``maxInflightMessages``.
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=65000)] = 100
    #: Per-device message rate limit in ThingsBoard's format
    #: (``"200:1,6000:60,14000:3600"``); None or "" for none.  A device over
    #: its limit is disconnected, as ThingsBoard does.
    rate_limit: str | None = None
    #: Seconds a new connection has to complete CONNECT (and TLS).
    connect_timeout: Annotated[float, _gt0] = 10.0
    #: Longest keepalive accepted; a device asking for more (or for 0, "never")
    #: gets this one (MQTT 5: Server Keep Alive) so that a half-open
    #: connection always ends.  A connection silent for 1.5 keepalives is closed.
    max_keepalive: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 600
    #: Longest session expiry granted (seconds).  0: a session ends with its
    #: connection and session-present is always 0.  Above 0, a device that
    #: reconnects with clean start off within the interval gets its
    #: subscriptions back (not its unacknowledged messages: the dispatcher's
    #: deadlines and retries own those).
    max_session_expiry: Annotated[int, _ge0] = 0
    #: Write buffer size of one connection above which it counts as a slow reader.
    write_high_water: Annotated[int, _gt0] = 64 * 1024
    #: Seconds a slow reader may stay above the high-water mark before it is disconnected.
    slow_reader_grace: Annotated[float, _gt0] = 10.0
    #: Write buffer size at which a connection is dropped at once.
    max_write_buffer: Annotated[int, _gt0] = 1024 * 1024
    #: ThingsBoard's MQTT_BASIC credentials: pass connections without a user
    #: name to ``authenticate`` too (it then checks client id and password)
    #: instead of refusing them with "bad user name or password".
    mqtt_basic: bool = False
    #: Two-way requests remembered per session awaiting their response
    #: (the oldest is forgotten beyond; its call times out).
    max_pending_responses: Annotated[int, _gt0] = 10_000
    #: Client-side calls of one session awaiting the dispatcher's answer;
    #: more are answered with an error at once.
    max_client_calls: Annotated[int, _gt0] = 100

    def __post_init__(self) -> None:
        parse_rate_limits(self.rate_limit)  # raises ValidationError naming the bad pair
        if self.port is None and self.tls_port is None:
            raise ValidationError("the device endpoint needs a port or a tls_port")
        if self.tls_port is not None and not (self.tls_cert and self.tls_key):
            raise ValidationError("tls_port needs tls_cert and tls_key")
        if self.max_write_buffer < self.write_high_water:
            raise ValidationError("max_write_buffer must be at least write_high_water")

    @property
    def max_packet(self) -> int:
        """Largest packet accepted (and advertised to MQTT 5 clients): the
        payload limit plus room for the topic and properties."""
        return self.max_payload + 8192
