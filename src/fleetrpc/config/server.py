"""``fleetrpc serve``'s settings: one typed section per part of the server.

Sources, in rising priority: the defaults below, a TOML file (``--config``,
else ``$FLEETRPC_CONFIG``, else ``./fleetrpc.toml`` when it exists), and
environment variables ``FLEETRPC_<SECTION>_<KEY>`` (``FLEETRPC_HTTP_PORT=9090``,
``FLEETRPC_MQTT_URL=mqtts://broker:8883``; list values as JSON or comma
separated, tables as a JSON object).  Everything is checked when loaded: a wrong type, a value out of
range or an unknown key raises :class:`~fleetrpc.errors.ValidationError`
naming the key (``http.port``) and where it came from.

Every field's documentation is its ``Meta(description=...)``: one text that
``fleetrpc serve --print-config`` prints and docs/configuration.md repeats.

With no configuration at all the server runs embedded: SQLite in
``server.data_dir``, its own broker (Mosquitto when installed, else amqtt),
a JWT signing key generated once into the data directory.
"""

from __future__ import annotations

import json
import os
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import msgspec
from msgspec import Meta

from .._core.constants import DEFAULT_MAX_PAYLOAD, DEFAULT_PREFIX, DeliveryStrategy
from ..errors import ValidationError
from ..cluster.settings import ClusterSettings
from .elves import ElvesSection
from .library import Settings, _default_node_id

__all__ = [
    "AuthSection",
    "ClientRpcSection",
    "DispatchSection",
    "ElvesSection",
    "EndpointSection",
    "DynsecSection",
    "EmqxSection",
    "EventsSection",
    "HttpSection",
    "JobsSection",
    "JwtSection",
    "MqttSection",
    "RateLimitsSection",
    "RpcSection",
    "ServerSection",
    "ServerSettings",
    "StoreSection",
    "env_name",
    "load_server_settings",
]

#: Marks a field whose value --print-config never shows.
SECRET = {"secret": True}
MiB = 1024 * 1024


def _doc(text: str, **kw: Any) -> Meta:
    return Meta(description=text, **kw)


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


# -- sections -----------------------------------------------------------------------


class ServerSection(_Section):
    """The process as a whole."""

    data_dir: Annotated[str, _doc(
        "Directory of the embedded defaults: the SQLite database when store.url is unset, "
        "the generated JWT signing key when jwt.secret is unset. Created if missing.")] = "fleetrpc-data"
    broker: Annotated[Literal["auto", "mosquitto", "embedded"], _doc(
        "Which broker to start when mqtt.url is unset: mosquitto, embedded (amqtt, MQTT 3.1.1 "
        "only), or auto (Mosquitto when installed, else amqtt).")] = "auto"
    broker_host: Annotated[str, _doc(
        "Address the server's own broker listens on (devices on other machines need 0.0.0.0).")] = "127.0.0.1"
    broker_port: Annotated[int, _doc(
        "Port of the server's own broker (0: any free port; the console shows the one in use).",
        ge=0, le=65535)] = 0
    drain_timeout_s: Annotated[float, _doc(
        "On SIGTERM/SIGINT: how long calls in flight may still finish before they are "
        "answered 503; persistent writes are flushed after that.", ge=0, le=3600)] = 10.0
    activity_flush_s: Annotated[float, _doc(
        "How often the devices' last activity is written to the database (it is kept in "
        "memory in between; also written when the server stops).", gt=0, le=3600)] = 10.0
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], _doc(
        "Level of the server's logs.")] = "INFO"
    log_format: Annotated[Literal["text", "json"], _doc(
        "text: one human-readable line per record; json: one JSON object per line "
        "(time, level, logger, message and the record's fields).")] = "text"


class MqttSection(_Section):
    """The server's own connection to the broker."""

    url: Annotated[str | None, _doc(
        "Broker URL: mqtt://host:1883 or mqtts://host:8883 (TLS). Unset: the server starts "
        "its own broker (server.broker).")] = None
    username: Annotated[str | None, _doc("Username of the server's broker account.")] = None
    password: Annotated[str | None, _doc("Password of the server's broker account.", extra=SECRET)] = None
    tls: Annotated[bool, _doc("Use TLS even with an mqtt:// URL.")] = False
    tls_ca: Annotated[str | None, _doc("CA bundle (PEM) that signed the broker's certificate.")] = None
    tls_cert: Annotated[str | None, _doc("Client certificate (PEM) for mutual TLS.")] = None
    tls_key: Annotated[str | None, _doc("Key of tls_cert (PEM).")] = None
    tls_insecure: Annotated[bool, _doc("Skip the broker's certificate check (tests only).")] = False
    keepalive: Annotated[int, _doc("MQTT keep-alive in seconds.", ge=5, le=65535)] = 60
    version: Annotated[Literal[4, 5], _doc("MQTT version of the connection: 4 (3.1.1) or 5.")] = 5
    qos: Annotated[Literal[0, 1], _doc("QoS of requests and replies.")] = 1
    response_topic: Annotated[bool, _doc(
        "Also send MQTT 5 Response Topic and Correlation Data (for generic MQTT 5 responders; "
        "costs CPU per call).")] = False
    reconnect_delay: Annotated[float, _doc("First delay between reconnect attempts, seconds.", gt=0)] = 0.5
    reconnect_max: Annotated[float, _doc("Longest delay between reconnect attempts, seconds.", gt=0)] = 10.0
    read_batch_above: Annotated[int, _doc(
        "While at least this many calls await replies, read the broker connection at most "
        "once per read_batch_ms (0: off).", ge=0)] = 256
    read_batch_ms: Annotated[float, _doc("Read batching interval, ms.", gt=0, le=1000)] = 1.0


