"""fleetrpc: fast, dependable RPC to fleets of MQTT-connected devices and agents.

    from fleetrpc import Dispatcher, Settings

    async with Dispatcher(Settings(mqtt_url="mqtt://127.0.0.1:1883")) as d:
        reply = await d.call("pump-7", "setGPIO", {"pin": 4, "value": 1})
"""

from __future__ import annotations

from . import errors
from ._core.constants import DeliveryStrategy
from .config import Settings
from .device import DeviceClient
from .dispatch import Broadcast, BroadcastSummary, CallOptions, Dispatcher, OfflinePolicy, Outcome, StatusEvent
from .errors import *  # noqa: F401,F403  (every error is public API)
from .events import Event, EventBus, HookSink, MqttSink, WebhookSink
from .presence import PresenceRegistry
from .rpc.persistent import PersistentRpc
from .rpc.status import RpcStatus
from .transport.memory import MemoryHub
from .store import open_store

__version__ = "0.1.0"

__all__ = [
    "Broadcast", "BroadcastSummary", "CallOptions", "DeliveryStrategy", "DeviceClient", "Dispatcher",
    "Event", "EventBus", "HookSink", "MemoryHub", "MqttSink", "OfflinePolicy", "Outcome",
    "PersistentRpc", "PresenceRegistry", "RpcStatus",
    "Settings", "StatusEvent", "WebhookSink", "errors", "open_store",
] + errors.__dict__.get("__all__", [n for n in dir(errors) if n.endswith("Error")])
