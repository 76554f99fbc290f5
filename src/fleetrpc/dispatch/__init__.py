"""The dispatch engine and what belongs to it.

- :mod:`.engine`: :class:`Dispatcher`, calls out and replies in;
- :mod:`.broadcast`: fan-out (:class:`Broadcast`) and its summary;
- :mod:`.client_calls`: client-side RPC handlers and their answers;
- :mod:`.completion`: what finishes a call, and status events;
- :mod:`.counters`: the dispatcher's counters;
- :mod:`.options`: a call's options, checked once (:class:`CallOptions`).
"""

from .broadcast import Broadcast, BroadcastSummary, Outcome
from .completion import CallObserver, StatusEvent
from .counters import Counters, Stats
from .engine import DeviceInfo, Dispatcher
from .options import CallOptions, OfflinePolicy, parse_rpc_body

__all__ = [
    "Broadcast", "BroadcastSummary", "CallObserver", "CallOptions", "Counters", "DeviceInfo",
    "Dispatcher", "OfflinePolicy", "Outcome", "Stats", "StatusEvent", "parse_rpc_body",
]