class DynsecSection(_Section):
    """Devices authenticate at Mosquitto: fleetrpc provisions its dynamic security plugin."""

    enabled: Annotated[bool, _doc(
        "Devices connect with their access token (username and password) and reach only their "
        "own topics. The broker the server starts itself (mqtt.url unset, Mosquitto) runs the "
        "plugin, preloaded from the device table. With mqtt.url (an external Mosquitto loading "
        "the plugin), devices are provisioned when admin_password is set. false: the server's "
        "own broker lets anonymous clients in (development only) and nothing is provisioned.")] = True
    admin_username: Annotated[str, _doc(
        "The plugin's admin account on an external Mosquitto (mosquitto_ctrl dynsec init's).")] = "fleetrpc-admin"
    admin_password: Annotated[str | None, _doc(
        "Password of admin_username; setting it turns provisioning on with mqtt.url.",
        extra=SECRET)] = None
    timeout_s: Annotated[float, _doc("How long one batch of plugin commands may take, seconds.", gt=0)] = 10.0
    batch: Annotated[int, _doc("Plugin commands sent in one control message.", ge=1, le=10_000)] = 200


class EmqxSection(_Section):
    """Devices authenticate at EMQX: the HTTP hooks EMQX calls (docs/emqx.md)."""

    enabled: Annotated[bool, _doc(
        "Serve EMQX's HTTP authentication (POST /api/emqx/authn) and authorisation "
        "(POST /api/emqx/authz) hooks on the HTTP port.")] = False
    secret: Annotated[str | None, _doc(
        "Shared secret EMQX sends in secret_header; required when enabled (at least 16 "
        "characters).", extra=SECRET)] = None
    secret_header: Annotated[str, _doc("The header carrying the secret.")] = "X-Fleetrpc-Hook-Secret"

    def __post_init__(self) -> None:
        if self.enabled and not self.secret:
            raise ValidationError("emqx.secret is required when emqx.enabled is true")
        if self.secret is not None and len(self.secret) < 16:
            raise ValidationError("emqx.secret must be at least 16 characters")


class DispatchSection(_Section):
    """The dispatcher: topics, queues, timeouts."""

    prefix: Annotated[str, _doc("First level of every fleetrpc topic.")] = DEFAULT_PREFIX
    node_id: Annotated[str | None, _doc(
        "This node's id (replies come back on its topics). Unset: host name and process id.")] = None
    share_group: Annotated[str | None, _doc(
        "Shared-subscription group for client-side calls, when several nodes split them.")] = None
    max_payload: Annotated[int, _doc("Largest MQTT payload accepted, bytes.", ge=1024)] = DEFAULT_MAX_PAYLOAD
    default_timeout_ms: Annotated[int, _doc(
        "Timeout of a call that names none (ThingsBoard: 10000).", gt=0)] = 10_000
    min_timeout_ms: Annotated[int, _doc(
        "Shorter timeouts are raised to this (ThingsBoard: 5000).", ge=0)] = 5_000
    strategy: Annotated[Literal["BURST", "SEQUENTIAL_ON_ACK", "SEQUENTIAL_ON_RESPONSE"], _doc(
        "Default delivery strategy of a device's queued calls.")] = "BURST"
    queue_cap: Annotated[int, _doc("Most calls held for one device.", ge=1)] = 100
    device_window: Annotated[int, _doc(
        "Most calls in flight to one device under BURST (the sequential strategies send one at a "
        "time); more wait in its queue (queue_cap). 0: a tenth of inflight_window, so that one "
        "busy or dead device never takes the node's whole window.", ge=0)] = 0
    inflight_window: Annotated[int, _doc("Most requests in flight from this node.", ge=1)] = 20_000
    client_call_window: Annotated[int, _doc(
        "Most client-side calls (a device asks) whose handler is still running on this node; one "
        "device has at most queue_cap of them (getSessionLimits' maxInflightMessages). A call "
        "beyond gets an APPLICATION_ERROR \"busy\" reply at once.", ge=1)] = 10_000
    broker_down: Annotated[Literal["wait", "fail"], _doc(
        "A lightweight call while the broker connection is down: wait (sent once the connection "
        "is back; 503 \"broker unavailable\" if its deadline passes first) or fail (503 at once). "
        "Persistent calls always wait.")] = "wait"
    reject_log_interval_s: Annotated[float, _doc(
        "Rejected inbound messages (malformed, forged, for calls never made) are counted per "
        "reason in /metrics; the log gets the first at once, then one summary line per interval. "
        "Replies to calls that have ended (late, one-way) are counted, never logged.",
        gt=0)] = 10.0
    presence: Annotated[bool, _doc("Track device presence (online state, last activity).")] = True
    presence_max_devices: Annotated[int, _doc(
        "Most devices whose presence and heartbeats are kept (the least recently heard of leave "
        "first): set it above the fleet's size. Bounds the memory that presence and heartbeats "
        "for made-up device ids can take, and the devices online on the broker that a node "
        "sharing devices (endpoint, cluster) follows.", ge=1)] = 100_000
    presence_ttl_s: Annotated[float, _doc(
        "An offline device not heard of for this many seconds is forgotten.", gt=0)] = 3600.0
    max_heartbeat_bytes: Annotated[int, _doc(
        "Largest heartbeat body kept, bytes (of a larger one: its time, and those of its top-level "
        "fields that fit together).", ge=0)] = 4096
    tick_ms: Annotated[float, _doc("Resolution of the timing wheel, ms.", gt=0, le=1000)] = 5.0


