"""Envelope codec (compiled); pure twin: ``codec_py.py``."""

from typing import Any, final

from .constants import Kind

@final
class Message:
    """One decoded inbound MQTT message (read-only)."""

    @property
    def kind(self) -> Kind: ...
    @property
    def device(self) -> str: ...
    @property
    def node(self) -> str | None: ...
    @property
    def rid(self) -> int: ...
    @property
    def body(self) -> Any: ...
    @property
    def error(self) -> str | None: ...
    def __init__(
        self,
        kind: Kind,
        device: str,
        node: str | None = None,
        rid: int = 0,
        body: Any = None,
        error: str | None = None,
    ) -> None: ...

@final
class Codec:
    """Classify and decode inbound MQTT messages; encode outbound ones."""

    @property
    def prefix(self) -> str: ...
    @property
    def max_payload(self) -> int: ...
    def __init__(self, prefix: str = "fleetrpc", max_payload: int = 262144) -> None: ...
    def decode(self, topic: str, payload: bytes | bytearray | memoryview) -> Message: ...
    def encode_request(self, method: str, params: Any) -> bytes: ...
    def encode(self, obj: Any) -> bytes: ...
