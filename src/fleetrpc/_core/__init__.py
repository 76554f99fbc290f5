"""The hot core: compiled Cython modules, each beside its pure-Python twin.

This is the one place that chooses between the two variants.  The compiled
ones are used when they were built, the interpreter is CPython and
``FLEETRPC_NO_EXTENSIONS`` is not set; otherwise the pure twins.  Both
variants are exported by name (``TimingWheelC`` / ``TimingWheelPy``) so that
tests and benchmarks can reach each; a ``...C`` name is ``None`` when the
compiled module is not available.
"""

from __future__ import annotations

import os
import sys

from .codec_py import Codec as CodecPy, Message as MessagePy
from .pending_py import CallFuture as CallFuturePy, CallSite as CallSitePy, PendingTable as PendingTablePy
from .queues_py import DeviceQueues as DeviceQueuesPy
from .wheel_py import TimingWheel as TimingWheelPy
from .mqttfast_py import MqttReader as MqttReaderPy, encode_publish as encode_publish_py

NO_EXTENSIONS: bool = bool(os.environ.get("FLEETRPC_NO_EXTENSIONS")) or (
    sys.implementation.name != "cpython"
)

_PAIRS = {  # public name -> (compiled module, pure class)
    "TimingWheel": ("wheel", TimingWheelPy),
    "PendingTable": ("pending", PendingTablePy),
    "CallSite": ("pending", CallSitePy),
    "CallFuture": ("pending", CallFuturePy),
    "DeviceQueues": ("queues", DeviceQueuesPy),
    "Codec": ("codec", CodecPy),
    "Message": ("codec", MessagePy),
    "MqttReader": ("mqttfast", MqttReaderPy),
    "encode_publish": ("mqttfast", encode_publish_py),
}


def _load_compiled() -> dict[str, type]:
    import importlib

    found: dict[str, type] = {}
    if NO_EXTENSIONS:
        return found
    for name, (module, _) in _PAIRS.items():
        try:
            found[name] = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        except ImportError:  # not built: no compiler, or a pure install
            pass
    return found


_compiled = _load_compiled()
#: True when every core module is compiled and in use.
COMPILED: bool = len(_compiled) == len(_PAIRS)

TimingWheelC = _compiled.get("TimingWheel")
PendingTableC = _compiled.get("PendingTable")
CallSiteC = _compiled.get("CallSite")
CallFutureC = _compiled.get("CallFuture")
DeviceQueuesC = _compiled.get("DeviceQueues")
CodecC = _compiled.get("Codec")
MessageC = _compiled.get("Message")

# All or nothing: mixing variants would make the compiled cimports disagree.
_chosen = {n: (_compiled[n] if COMPILED else py) for n, (_, py) in _PAIRS.items()}
TimingWheel = _chosen["TimingWheel"]
PendingTable = _chosen["PendingTable"]
CallSite = _chosen["CallSite"]
CallFuture = _chosen["CallFuture"]
DeviceQueues = _chosen["DeviceQueues"]
Codec = _chosen["Codec"]
Message = _chosen["Message"]
MqttReader = _chosen["MqttReader"]
encode_publish = _chosen["encode_publish"]
MqttReaderC = _compiled.get("MqttReader")
encode_publish_c = _compiled.get("encode_publish")



def debug_counters() -> dict[str, int] | None:
    """The compiled core's leak counters, all modules in one dict, or None
    unless it is a ``FLEETRPC_DEBUG=1`` build (setup.py).  Each counts what
    is alive over every instance (wheel entries, pending calls, queue states
    and rings, queued calls); with no core object left, all are 0."""
    import importlib

    found: dict[str, int] = {}
    for module in ("wheel", "pending", "queues"):
        try:
            counters = importlib.import_module(f"{__name__}.{module}").debug_counters()
        except ImportError:
            return None
        if counters is None:
            return None
        found.update(counters)
    return found


#: Both variants of every core class, for tests and benchmarks.  "c" lists
#: only what is compiled; it is absent when nothing is.
VARIANTS: dict[str, dict[str, type]] = {"py": {n: py for n, (_, py) in _PAIRS.items()}}
if _compiled:
    VARIANTS["c"] = dict(_compiled)

__all__ = [
    "COMPILED", "NO_EXTENSIONS", "VARIANTS", "debug_counters",
    "TimingWheel", "TimingWheelC", "TimingWheelPy",
    "PendingTable", "PendingTableC", "PendingTablePy",
    "CallSite", "CallSiteC", "CallSitePy", "CallFuture", "CallFutureC", "CallFuturePy",
    "DeviceQueues", "DeviceQueuesC", "DeviceQueuesPy",
    "Codec", "CodecC", "CodecPy", "Message", "MessageC", "MessagePy",
    "MqttReader", "MqttReaderC", "MqttReaderPy",
    "encode_publish", "encode_publish_c", "encode_publish_py",
]