class StoreSection(_Section):
    """Persistent RPCs and the entities: the database."""

    url: Annotated[str | None, _doc(
        "sqlite:///relative.db, sqlite:////absolute.db or postgresql://user:pw@host/db. "
        "Unset: SQLite in server.data_dir.", extra=SECRET)] = None
    default_retries: Annotated[int, _doc(
        "Retries of a persistent call that names none (retries absent, null or \"\"): 0, as "
        "ThingsBoard's RPC guide says; ThingsBoard's code retries max_retries times then (set "
        "this to max_retries for that).", ge=0)] = 0
    max_retries: Annotated[int, _doc(
        "Most retries a persistent call may ask for; more are capped.", ge=0)] = 5
    ttl_enabled: Annotated[bool, _doc("Delete finished persistent calls after ttl_days.")] = True
    ttl_days: Annotated[int, _doc("Age in whole days after which finished persistent calls are deleted "
                                  "(0: keep them, as ThingsBoard's RPC TTL days).", ge=0)] = 30
    ttl_check_interval_s: Annotated[float, _doc("How often the TTL clean-up runs, seconds.", gt=0)] = 7200.0
    max_devices_per_tenant: Annotated[int, _doc(
        "Most devices one tenant may have, however they are created (REST API, a gateway "
        "announcing a new name on the device endpoint, the demo data of serve --demo and "
        "admin load-demo); creating one more answers 403 "
        "\"Devices limit reached\" (errorCode 41), as ThingsBoard's tenant profile maxDevices "
        "does. 0: no limit (ThingsBoard's default profile).", ge=0)] = 0


class RpcSection(_Section):
    """ThingsBoard's REST RPC behaviour."""

    offline_fail_fast: Annotated[bool, _doc(
        "A lightweight call to a device that is not connected answers 409 (v1) / 504 (v2) at "
        "once. Off (ThingsBoard's behaviour): the call waits for the device until its timeout "
        "and is delivered if the device connects meanwhile.")] = False


class JobsSection(_Section):
    """Fleet jobs: one RPC to many devices (docs/jobs.md)."""

    ttl_days: Annotated[int, _doc(
        "Age in whole days after which finished jobs (completed, aborted, cancelled, failed) are "
        "deleted with their per-device results, checked every store.ttl_check_interval_s "
        "(0: keep them).", ge=0)] = 30


#: ``client_rpc.webhook_methods`` entry that sends every method nobody else
#: answers to the webhook.
EVERY_METHOD = "*"


