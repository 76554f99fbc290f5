"""fleetrpc: fast, dependable RPC to fleets of MQTT-connected devices and agents."""

from __future__ import annotations

from . import errors
from ._core.constants import DeliveryStrategy
from .errors import *  # noqa: F401,F403  (every error is public API)

__version__ = "0.1.0"
