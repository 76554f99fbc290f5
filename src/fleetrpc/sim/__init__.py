"""Device fleet simulator: many MQTT devices, cheaply, in worker processes.

* :mod:`fleetrpc.sim.leanmqtt` -- a lean asyncio MQTT 3.1.1 client protocol;
* :mod:`fleetrpc.sim.fleet` -- :class:`Fleet`, N simulated devices that answer
  fleetrpc requests with configurable behaviour (latency, errors, drops, acks,
  churn), spread over worker processes;
* :mod:`fleetrpc.sim.command` -- ``fleetrpc simulate``.
"""

from .fleet import Behaviour, Fleet, FleetError, device_id
from .leanmqtt import LeanClient, MqttError

__all__ = ["Behaviour", "Fleet", "FleetError", "LeanClient", "MqttError", "device_id"]