class ClientRpcSection(_Section):
    """Client-side RPC: how the server answers devices' own calls (ThingsBoard's rule engine)."""

    builtins: Annotated[bool, _doc(
        "Answer getCurrentTime (epoch ms) and getSessionLimits (ThingsBoard's session limits).")] = True
    handlers: Annotated[dict[str, str], _doc(
        "method = \"package.module:function\" or the name of an entry point in the group "
        "fleetrpc.client_rpc; the function takes (device_id, params), plain or async, and returns "
        "the answer.")] = msgspec.field(default_factory=dict)
    webhook_url: Annotated[str | None, _doc(
        "POST the calls of webhook_methods here as JSON {deviceId, tenantId, method, params}; "
        "the response body is the answer.")] = None
    webhook_methods: Annotated[list[str], _doc(
        "The methods forwarded to webhook_url; \"*\" forwards every method that no built-in "
        "or handler answers.")] = msgspec.field(default_factory=list)
    webhook_timeout_s: Annotated[float, _doc(
        "How long the webhook may take; then the device gets an error reply.", gt=0, le=300)] = 5.0
    webhook_headers: Annotated[dict[str, str], _doc(
        "Extra headers of every webhook request (e.g. a shared secret).", extra=SECRET)] = \
        msgspec.field(default_factory=dict)
    webhook_max_inflight: Annotated[int, _doc(
        "Most webhook calls waiting for their answer at once, all devices together; beyond, a "
        "device's call gets an error reply at once (a device has at most its maxInflightMessages "
        "in flight).", ge=1)] = 1000
    rate_limit_messages: Annotated[str | None, _doc(
        "getSessionLimits' rateLimits.messages (ThingsBoard's capacity:seconds,... syntax).")] = \
        "200:1,6000:60,14000:3600"
    rate_limit_telemetry_messages: Annotated[str | None, _doc(
        "getSessionLimits' rateLimits.telemetryMessages.")] = "100:1,3000:60,7000:3600"
    rate_limit_telemetry_data_points: Annotated[str | None, _doc(
        "getSessionLimits' rateLimits.telemetryDataPoints.")] = "200:1,6000:60,14000:3600"

    def __post_init__(self) -> None:
        if self.webhook_methods and not self.webhook_url:
            raise ValidationError("client_rpc.webhook_methods needs client_rpc.webhook_url")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValidationError(f"client_rpc.webhook_url must be an http(s) URL, got {self.webhook_url!r}")
        taken = set(self.handlers) & set(self.webhook_methods)
        if taken:
            raise ValidationError(f"client_rpc: methods {sorted(taken)} are both in handlers and webhook_methods")

    @property
    def webhook_takes_every_method(self) -> bool:
        return EVERY_METHOD in self.webhook_methods


class HttpSection(_Section):
    """The HTTP API."""

    host: Annotated[str, _doc("Address to listen on.")] = "127.0.0.1"
    port: Annotated[int, _doc("Port to listen on (0: any free port).", ge=0, le=65535)] = 8080
    tls_cert: Annotated[str | None, _doc("Certificate chain (PEM): serve HTTPS. Needs tls_key.")] = None
    tls_key: Annotated[str | None, _doc("Private key of tls_cert (PEM).")] = None
    max_body_bytes: Annotated[int, _doc(
        "Largest request body (Content-Length) under /api; larger ones get 413 "
        "(ThingsBoard: 16 MiB).", ge=1)] = 16 * MiB
    access_log: Annotated[bool, _doc("Log one line per request.")] = True
    docs: Annotated[bool, _doc("Serve /api/openapi.json and the docs page /api/docs.")] = True
    metrics_token: Annotated[str | None, _doc(
        "Bearer token GET /metrics asks for (Prometheus' authorization.credentials; not empty, "
        "no surrounding spaces); its series name tenants by id. Unset: /metrics is open to whoever "
        "reaches this port.",
        extra=SECRET)] = None


class JwtSection(_Section):
    """Tokens, as ThingsBoard issues them."""

    secret: Annotated[str | None, _doc(
        "HS512 signing key, at least 64 characters. Unset: a random key generated once into "
        "server.data_dir/jwt-secret.", extra=SECRET)] = None
    previous_secrets: Annotated[list[str], _doc(
        "Keys still accepted for verification (rotation without logging everyone out): put "
        "the old secret here and a new one in secret.", extra=SECRET)] = msgspec.field(default_factory=list)
    issuer: Annotated[str, _doc("The iss claim.")] = "thingsboard.io"
    access_ttl_s: Annotated[int, _doc("Lifetime of an access token, seconds.", ge=60)] = 9000
    refresh_ttl_s: Annotated[int, _doc("Lifetime of a refresh token, seconds.", ge=900)] = 604800
    cache_size: Annotated[int, _doc(
        "Validated access tokens kept decoded (a decode costs ~60 us); 0: no cache.", ge=0)] = 10_000
    activation_ttl_s: Annotated[int, _doc(
        "Lifetime of a user's activation link (GET /api/user/{id}/activationLink), seconds "
        "(ThingsBoard: 24 h).", ge=60)] = 86400


class AuthSection(_Section):
    """Logins."""

    max_failed_logins: Annotated[int, _doc(
        "Failed logins in a row after which an account is locked for lockout_s (0: never).", ge=0)] = 5
    lockout_s: Annotated[float, _doc("How long a locked account stays locked, seconds.", ge=0)] = 300.0
    failed_login_delay_ms: Annotated[int, _doc(
        "A failed login is answered after this delay, doubled per failure in a row (at most "
        "4 s): slows guessing.", ge=0, le=10_000)] = 250
    sysadmin_email: Annotated[str | None, _doc(
        "First start: create this system administrator when none exists. A database without "
        "any user refuses to start unless this is set (or `fleetrpc admin create-sysadmin` "
        "was run, or --demo is given).")] = None
    sysadmin_password: Annotated[str | None, _doc(
        "Password of sysadmin_email (never a built-in default); prefer "
        "sysadmin_password_file or the environment variable to a password in the file.",
        extra=SECRET)] = None
    sysadmin_password_file: Annotated[str | None, _doc(
        "File whose first line is the password of sysadmin_email (e.g. a container "
        "secret); instead of sysadmin_password.")] = None


