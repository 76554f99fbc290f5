"""Transports: how an engine reaches the broker.

:class:`~fleetrpc.transport.base.Transport` is the interface (``start``,
``close``, ``publish`` and the callbacks ``on_message``, ``on_published``,
``on_connection``, ``awaiting``).  ``MqttTransport`` (gmqtt) is the real one;
:class:`~fleetrpc.transport.memory.MemoryHub` connects dispatchers and devices
in one process, for tests and embedding.
"""

from .base import DeviceTransport, Transport
from .memory import MemoryHub, MemoryTransport
from .mqtt import MqttTransport, parse_url

__all__ = ["DeviceTransport", "MemoryHub", "MemoryTransport", "MqttTransport", "Transport", "parse_url"]
