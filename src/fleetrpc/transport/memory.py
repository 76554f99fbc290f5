"""An in-process broker for tests and embedding: no network, no threads.

    hub = MemoryHub()
    async with Dispatcher(Settings(), transport=hub.transport("server")) as d, \
               DeviceClient("pump-7", hub) as dev:
        ...

:class:`MemoryHub` routes publishes to every subscription whose filter
matches (``+``, ``#``, and ``$share/{group}/...``, which hands each message
to one member of the group in turn), keeps retained messages (an empty
retained payload clears one) and hands them to new subscriptions, and
publishes a client's Last Will when it vanishes (:meth:`MemoryTransport.abort`,
or :meth:`MemoryHub.drop`), not when it closes cleanly.  Every delivery
happens on a later turn of the event loop, as over a network, so a publish
never re-enters its sender.  MQTT 5 Response Topic and Correlation Data
travel with a message, in gmqtt's shape.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Callable, Sequence

from ..wire.topics import topic_matches
from .base import MessageCallback, Will

__all__ = ["MemoryHub", "MemoryTransport"]


class MemoryTransport:
    """One client of a :class:`MemoryHub`; implements
    :class:`~fleetrpc.transport.base.DeviceTransport`."""

    def __init__(self, hub: "MemoryHub", client_id: str, will: Will | None = None) -> None:
        self.hub = hub
        self.client_id = client_id
        self.will = will
        self.on_message: MessageCallback = lambda t, p, props: None
        self.on_published: Callable[[int], None] = lambda token: None
        self.on_connection: Callable[[bool], None] = lambda up: None
        self.awaiting: Callable[[], int] = lambda: 0
        self._connected = False
        self.filters: list[tuple[str, int]] = []

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self, filters: Sequence[tuple[str, int]] = ()) -> None:
        self._connected = True
        self.hub._attach(self)
        self.on_connection(True)
        await self.subscribe(list(filters))

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> None:
        self.filters.extend(filters)
        self.hub._subscribed(self, list(filters))

    async def close(self) -> None:
        """A clean disconnect: no Last Will."""
        if self._connected:
            self._connected = False
            self.hub._detach(self)

    def abort(self) -> None:
        """Vanish: the hub publishes the Last Will."""
        if self._connected:
            self._connected = False
            self.hub._detach(self)
            if self.will is not None:
                topic, payload, qos, retain = self.will
                self.hub._route(topic, payload, retain, None)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        token: int = -1,
        properties: dict | None = None,
    ) -> None:
        if not self._connected:
            return  # like a broker connection that is down: lost
        self.hub._route(topic, bytes(payload), retain, properties)
        if token >= 0:
            self.hub._loop().call_soon(self.on_published, token)


class MemoryHub:
    """The broker of :class:`MemoryTransport` clients."""

    def __init__(self) -> None:
        self._clients: list[MemoryTransport] = []
        self._retained: dict[str, tuple[bytes, dict | None]] = {}
        self._turn = itertools.count()
        #: Messages routed (publishes and wills).
        self.routed = 0

    def transport(self, client_id: str = "client", *, will: Will | None = None) -> MemoryTransport:
        """A new client of this hub (connected by its ``start``)."""
        return MemoryTransport(self, client_id, will)

    def make_transport(self, *, client_id: str, will: Will | None = None, **_options) -> MemoryTransport:
        """The factory the device SDK calls when given a hub instead of a URL."""
        return self.transport(client_id, will=will)

    def drop(self, client_id: str) -> None:
        """Cut a client off as a network failure would: its Will is published."""
        for client in list(self._clients):
            if client.client_id == client_id:
                client.abort()

    @property
    def retained(self) -> dict[str, bytes]:
        return {t: p for t, (p, _) in self._retained.items()}

    # -- internals ----------------------------------------------------------

    @staticmethod
    def _loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def _attach(self, client: MemoryTransport) -> None:
        if client not in self._clients:
            self._clients.append(client)

    def _detach(self, client: MemoryTransport) -> None:
        if client in self._clients:
            self._clients.remove(client)

    def _subscribed(self, client: MemoryTransport, filters: list[tuple[str, int]]) -> None:
        loop = self._loop()
        for filter_, _ in filters:
            if filter_.startswith("$share/"):
                continue  # MQTT: retained messages are not sent to shared subscriptions
            for topic, (payload, props) in list(self._retained.items()):
                if topic_matches(filter_, topic):
                    loop.call_soon(self._deliver, client, topic, payload, props)

    def _route(self, topic: str, payload: bytes, retain: bool, properties: dict | None) -> None:
        self.routed += 1
        props = None
        if properties:
            props = {k: [v] for k, v in properties.items() if v is not None}
        if retain:
            if payload:
                self._retained[topic] = (payload, props)
            else:
                self._retained.pop(topic, None)
        loop = self._loop()
        groups: dict[str, list[MemoryTransport]] = {}
        for client in self._clients:
            plain = False
            for filter_, _ in client.filters:
                if not topic_matches(filter_, topic):
                    continue
                if filter_.startswith("$share/"):
                    members = groups.setdefault(filter_.split("/", 2)[1], [])
                    if client not in members:
                        members.append(client)
                else:
                    plain = True
            if plain:
                loop.call_soon(self._deliver, client, topic, payload, props)
        for members in groups.values():
            chosen = members[next(self._turn) % len(members)]
            loop.call_soon(self._deliver, chosen, topic, payload, props)

    @staticmethod
    def _deliver(client: MemoryTransport, topic: str, payload: bytes, props: dict | None) -> None:
        if client.connected:
            client.on_message(topic, payload, props)