class RateLimitsSection(_Section):
    """Requests per tenant and per user (token buckets); over the limit: 429, errorCode 33."""

    tenant_per_s: Annotated[float, _doc("Sustained requests per second of one tenant (0: unlimited).", ge=0)] = 0.0
    tenant_burst: Annotated[int, _doc("Requests a tenant may make at once above the rate.", ge=1)] = 1000
    user_per_s: Annotated[float, _doc("Sustained requests per second of one user (0: unlimited).", ge=0)] = 0.0
    user_burst: Annotated[int, _doc("Requests a user may make at once above the rate.", ge=1)] = 200


class EventsSection(_Section):
    """Where RPC events (RPC_CALL_FROM_SERVER_TO_DEVICE, RPC_QUEUED ... RPC_DELETED, TO_SERVER_RPC_REQUEST) go."""

    webhook_urls: Annotated[list[str], _doc(
        "POST each batch of events as a JSON array to these URLs.")] = msgspec.field(default_factory=list)
    mqtt_topic: Annotated[str | None, _doc(
        "Publish each event on {mqtt_topic}/{type} through the server's broker connection.")] = None
    buffer: Annotated[int, _doc("Events buffered per sink; the oldest are dropped (and counted) beyond.", ge=1)] = 10_000
    buffer_mib: Annotated[int, _doc(
        "MiB of events buffered per sink (each counted as its JSON); the oldest are dropped (and "
        "counted) beyond, and an event larger than this by itself is dropped.", ge=1)] = 64


def _endpoint_section() -> type[_Section]:
    """``[endpoint]``: ``enabled``, the cache of the device registry and
    ``share_devices`` (the server's), then every field of
    :class:`EndpointSettings` but ``prefix`` (the dispatcher's), with its
    own type, constraints and documentation: the endpoint's settings are
    described in one place."""
    from ..transport.endpoint.settings import EndpointSettings

    fields: list[tuple[str, Any, Any]] = [
        ("enabled", Annotated[bool, _doc(
            "Listen for devices directly (ThingsBoard's device MQTT API and fleetrpc's own "
            "topics), beside the broker; docs/endpoint.md.")], False),
        ("auth_cache_size", Annotated[int, _doc(
            "Access tokens whose device is kept in memory (a reconnect costs no query); "
            "0: none.", ge=0)], 100_000),
        ("auth_cache_ttl_s", Annotated[float, _doc(
            "Longest time a cached token is trusted without asking the database again "
            "(changes of tokens are seen at once; a device made a gateway after this).", gt=0)], 300.0),
        ("share_devices", Annotated[bool, _doc(
            "Stand in on the broker for the devices connected here (their presence, a subscription "
            "to their requests), so that every node reaches them; off saves a subscription and a "
            "retained message per device on the broker where there is one node only.")], True),
    ]
    hints = typing.get_type_hints(EndpointSettings, include_extras=True)
    for field in msgspec.structs.fields(EndpointSettings):
        if field.name != "prefix":
            fields.append((field.name, hints[field.name], field.default))
    cls = msgspec.defstruct("EndpointSection", fields, bases=(_Section,), module=__name__,
                            kw_only=True, forbid_unknown_fields=True)
    cls.__doc__ = "fleetrpc's own MQTT listener for devices (off unless enabled)."
    return cls


EndpointSection = _endpoint_section()


SECTIONS: dict[str, type[_Section]] = {
    "server": ServerSection,
    "mqtt": MqttSection,
    "dynsec": DynsecSection,
    "emqx": EmqxSection,
    "dispatch": DispatchSection,
    "store": StoreSection,
    "rpc": RpcSection,
    "jobs": JobsSection,
    "client_rpc": ClientRpcSection,
    "http": HttpSection,
    "jwt": JwtSection,
    "auth": AuthSection,
    "rate_limits": RateLimitsSection,
    "events": EventsSection,
    "elves": ElvesSection,
    "endpoint": EndpointSection,
    "cluster": ClusterSettings,  # type: ignore[dict-item]
}

