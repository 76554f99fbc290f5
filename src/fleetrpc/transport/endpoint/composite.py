"""One dispatcher, two ways to its devices: connected directly to the
device endpoint, or through the MQTT broker.

Which wins when both know a device id: **the direct connection**.  A
request goes to the endpoint while a session of that device (or its
gateway) has subscribed to its RPC topic there; otherwise to the broker.
Answers to client-side calls go back the way the call came.  The device is
online while it is online on either path: an "offline" from one path is
held back while the other still reaches it, so a device that moves from the
broker to a direct connection (or back) never looks offline in between.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import msgspec

from ...wire import PRESENCE_DECODER
from .server import DeviceEndpoint

log = logging.getLogger("fleetrpc.endpoint")


class CompositeTransport:
    """A dispatcher transport over a :class:`DeviceEndpoint` and a broker
    transport (:class:`~fleetrpc.transport.MqttTransport` or anything with
    its interface)."""

    def __init__(self, endpoint: DeviceEndpoint, broker: Any) -> None:
        self.endpoint = endpoint
        self.broker = broker
        self.on_message: Callable[[str, bytes, "dict | None"], None] = lambda t, p, props: None
        self.on_published: Callable[[int], None] = lambda token: None
        self.on_connection: Callable[[bool], None] = lambda up: None
        self.awaiting: Callable[[], int] = lambda: 0
        self._dev_prefix = endpoint._dev_prefix
        #: devices online through the endpoint / through the broker
        self._direct: set[str] = set()
        self._brokered: set[str] = set()

    async def start(self, filters: list[tuple[str, int]] = ()) -> None:
        """Start the endpoint, then connect to the broker with ``filters``."""
        ep, broker = self.endpoint, self.broker
        ep.on_message = self._from_endpoint
        broker.on_message = self._from_broker
        ep.on_published = broker.on_published = self._published
        ep.on_connection = self._endpoint_connection
        broker.on_connection = self._broker_connection
        ep.awaiting = broker.awaiting = self._awaiting
        await ep.start(filters)
        try:
            await broker.start(filters)
        except BaseException:
            await ep.close()
            raise

    async def close(self) -> None:
        try:
            await self.broker.close()
        finally:
            await self.endpoint.close()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                token: int = -1, properties: dict | None = None) -> None:
        if not self.endpoint.try_publish(topic, payload, qos, retain, token, properties):
            self.broker.publish(topic, payload, qos, retain, token, properties)

    # -- callbacks -----------------------------------------------------------------

    def _published(self, token: int) -> None:
        self.on_published(token)

    def _awaiting(self) -> int:
        return self.awaiting()

    def _endpoint_connection(self, up: bool) -> None:
        log.info("device endpoint %s", "listening" if up else "closed")

    def _broker_connection(self, up: bool) -> None:
        self.on_connection(up)

    def _presence_device(self, topic: str) -> str | None:
        if topic.endswith("/presence") and topic.startswith(self._dev_prefix):
            device = topic[len(self._dev_prefix):-9]
            if device and "/" not in device:
                return device
        return None

    def _from_endpoint(self, topic: str, payload: bytes, props: dict | None) -> None:
        device = self._presence_device(topic)
        if device is not None:
            if _status(payload) == "online":
                self._direct.add(device)
            else:
                self._direct.discard(device)
                if device in self._brokered:
                    return  # still reachable through the broker
        self.on_message(topic, payload, props)

    def _from_broker(self, topic: str, payload: bytes, props: dict | None) -> None:
        device = self._presence_device(topic)
        if device is not None:
            status = _status(payload)
            if status == "online":
                self._brokered.add(device)
            elif status == "offline":
                self._brokered.discard(device)
                if device in self._direct:
                    return  # still connected directly
        self.on_message(topic, payload, props)


def _status(payload: bytes) -> str | None:
    try:
        return PRESENCE_DECODER.decode(payload).status
    except msgspec.DecodeError:
        return None  # the dispatcher counts it as malformed
