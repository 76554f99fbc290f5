"""Stubs of the compiled MQTT packet fast path (twin: mqttfast_py.py)."""

from typing import Callable

class MqttReader:
    """Incremental MQTT packet reader for one connection."""

    v5: bool
    #: Packets whose handler raised (each logged; parsing went on).
    @property
    def handler_errors(self) -> int: ...
    def __init__(
        self,
        on_publish: Callable[[str, bytes, None], object],
        on_packet: Callable[[int, bytes], object],
        v5: bool = ...,
        on_puback: Callable[[int], object] | None = ...,
        on_props: Callable[[str, bytes, bytes], object] | None = ...,
    ) -> None: ...
    @property
    def buffered(self) -> int: ...
    def feed(self, data: bytes) -> int:
        """Consume data, dispatch every complete packet, return how many; a
        handler that raises is logged and counted, and parsing goes on."""
    def take_acks(self) -> bytes:
        """The PUBACKs owed for the QoS 1 messages delivered so far."""

def encode_publish(
    topic: str,
    payload: bytes,
    qos: int,
    mid: int,
    retain: bool = ...,
    v5: bool = ...,
    response_topic: str | None = ...,
    correlation_data: bytes | None = ...,
) -> bytes:
    """One PUBLISH packet."""