#: Every field of the library's flat :class:`Settings` and where the server's
#: sections set it (section, key).  A field missing here is a test failure
#: (tests/server/test_config.py): a new library setting must be mapped or
#: listed in :data:`LIBRARY_ONLY`.
LIBRARY_MAP: dict[str, tuple[str, str]] = {
    "mqtt_url": ("mqtt", "url"),
    "mqtt_username": ("mqtt", "username"),
    "mqtt_password": ("mqtt", "password"),
    "mqtt_tls": ("mqtt", "tls"),
    "mqtt_tls_ca": ("mqtt", "tls_ca"),
    "mqtt_tls_cert": ("mqtt", "tls_cert"),
    "mqtt_tls_key": ("mqtt", "tls_key"),
    "mqtt_tls_insecure": ("mqtt", "tls_insecure"),
    "mqtt_keepalive": ("mqtt", "keepalive"),
    "mqtt_version": ("mqtt", "version"),
    "qos": ("mqtt", "qos"),
    "response_topic": ("mqtt", "response_topic"),
    "reconnect_delay": ("mqtt", "reconnect_delay"),
    "reconnect_max": ("mqtt", "reconnect_max"),
    "read_batch_above": ("mqtt", "read_batch_above"),
    "read_batch_ms": ("mqtt", "read_batch_ms"),
    "prefix": ("dispatch", "prefix"),
    "node_id": ("dispatch", "node_id"),
    "share_group": ("dispatch", "share_group"),
    "max_payload": ("dispatch", "max_payload"),
    "default_timeout_ms": ("dispatch", "default_timeout_ms"),
    "min_timeout_ms": ("dispatch", "min_timeout_ms"),
    "strategy": ("dispatch", "strategy"),
    "queue_cap": ("dispatch", "queue_cap"),
    "device_window": ("dispatch", "device_window"),
    "inflight_window": ("dispatch", "inflight_window"),
    "client_call_window": ("dispatch", "client_call_window"),
    "broker_down": ("dispatch", "broker_down"),
    "reject_log_interval_s": ("dispatch", "reject_log_interval_s"),
    "presence": ("dispatch", "presence"),
    "presence_max_devices": ("dispatch", "presence_max_devices"),
    "presence_ttl_s": ("dispatch", "presence_ttl_s"),
    "max_heartbeat_bytes": ("dispatch", "max_heartbeat_bytes"),
    "tick_ms": ("dispatch", "tick_ms"),
    "store_url": ("store", "url"),
    "default_retries": ("store", "default_retries"),
    "max_retries": ("store", "max_retries"),
    "ttl_enabled": ("store", "ttl_enabled"),
    "ttl_days": ("store", "ttl_days"),
    "ttl_check_interval_s": ("store", "ttl_check_interval_s"),
    "http_host": ("http", "host"),
    "http_port": ("http", "port"),
}
#: Library settings the server leaves at their defaults, with the reason.
LIBRARY_ONLY: dict[str, str] = {
    "offline": "the REST API applies rpc.offline_fail_fast itself (ThingsBoard waits by default)",
}


class ServerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything ``fleetrpc serve`` reads; see the section classes."""

    server: ServerSection = msgspec.field(default_factory=ServerSection)
    mqtt: MqttSection = msgspec.field(default_factory=MqttSection)
    dynsec: DynsecSection = msgspec.field(default_factory=DynsecSection)
    emqx: EmqxSection = msgspec.field(default_factory=EmqxSection)
    dispatch: DispatchSection = msgspec.field(default_factory=DispatchSection)
    store: StoreSection = msgspec.field(default_factory=StoreSection)
    rpc: RpcSection = msgspec.field(default_factory=RpcSection)
    jobs: JobsSection = msgspec.field(default_factory=JobsSection)
    client_rpc: ClientRpcSection = msgspec.field(default_factory=ClientRpcSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)
    jwt: JwtSection = msgspec.field(default_factory=JwtSection)
    auth: AuthSection = msgspec.field(default_factory=AuthSection)
    rate_limits: RateLimitsSection = msgspec.field(default_factory=RateLimitsSection)
    events: EventsSection = msgspec.field(default_factory=EventsSection)
    elves: ElvesSection = msgspec.field(default_factory=ElvesSection)
    endpoint: EndpointSection = msgspec.field(default_factory=EndpointSection)  # type: ignore[valid-type]
    cluster: ClusterSettings = msgspec.field(default_factory=ClusterSettings)

    def __post_init__(self) -> None:
        # Checks across fields; each message names the keys involved.
        if (self.http.tls_cert is None) != (self.http.tls_key is None):
            raise ValidationError("http.tls_cert and http.tls_key go together: set both or neither")
        for key in ("tls_cert", "tls_key"):
            path = getattr(self.http, key)
            if path is not None and not os.path.isfile(path):
                raise ValidationError(f"http.{key}: no such file {path!r}")
        token = self.http.metrics_token
        if token is not None and (not token.strip() or token != token.strip()):
            # "" would refuse every scrape ("Bearer " arrives as "Bearer"),
            # and so would spaces around a token: a header loses its own.
            raise ValidationError(
                "http.metrics_token must not be empty nor begin or end with whitespace "
                "(leave it unset to serve /metrics without a token)")
        if self.jwt.access_ttl_s >= self.jwt.refresh_ttl_s:
            raise ValidationError("jwt.access_ttl_s must be shorter than jwt.refresh_ttl_s")
        for key, value in (("jwt.secret", self.jwt.secret), *(
            (f"jwt.previous_secrets[{i}]", s) for i, s in enumerate(self.jwt.previous_secrets)
        )):
            if value is not None and len(value) < 64:
                raise ValidationError(f"{key} must be at least 64 characters (512 bits, as ThingsBoard and RFC 7518 ask of an HS512 key)")
        a = self.auth
        passwords = (a.sysadmin_password is not None) + (a.sysadmin_password_file is not None)
        if passwords > 1:
            raise ValidationError("auth.sysadmin_password and auth.sysadmin_password_file: set one, not both")
        if (a.sysadmin_email is None) != (passwords == 0):
            raise ValidationError(
                "auth.sysadmin_email and auth.sysadmin_password (or auth.sysadmin_password_file) go together")
        if a.sysadmin_password_file is not None and not os.path.isfile(a.sysadmin_password_file):
            raise ValidationError(f"auth.sysadmin_password_file: no such file {a.sysadmin_password_file!r}")
        if self.mqtt.reconnect_max < self.mqtt.reconnect_delay:
            raise ValidationError("mqtt.reconnect_max must be >= mqtt.reconnect_delay")
        if self.cluster.enabled and not self.store_url.startswith(("postgresql:", "postgres:")):
            raise ValidationError(
                "cluster.enabled needs PostgreSQL (store.url): a SQLite database serves one node")
        if self.endpoint.enabled:
            try:
                self.endpoint_settings()
            except ValidationError as exc:
                raise ValidationError(f"endpoint: {exc}") from None

    # -- derived values --

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def store_url(self) -> str:
        """store.url, or the embedded SQLite database in the data directory."""
        if self.store.url:
            return self.store.url
        return f"sqlite:///{(self.data_dir / 'fleetrpc.db').resolve()}"  # absolute: sqlite:////...

    @property
    def clustered(self) -> bool:
        """Whether this node is one of a cluster (``cluster.enabled``, by
        default whenever the store is PostgreSQL)."""
        if self.cluster.enabled is not None:
            return self.cluster.enabled
        return self.store_url.startswith(("postgresql:", "postgres:"))

    @property
    def embedded_broker(self) -> bool:
        return self.mqtt.url is None

    def endpoint_settings(self) -> Any:
        """The device endpoint's :class:`EndpointSettings` from ``[endpoint]``
        (its prefix is the dispatcher's)."""
        from ..transport.endpoint.settings import EndpointSettings

        known = {field.name for field in msgspec.structs.fields(EndpointSettings)}
        values = {k: v for k, v in msgspec.structs.asdict(self.endpoint).items() if k in known}
        return EndpointSettings(prefix=self.dispatch.prefix, **values)

    def library(self, **overrides: Any) -> Settings:
        """The dispatcher's flat :class:`Settings` from these sections
        (``overrides`` win: e.g. the URL of a broker started for the run)."""
        values: dict[str, Any] = {}
        for field, (section, key) in LIBRARY_MAP.items():
            value = getattr(getattr(self, section), key)
            if field == "strategy":
                value = DeliveryStrategy[value]
            elif field == "store_url":
                value = self.store_url
            if value is None and field in ("node_id", "mqtt_url"):
                continue  # the library's own default
            values[field] = value
        if values.get("node_id") is None:
            values["node_id"] = _default_node_id()
        values.update(overrides)
        return Settings(**values)


# -- loading ---------------------------------------------------------------------------


def env_name(section: str, key: str) -> str:
    """The environment variable of a setting: ``FLEETRPC_HTTP_PORT``."""
    return f"FLEETRPC_{section.upper()}_{key.upper()}"


#: ThingsBoard's environment variables for what fleetrpc also has (the RPC
#: guide names them): variable -> (section, key, its value as fleetrpc's).
#: A ``FLEETRPC_*`` variable for the same setting wins.
THINGSBOARD_ENV: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "ACTORS_RPC_MAX_RETRIES": ("store", "max_retries", lambda v: v),
    # ThingsBoard 3.3's switch: the next call once the previous one is answered
    "ACTORS_RPC_SEQUENTIAL": ("dispatch", "strategy",
                              lambda v: "SEQUENTIAL_ON_RESPONSE" if _truthy(v) else "BURST"),
    "ACTORS_RPC_SUBMIT_STRATEGY_TYPE": ("dispatch", "strategy",
                                        lambda v: v.strip().upper().removesuffix("_FROM_DEVICE")),
    "SQL_TTL_RPC_ENABLED": ("store", "ttl_enabled", lambda v: v),
    "SQL_RPC_TTL_CHECKING_INTERVAL": ("store", "ttl_check_interval_s", lambda v: _ms_to_s(v)),
}


