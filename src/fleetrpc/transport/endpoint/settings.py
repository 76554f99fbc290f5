"""The device endpoint's settings: one typed object, checked when built."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ..._core.constants import DEFAULT_PREFIX
from ...errors import ValidationError
from .limits import parse_rate_limits

_Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


def _doc(text: str, **constraints) -> msgspec.Meta:
    return msgspec.Meta(description=text, **constraints)


class EndpointSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Configuration of fleetrpc's own MQTT listener for devices.

    Each field's documentation is its ``Meta(description=...)``: the server's
    ``[endpoint]`` section (``fleetrpc.config``) is made from these fields, so
    ``--print-config`` and docs/configuration.md show the same text."""

    host: Annotated[str, _doc("Address to listen on.")] = "0.0.0.0"
    port: Annotated[_Port | None, _doc(
        "Plain TCP port (0: any free port; unset: no TCP listener).")] = 1883
    tls_port: Annotated[_Port | None, _doc(
        "TLS port (unset: no TLS listener); needs tls_cert and tls_key.")] = None
    tls_cert: Annotated[str | None, _doc("Certificate chain (PEM) of the TLS listener.")] = None
    tls_key: Annotated[str | None, _doc("Private key of tls_cert (PEM).")] = None
    tls_ca: Annotated[str | None, _doc(
        "CA bundle to verify client certificates with (unset: no client certificates asked).")] = None
    reuse_port: Annotated[bool, _doc(
        "Share port and tls_port with other processes of this machine (SO_REUSEPORT: the kernel "
        "spreads new connections over them): several fleetrpc serve nodes on one machine, one per "
        "core, each reaching every device through the broker (docs/endpoint.md).")] = False
    prefix: Annotated[str, _doc(
        "fleetrpc topic prefix: must be the dispatcher's (the server sets it from dispatch.prefix).")] = DEFAULT_PREFIX

    max_payload: Annotated[int, _doc(
        "Largest PUBLISH payload a device may send, and that is sent to it (ThingsBoard's "
        "default is 65536); a larger one closes the connection.", gt=0)] = 65536
    max_connections: Annotated[int, _doc(
        "Most connections at once; more are closed as soon as they are accepted.", gt=0)] = 100_000
    max_inflight: Annotated[int, _doc(
        "QoS 1 requests in flight to one session before more wait (MQTT 5 clients may ask for "
        "fewer with Receive Maximum); also getSessionLimits' maxInflightMessages.", ge=1, le=65000)] = 100
    rate_limit: Annotated[str | None, _doc(
        "Per-device message rate limit in ThingsBoard's format (\"200:1,6000:60,14000:3600\"); "
        "unset or empty: none. A device over its limit is disconnected, as ThingsBoard does.")] = None
    connect_timeout: Annotated[float, _doc(
        "Seconds a new connection has to complete CONNECT (and TLS).", gt=0)] = 10.0
    auth_timeout: Annotated[float, _doc(
        "Seconds authenticate (the access token's check against the device registry) may take; "
        "past it the CONNECT is refused with \"server unavailable\" (3.1.1 return code 3, MQTT 5 "
        "0x88) and the connection closes. It also extends connect_timeout for a connection "
        "waiting for it, and bounds a gateway's sub-device lookup (the name is then not bound).",
        gt=0)] = 5.0
    max_keepalive: Annotated[int, _doc(
        "Longest keepalive accepted, seconds; a device asking for more (or for 0, \"never\") gets "
        "this one (MQTT 5: Server Keep Alive), so that a half-open connection always ends. A "
        "connection silent for 1.5 keepalives is closed.", ge=1, le=65535)] = 600
    max_session_expiry: Annotated[int, _doc(
        "Longest session expiry granted, seconds. 0: a session ends with its connection. Above "
        "0, a device that reconnects with clean start off within the interval gets its "
        "subscriptions back (not its unacknowledged messages).", ge=0)] = 0
    max_stored_sessions: Annotated[int, _doc(
        "Disconnected sessions kept for their expiry interval (max_session_expiry above 0); past "
        "it the one stored longest ago is forgotten (its device reconnects without a session). "
        "One device keeps at most 16 (distinct client ids): more are not stored.",
        gt=0)] = 100_000
    write_high_water: Annotated[int, _doc(
        "Write buffer size (bytes) of one connection above which it counts as a slow reader.", gt=0)] = 64 * 1024
    slow_reader_grace: Annotated[float, _doc(
        "Seconds a slow reader may stay above write_high_water before it is disconnected.", gt=0)] = 10.0
    max_write_buffer: Annotated[int, _doc(
        "Write buffer size (bytes) at which a connection is dropped at once.", gt=0)] = 1024 * 1024
    mqtt_basic: Annotated[bool, _doc(
        "ThingsBoard's MQTT_BASIC credentials: connections without a user name are checked "
        "too (client id and password) instead of being refused.")] = False
    max_pending_responses: Annotated[int, _doc(
        "Two-way requests remembered per session awaiting their response, and requests "
        "waiting for room in the window of a device that does not acknowledge (the oldest "
        "is forgotten beyond; its call times out).", gt=0)] = 10_000
    max_subdevices: Annotated[int, _doc(
        "Sub-devices one gateway connection may have announced at once (v1/gateway/connect, or an "
        "attribute request for a new name), bound or being looked up; further names are refused, counted and logged until "
        "it disconnects some.", gt=0)] = 10_000
    max_client_calls: Annotated[int, _doc(
        "Client-side calls of one session awaiting the dispatcher's answer; more are answered "
        "with an error at once.", gt=0)] = 100
    write_batch_above: Annotated[int, _doc(
        "Write coalescing under load: while the dispatcher awaits at least this many replies, "
        "output to devices is written every write_batch_delay seconds instead of once per "
        "event-loop iteration, so that several messages for one device leave in one send "
        "(0: never).", ge=0)] = 0
    write_batch_delay: Annotated[float, _doc(
        "Interval of write coalescing, seconds.", gt=0, le=0.1)] = 0.001

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
