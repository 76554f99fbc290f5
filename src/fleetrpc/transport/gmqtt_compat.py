"""Every use of gmqtt's private names, in one place, behind a version check.

The MQTT transport's fast path (:mod:`fleetrpc.transport.mqtt`) replaces
gmqtt's read loop and write path, which gmqtt offers no public hook for.
What that needs of gmqtt's internals -- its protocol and connection
classes, the packet-id allocator, the in-flight storage, the CONNACK
properties, the private hooks ``Client._create_connection``,
``Client._remove_message_from_queue`` and ``Client._remove_subscriptions``
-- is reached here only, through two base classes and a packet-id
allocator whose own names are public.

gmqtt changes these between releases (0.8.0 rewrote the client and made the
storage synchronous), so this module refuses any gmqtt outside the range it
was written and tested against, with a message that says what to install.
pyproject.toml bounds gmqtt to the same range.
"""

from __future__ import annotations

import asyncio
import re
import time
from functools import partial
from importlib.metadata import PackageNotFoundError, version as _dist_version
from typing import Any

#: gmqtt releases whose internals this module knows: [low, high).
SUPPORTED = ((0, 8, 0), (0, 9, 0))
SUPPORTED_SPEC = "gmqtt>=0.8.0,<0.9"


def _parse(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def check_version(found: str) -> None:
    """Raise :class:`ImportError` unless gmqtt ``found`` is in :data:`SUPPORTED`."""
    low, high = SUPPORTED
    try:
        ok = low <= _parse(found) < high
    except ValueError:  # pragma: no cover - re.findall gives digits only
        ok = False
    if not ok:
        raise ImportError(
            f"fleetrpc's MQTT transport relies on gmqtt internals it knows only in "
            f"{SUPPORTED_SPEC!r}, but gmqtt {found} is installed; "
            f"install a supported release: pip install '{SUPPORTED_SPEC}'"
        )


try:
    GMQTT_VERSION = _dist_version("gmqtt")
except PackageNotFoundError:  # a source checkout on sys.path: trust its own attribute
    import gmqtt as _gmqtt

    GMQTT_VERSION = getattr(_gmqtt, "__version__", "unknown")
check_version(GMQTT_VERSION)

import gmqtt  # noqa: E402  after the version check, so a wrong gmqtt fails clearly
from gmqtt.mqtt.connection import MQTTConnection  # noqa: E402
from gmqtt.mqtt.constants import MQTTv50, MQTTv311  # noqa: E402
from gmqtt.mqtt.package import Package  # noqa: E402
from gmqtt.mqtt.protocol import BaseMQTTProtocol, MQTTProtocol  # noqa: E402
from gmqtt.mqtt.utils import IdGenerator, pack_variable_byte_integer  # noqa: E402

__all__ = [
    "GMQTT_VERSION", "SUPPORTED", "SUPPORTED_SPEC", "check_version",
    "MQTTv50", "MQTTv311", "FastIds", "ProtocolBase", "ClientBase",
]


class FastIds(IdGenerator):
    """gmqtt's packet-id allocator, same rules, without a log call per id."""

    def next_id(self) -> int:
        used = self._used_ids
        if len(used) >= self._max - 1:
            raise OverflowError("All ids has already used. May be your QoS queue is full.")
        i = self._last_used_id
        while True:
            i += 1
            if i >= self._max:
                i = 1
            if i not in used:
                break
        self._last_used_id = i
        used.add(i)
        return i

    def free_id(self, id: int) -> None:
        self._used_ids.discard(id)


class ProtocolBase(MQTTProtocol):
    """gmqtt's protocol, with its private state reached through public names."""

    def start_without_read_loop(self, transport: asyncio.Transport) -> None:
        """``connection_made`` minus MQTTProtocol's read-loop task."""
        BaseMQTTProtocol.connection_made(self, transport)

    @property
    def socket(self) -> asyncio.Transport | None:
        """The asyncio transport of this connection."""
        return self._transport

    @property
    def event_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def writing_paused(self) -> bool:
        """asyncio asked us to stop writing (the socket's buffer is full)."""
        return self._paused

    def is_current(self) -> bool:
        """This protocol's connection is the client's current one (gmqtt's
        ``put_package`` rule: a superseded connection's data is dropped)."""
        conn = self._connection
        return conn is not None and conn._handler.current_connection is conn

    def note_data_in(self) -> None:
        """Keepalive bookkeeping: data arrived now."""
        self._connection._last_data_in = time.monotonic()

    def note_data_out(self) -> None:
        """Keepalive bookkeeping: data left now."""
        if self._connection is not None:
            self._connection._last_data_out = time.monotonic()

    def handle_packet(self, cmd: int, body: bytes) -> None:
        """Hand a packet the fast path does not take to gmqtt's handler."""
        self._connection.put_package(Package(cmd, body))

    def parse_properties(self, props: bytes) -> dict:
        """MQTT 5 properties (without their length prefix) in gmqtt's shape:
        a dict of lists."""
        properties, _ = self._connection._handler._parse_properties(
            bytes(pack_variable_byte_integer(len(props))) + props
        )
        return properties


class ClientBase(gmqtt.Client):
    """gmqtt's client on a protocol of our choosing, with the in-flight
    bookkeeping reachable by public names.

    Subclasses set ``protocol_class`` and may override
    :meth:`protocol_options` (extra keyword arguments for it) and
    :meth:`on_message_removed` (a QoS 1 message left gmqtt's queue).
    """

    protocol_class: type = ProtocolBase

    def __init__(self, client_id: str, **kwargs: Any) -> None:
        super().__init__(client_id, **kwargs)
        self._package_handler.id_generator = FastIds()

    def protocol_options(self) -> dict[str, Any]:
        return {}

    def on_message_removed(self, mid: int) -> None:
        pass

    async def _create_connection(self, host, port, ssl, clean_session, keepalive):
        # gmqtt's own steps (see gmqtt.Client._create_connection), on our protocol.
        self._exit_reconnecting_state()
        self._package_handler.clear_topics_aliases()
        self._connack_received.clear()
        self._connection_lost.clear()
        factory = partial(
            self.protocol_class,
            connection_state=self._connection_state,
            id_generator=self._package_handler.id_generator,
            **self.protocol_options(),
        )
        transport, protocol = await asyncio.get_running_loop().create_connection(
            factory, host, port, ssl=ssl
        )
        return MQTTConnection(
            transport, protocol, clean_session, keepalive,
            package_handler=self._package_handler, logger=self._logger,
        )

    def _remove_message_from_queue(self, mid: int) -> None:
        super()._remove_message_from_queue(mid)
        self.on_message_removed(mid)

    def acknowledged(self, mid: int) -> None:
        """What gmqtt's PUBACK handler does, minus its logging and dispatch:
        free the packet id and forget the stored message."""
        self._package_handler.id_generator.free_id(mid)
        self._persistent_storage.remove_message_by_mid(mid)

    def track_inflight(self, mid: int, packet: bytes) -> None:
        """Keep a QoS 1 publish for replay after a reconnect, as gmqtt's own
        ``publish`` does."""
        self._persistent_storage.push_message(mid, packet)

    @property
    def protocol(self) -> ProtocolBase | None:
        """The current connection's protocol."""
        conn = self._connection
        return None if conn is None else conn._protocol

    def receive_maximum(self) -> int | None:
        """The broker's Receive Maximum from the last CONNACK, if it sent one."""
        values = self._package_handler._connack_properties.get("receive_maximum")
        return values[0] if values else None

    def _remove_subscriptions(self, topic: Any) -> None:
        # gmqtt's own looks each kept subscription up in the list of
        # topics: O(kept x removed), seconds for a node whose endpoint
        # shares 10,000 devices (see transport/endpoint/composite.py).
        gone = {topic} if isinstance(topic, str) else set(topic)
        self.subscriptions = [s for s in self.subscriptions if s.topic not in gone]

    def forget_subscriptions(self, topics: list[str]) -> None:
        """Drop kept subscriptions without telling the broker (while there
        is no connection: the next one will not make them)."""
        self._remove_subscriptions(topics)

    def resubscribe_all(self, chunk: int) -> None:
        """Make every kept subscription again, ``chunk`` filters per
        SUBSCRIBE (gmqtt's ``resubscribe`` sends a packet for each)."""
        subs = self.subscriptions
        for i in range(0, len(subs), chunk):
            self._connection.subscribe(subs[i:i + chunk])

    def abort(self) -> None:
        """Drop the connection without DISCONNECT and never reconnect."""
        self._is_active = False
        if self._connection is not None:
            self._connection._transport.abort()