def _truthy(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _ms_to_s(raw: str) -> float:
    try:
        return float(raw) / 1000.0
    except ValueError:
        raise ValueError(f"expected milliseconds, got {raw!r}") from None


def thingsboard_env(env: dict[str, str]) -> dict[tuple[str, str], tuple[str, Any]]:
    """ThingsBoard's variables set in ``env``: (section, key) -> (variable,
    value).  ACTORS_RPC_SUBMIT_STRATEGY_TYPE wins over the older
    ACTORS_RPC_SEQUENTIAL (it comes later in THINGSBOARD_ENV)."""
    found: dict[tuple[str, str], tuple[str, Any]] = {}
    for name, (section, key, convert) in THINGSBOARD_ENV.items():
        raw = env.get(name)
        if raw is None:
            continue
        try:
            found[(section, key)] = (name, convert(raw))
        except ValueError as exc:
            raise ValidationError(f"{section}.{key} (from ${name}): {exc}") from None
    return found


def _env_value(raw: str, annotation: Any) -> Any:
    """An environment string for a field: lists as JSON or comma-separated;
    everything else is converted by msgspec (strict=False)."""
    info = msgspec.inspect.type_info(annotation)
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.DictType):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("not a JSON object ({\"key\": \"value\", ...})")
        return value
    if isinstance(info, msgspec.inspect.ListType):
        raw = raw.strip()
        if raw.startswith("["):
            try:
                return json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list: {exc}") from None
        return [part.strip() for part in raw.split(",") if part.strip()]
    if raw == "" and isinstance(info, msgspec.inspect.UnionType) and any(
        isinstance(t, msgspec.inspect.NoneType) for t in info.types
    ):
        return None
    return raw


def load_server_settings(
    path: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> ServerSettings:
    """Defaults, then the TOML file, then ``FLEETRPC_<SECTION>_<KEY>``
    variables, then ``overrides`` (``{"http": {"port": 0}}``).

    The file is ``path``, else ``$FLEETRPC_CONFIG``, else ``./fleetrpc.toml``
    when it exists, else none.  Raises :class:`ValidationError` naming the
    offending key and its source."""
    env = dict(os.environ) if env is None else env
    data: dict[str, dict[str, Any]] = {}
    source: dict[tuple[str, str], str] = {}
    path = path or env.get("FLEETRPC_CONFIG")
    if path is None and os.path.exists("fleetrpc.toml"):
        path = "fleetrpc.toml"
    if path:
        try:
            with open(path, "rb") as f:
                loaded = tomllib.load(f)
        except OSError as exc:
            raise ValidationError(f"cannot read the configuration file {str(path)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValidationError(f"{path}: not valid TOML: {exc}") from None
        for section, values in loaded.items():
            if section not in SECTIONS:
                raise ValidationError(
                    f"{path}: unknown section [{section}]; the sections are {', '.join(SECTIONS)}"
                )
            if not isinstance(values, dict):
                raise ValidationError(f"{path}: {section} must be a table ([{section}])")
            data[section] = dict(values)
            for key in values:
                source[(section, key)] = str(path)
    for (section, key), (name, value) in thingsboard_env(env).items():
        data.setdefault(section, {})[key] = value
        source[(section, key)] = f"${name}"
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls, include_extras=True)
        for field in msgspec.structs.fields(cls):
            name = env_name(section, field.name)
            raw = env.get(name)
            if raw is None:
                continue
            try:
                value = _env_value(raw, hints[field.name])
            except ValueError as exc:
                raise ValidationError(f"{section}.{field.name} (from ${name}): {exc}") from None
            data.setdefault(section, {})[field.name] = value
            source[(section, field.name)] = f"${name}"
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            data.setdefault(section, {})[key] = value
            source[(section, key)] = "the command line"
    return _convert(data, source)


def _convert(data: dict[str, dict[str, Any]], source: dict[tuple[str, str], str]) -> ServerSettings:
    try:
        # strict=False: environment strings become ints, floats and bools.
        return msgspec.convert(data, ServerSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise ValidationError(_explain(str(exc), source)) from None


def _explain(message: str, source: dict[tuple[str, str], str]) -> str:
    """msgspec's "Expected `int` >= 1 - at `$.http.port`" as
    "http.port (from fleetrpc.toml): expected `int` >= 1"."""
    text, sep, where = message.rpartition(" - at `$.")
    if not sep:
        # An unknown key: "Object contains unknown field `x` - at `$.http`" is
        # handled above; this is e.g. a whole section of the wrong type.
        return message
    where = where.rstrip("`")
    parts = where.split(".", 1)
    origin = source.get((parts[0], parts[1].split("[")[0])) if len(parts) == 2 else None
    if text.startswith("Object contains unknown field"):
        field = text.split("`")[1]
        origin = source.get((where, field))
        hint = f" (from {origin})" if origin else ""
        return f"unknown setting {where}.{field}{hint}; see `fleetrpc serve --print-config`"
    hint = f" (from {origin})" if origin else ""
    return f"{where}{hint}: {text[0].lower()}{text[1:]}"
