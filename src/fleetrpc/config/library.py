"""One typed settings object for everything fleetrpc runs.

Values come, in rising priority, from the defaults below, a TOML file
(``fleetrpc.toml`` or the path given), and ``FLEETRPC_<FIELD>`` environment
variables.  The object is passed in explicitly; there is no global.
"""

from __future__ import annotations

import os
import socket
import tomllib
from typing import Any, TypeVar

import msgspec

from enum import Enum

from .._core.constants import DeliveryStrategy
from ..dispatch.options import OfflinePolicy
from ..errors import ValidationError
from ..wire.constants import DEFAULT_MAX_PAYLOAD, DEFAULT_PREFIX


def _default_node_id() -> str:
    # Short, stable for the process, unique enough across nodes sharing a broker.
    host = socket.gethostname().split(".")[0][:24] or "node"
    return f"{host}-{os.getpid()}"


E = TypeVar("E", bound=Enum)


def parse_enum(cls: type[E], value: Any, field: str) -> E:
    """A member of ``cls`` from itself, its name in any case (``-`` for
    ``_`` allowed: ``sequential-on-response``), or its value."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        name = value.strip().upper().replace("-", "_")
        if name in cls.__members__:
            return cls[name]
        if name.isdigit() and issubclass(cls, int):
            value = int(name)
    if not isinstance(value, bool):
        try:
            return cls(value)
        except (ValueError, TypeError):
            pass
    names = ", ".join(cls.__members__)
    raise ValidationError(f"{field} must be one of {names}, not {value!r}")


def parse_strategy(value: Any, field: str = "strategy") -> DeliveryStrategy:
    """A :class:`DeliveryStrategy` by member, name or number; ThingsBoard's
    names (``SEQUENTIAL_ON_RESPONSE_FROM_DEVICE``) are accepted too."""
    if isinstance(value, str) and value.strip().upper().endswith("_FROM_DEVICE"):
        value = value.strip()[: -len("_FROM_DEVICE")]
    return parse_enum(DeliveryStrategy, value, field)


def _enum_fields(cls: type) -> dict[str, type[Enum]]:
    return {
        f.name: f.type for f in msgspec.structs.fields(cls)
        if isinstance(f.type, type) and issubclass(f.type, Enum)
    }


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Configuration of a dispatcher node (and of the CLI commands)."""

    # -- MQTT ---------------------------------------------------------------
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls: bool = False
    mqtt_tls_ca: str | None = None
    mqtt_tls_cert: str | None = None
    mqtt_tls_key: str | None = None
    mqtt_tls_insecure: bool = False
    mqtt_keepalive: int = 60
    #: MQTT protocol version of the dispatcher's own connection (4 = 3.1.1, 5).
    mqtt_version: int = 5
    #: QoS of requests and replies (0 or 1).
    qos: int = 1
    #: Also put the MQTT 5 Response Topic and Correlation Data on requests.
    #: The reply topic follows from the request topic (docs/protocol.md), so
    #: this is for generic MQTT 5 responders; it costs CPU per call.
    response_topic: bool = False
    #: Seconds between reconnect attempts; doubled up to ``reconnect_max``.
    reconnect_delay: float = 0.5
    reconnect_max: float = 10.0

    # -- protocol -----------------------------------------------------------
    prefix: str = DEFAULT_PREFIX
    #: This node's id: replies to its requests come back on its own topics.
    node_id: str = msgspec.field(default_factory=_default_node_id)
    #: Shared-subscription group for client-side calls (several nodes split them).
    share_group: str | None = None
    max_payload: int = DEFAULT_MAX_PAYLOAD

    # -- calls --------------------------------------------------------------
    default_timeout_ms: int = 10_000
    #: Timeouts below this are raised to it (ThingsBoard: 5000 ms).
    min_timeout_ms: int = 5_000
    #: Default delivery strategy; by name in TOML and the environment
    #: (``SEQUENTIAL_ON_RESPONSE``, ThingsBoard's ``..._FROM_DEVICE`` names too).
    strategy: DeliveryStrategy = DeliveryStrategy.BURST
    #: What a lightweight call to a device that is not online does: "fail"
    #: at once (the default: see ``OfflinePolicy``) or "wait" for it until
    #: the deadline, as ThingsBoard does.
    offline: OfflinePolicy = OfflinePolicy.FAIL
    #: Most calls held for one device.
    queue_cap: int = 100
    #: Most calls in flight to one device under BURST (the sequential
    #: strategies send one at a time); calls beyond it wait in the device's
    #: queue (``queue_cap``).  0: a tenth of ``inflight_window``, so that one
    #: busy or dead device can never take the node's whole window.
    device_window: int = 0
    #: Most requests in flight from this node (flow control towards the broker).
    inflight_window: int = 20_000
    #: Most client-side calls (a device asks) whose handler is still running
    #: on this node; one device has at most ``queue_cap`` of them (what
    #: getSessionLimits tells it).  A call beyond gets an error at once.
    client_call_window: int = 10_000
    #: While the broker connection is down: "wait" (the default) sends a
    #: lightweight call once the connection is back, and fails it with
    #: BrokerUnavailableError if its deadline passes first; "fail" refuses
    #: it at once with BrokerUnavailableError.  Persistent calls always wait.
    broker_down: OfflinePolicy = OfflinePolicy.WAIT
    #: Rejected inbound messages (malformed, forged, for calls never made)
    #: are counted per reason in ``stats``; the log gets the first one at
    #: once and then at most one summary line per this many seconds.
    #: Replies to calls that have ended (late, one-way) are counted
    #: (``late_replies``), never logged.
    reject_log_interval_s: float = 10.0
    #: Track presence; a lightweight call to a device that is not online
    #: fails or waits (``offline``).  Off: every device counts as online.
    presence: bool = True
    #: Most devices whose presence and heartbeats are kept (least recently
    #: heard of leave first): set it above the fleet's size.
    presence_max_devices: int = 100_000
    #: An offline device not heard of for this many seconds is forgotten.
    presence_ttl_s: float = 3600.0
    #: Largest heartbeat body kept, in bytes (of a larger one: its time, and
    #: those of its top-level fields that fit together).
    max_heartbeat_bytes: int = 4096
    #: Resolution of the timing wheel, in milliseconds.
    tick_ms: float = 5.0
    #: Read batching: while at least this many calls await replies, the
    #: broker connection is read at most once per ``read_batch_ms`` (1-2 ms on
    #: uvloop), so a broker slower than this node does not wake it for every
    #: few replies (half the CPU per round trip then; see MqttTransport).
    #: 0 turns it off.
    read_batch_above: int = 256
    read_batch_ms: float = 1.0

    # -- persistent RPC -----------------------------------------------------
    store_url: str = "sqlite:///fleetrpc.db"
    #: Retries of a persistent call that names none (REST ``retries``
    #: absent, null or ""): 0, as ThingsBoard's RPC guide says ("by default
    #: the platform does not retry"); its code retries ACTORS_RPC_MAX_RETRIES
    #: times then: set this to max_retries for that.
    default_retries: int = 0
    #: The most retries a persistent call may ask for (ThingsBoard's
    #: ACTORS_RPC_MAX_RETRIES); more are capped to it.
    max_retries: int = 5
    ttl_enabled: bool = True
    #: Whole days, as ThingsBoard's "RPC TTL days" (0: keep them).
    ttl_days: int = 30
    ttl_check_interval_s: float = 7200.0

    # -- HTTP ---------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = 8080

    def __post_init__(self) -> None:
        # Direct construction does not convert: accept names here too.
        for name, enum in _enum_fields(type(self)).items():
            value = getattr(self, name)
            if type(value) is not enum:
                setattr(self, name, parse_strategy(value) if enum is DeliveryStrategy
                        else parse_enum(enum, value, name))
        if self.presence_max_devices < 1 or not self.presence_ttl_s > 0 or self.max_heartbeat_bytes < 0:
            raise ValidationError("presence_max_devices >= 1, presence_ttl_s > 0 and max_heartbeat_bytes >= 0")
        if self.qos not in (0, 1):
            raise ValidationError(f"qos must be 0 or 1, not {self.qos!r}")
        if self.mqtt_version not in (4, 5):
            raise ValidationError(f"mqtt_version must be 4 or 5, not {self.mqtt_version!r}")
        if self.min_timeout_ms < 0 or self.default_timeout_ms <= 0:
            raise ValidationError("timeouts must be positive")
        if not self.reject_log_interval_s > 0:
            raise ValidationError("reject_log_interval_s must be > 0")
        if self.queue_cap < 1 or self.inflight_window < 1 or self.device_window < 0 or self.client_call_window < 1:
            raise ValidationError("queue_cap, inflight_window and client_call_window must be >= 1, "
                                  "device_window >= 0")
        if self.read_batch_above < 0 or not 0 < self.read_batch_ms <= 1000:
            raise ValidationError("read_batch_above must be >= 0 and read_batch_ms in (0, 1000]")
        if self.default_retries < 0 or self.max_retries < 0:
            raise ValidationError("default_retries and max_retries must be >= 0")
        if type(self.ttl_days) is not int or self.ttl_days < 0:
            # A fraction would have been cut to whole days, 0.5 to 0: kept forever.
            raise ValidationError(f"ttl_days must be a whole number of days >= 0, not {self.ttl_days!r}")
        if not 0 < self.tick_ms <= 1000:
            raise ValidationError(f"tick_ms must be in (0, 1000], not {self.tick_ms!r}")

    @classmethod
    def load(cls, path: str | None = None, env: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then the TOML file, then ``FLEETRPC_*`` variables, then ``overrides``."""
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        path = path or env.get("FLEETRPC_CONFIG")
        if path is None and os.path.exists("fleetrpc.toml"):
            path = "fleetrpc.toml"
        if path:
            with open(path, "rb") as f:
                data.update(tomllib.load(f))
        fields = {f.name: f for f in msgspec.structs.fields(cls)}
        for name in fields:
            value = env.get(f"FLEETRPC_{name.upper()}")
            if value is not None:
                data[name] = value
        data.update({k: v for k, v in overrides.items() if v is not None})
        # Enums by name (as the README writes them), which msgspec would not take.
        for name, enum in _enum_fields(cls).items():
            if name in data and not isinstance(data[name], enum):
                data[name] = (parse_strategy(data[name]) if enum is DeliveryStrategy
                              else parse_enum(enum, data[name], name))
        try:
            # strict=False lets environment strings become ints, floats, bools.
            return msgspec.convert(data, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ValidationError(f"invalid settings: {exc}") from None

    @property
    def default_timeout(self) -> float:
        return self.default_timeout_ms / 1000.0

    @property
    def min_timeout(self) -> float:
        return self.min_timeout_ms / 1000.0
