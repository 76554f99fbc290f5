"""The interface between an engine (dispatcher, device SDK) and a transport.

A transport moves ``(topic, payload)`` pairs to and from an MQTT broker (or
something that behaves like one: :mod:`fleetrpc.transport.memory`, or a
listener devices connect to directly).  The owner sets the callbacks, then
calls :meth:`Transport.start`; everything else is synchronous and never
blocks: ``publish`` queues what cannot leave at once.

``properties`` follow gmqtt's shapes: on ``publish`` a dict with optional
``"response_topic"`` (str) and ``"correlation_data"`` (bytes); on
``on_message`` a dict of lists (``{"response_topic": [str], ...}``) or
``None``.

As a broker does, a transport hands its owner what the owner publishes to
a topic it subscribed: a dispatcher that tracks presence publishes a marker
to itself on start and waits for it (up to 5 s) before it takes calls, so
that the broker's retained presence is in.  A transport that holds no
retained messages says so with ``keeps_retained = False`` (the device
endpoint): nothing is waited for.

Optional: a transport that routes by device (the device endpoint, and
:class:`~fleetrpc.transport.endpoint.CompositeTransport`) has
``publish_request(device, topic, payload, qos, token, properties)`` and
``request_head`` (``{prefix}/d/``); the dispatcher then hands it each
REQUEST with its device rather than a topic to parse again, if its own
request topics start with that ``request_head``.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

__all__ = ["Transport", "DeviceTransport", "MessageCallback", "Will"]

#: on_message(topic, payload, properties-or-None)
MessageCallback = Callable[[str, bytes, "dict | None"], None]
#: A Last Will: (topic, payload, qos, retain).
Will = tuple[str, bytes, int, bool]


@runtime_checkable
class Transport(Protocol):
    """What the dispatcher needs of a transport."""

    #: Set by the owner: every inbound message, ``on_message(topic, payload, properties)``.
    on_message: MessageCallback
    #: Set by the owner: ``on_published(token)`` once the broker has a publish
    #: made with ``token >= 0`` (PUBACK for QoS 1, written for QoS 0).
    on_published: Callable[[int], None]
    #: Set by the owner: ``on_connection(up)`` when the connection comes up or is lost.
    on_connection: Callable[[bool], None]
    #: Set by the owner: how many inbound messages it awaits (a transport may
    #: batch reads while that is high).
    awaiting: Callable[[], int]

    async def start(self, filters: Sequence[tuple[str, int]] = ()) -> None:
        """Connect, subscribe to ``(filter, qos)`` pairs, return when subscribed."""

    async def close(self) -> None:
        """Disconnect cleanly (no Last Will)."""

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        token: int = -1,
        properties: dict | None = None,
    ) -> None:
        """Publish now or as soon as flow control allows; never raises for
        flow control, never blocks."""


@runtime_checkable
class DeviceTransport(Transport, Protocol):
    """What the device SDK needs on top: its state, and a way to vanish."""

    @property
    def connected(self) -> bool:
        """Connected to the broker now."""

    def abort(self) -> None:
        """Drop the connection without a goodbye: the Last Will is published."""
