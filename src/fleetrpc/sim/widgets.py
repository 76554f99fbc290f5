"""A simulated device for the console and the demo: it keeps the state that
ThingsBoard's control widgets read and change.

One *level*, 0-100, stands behind both widgets: the knob reads and sets it
(``getValue`` answers the number, ``setValue`` with a number sets it), the
round switch shows it as on when above zero (``setValue`` with ``false``
turns it off, ``true`` back on at the last level that was not zero).  So
turning the knob switches the device on, as a dimmer does.

Methods: ``getValue``, ``setValue``, ``rpcCommand`` (what the RPC button
sends), ``getTemperature`` and ``echo``; any other method gets the SDK's
``METHOD_NOT_FOUND`` error reply, which the debug terminal shows.
"""

from __future__ import annotations

import random
import time
from typing import Any

from ..device import DeviceClient

__all__ = ["WidgetDevice"]


class WidgetDevice:
    """A :class:`~fleetrpc.DeviceClient` with a level behind the widgets."""

    def __init__(self, device_id: str, url: str, *, token: str | None = None, level: int = 50,
                 **options: Any) -> None:
        self.client = DeviceClient(device_id, url, username=token, **options)
        self.level = max(0, min(100, int(level)))
        self._last_on = self.level or 50
        #: Every call received, newest last: (method, params), at most 100.
        self.received: list[tuple[str, Any]] = []
        c = self.client
        c.add_method("getValue", self._get_value)
        c.add_method("setValue", self._set_value)
        c.add_method("rpcCommand", self._rpc_command)
        c.add_method("getTemperature", self._temperature)
        c.add_method("echo", self._echo)

    @property
    def device_id(self) -> str:
        return self.client.device_id

    @property
    def on(self) -> bool:
        return self.level > 0

    def _note(self, method: str, params: Any) -> None:
        self.received.append((method, params))
        del self.received[:-100]

    def _get_value(self, params: Any) -> int:
        self._note("getValue", params)
        return self.level

    def _set_value(self, params: Any) -> dict:
        self._note("setValue", params)
        if isinstance(params, bool):
            if not params and self.level:
                self._last_on = self.level  # on again at this level
            self.level = self._last_on if params else 0
        elif isinstance(params, (int, float)):
            self.level = max(0, min(100, int(round(params))))
        else:
            raise ValueError(f"setValue takes a boolean or a number, not {type(params).__name__}")
        if self.level:
            self._last_on = self.level
        return {"value": self.level}

    def _rpc_command(self, params: Any) -> dict:
        self._note("rpcCommand", params)
        return {"ok": True, "ts": int(time.time() * 1000), "level": self.level}

    def _temperature(self, params: Any) -> dict:
        self._note("getTemperature", params)
        return {"celsius": round(19 + self.level / 20 + random.random(), 2)}

    def _echo(self, params: Any) -> Any:
        self._note("echo", params)
        return params

    async def connect(self) -> None:
        await self.client.connect()

    async def close(self) -> None:
        await self.client.close()
