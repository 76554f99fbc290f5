"""A bare MQTT client for tests: build any packet, send any bytes, read
exactly what the server answers.  Third-party clients hide the bytes (and
refuse to send malformed ones); these tests need both."""

from __future__ import annotations

import asyncio

from fleetrpc._core import encode_publish
from fleetrpc.transport.endpoint.packets import encode_connect, encode_subscribe
# re-exported for the tests that frame odd packets themselves
from fleetrpc.transport.endpoint.packets import mqtt_string as mstr, packet, varint  # noqa: F401


def connect(username: str | None = None, password: str | bytes | None = None, *, version: int = 4,
            client_id: str = "", keepalive: int = 60, clean: bool = True, props: dict | None = None) -> bytes:
    return encode_connect(client_id, version=version, keepalive=keepalive, clean=clean,
                          username=username, password=password, props=props)


def subscribe(mid: int, *filters: tuple[str, int], version: int = 4) -> bytes:
    return encode_subscribe(mid, filters, version)


def publish(topic: str, payload: bytes, qos: int = 0, mid: int = 0, version: int = 4) -> bytes:
    return encode_publish(topic, payload, qos, mid, False, version == 5)


def puback(mid: int) -> bytes:
    return b"\x40\x02" + mid.to_bytes(2, "big")


class RawClient:
    """One TCP connection; ``read_packet()`` returns (first byte, body)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, **sock_opts) -> "RawClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", port, **sock_opts)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_packet(self, timeout: float = 5.0) -> tuple[int, bytes]:
        async def read() -> tuple[int, bytes]:
            first = (await self.reader.readexactly(1))[0]
            length, shift = 0, 0
            while True:
                b = (await self.reader.readexactly(1))[0]
                length |= (b & 0x7F) << shift
                if not b & 0x80:
                    break
                shift += 7
            return first, await self.reader.readexactly(length)

        return await asyncio.wait_for(read(), timeout)

    async def closed(self, timeout: float = 10.0) -> bytes:
        """Read until the server closes; returns what came before EOF."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def connect(self, username: str | None, **kw) -> tuple[int, bytes]:
        self.send(connect(username, **kw))
        return await self.read_packet()

    def close(self) -> None:
        self.writer.close()


def publish_topic(body: bytes, qos: int, v5: bool) -> tuple[str, bytes, int]:
    """A received PUBLISH body -> (topic, payload, packet id)."""
    n = int.from_bytes(body[:2], "big")
    topic = body[2:2 + n].decode()
    i = 2 + n
    mid = 0
    if qos:
        mid = int.from_bytes(body[i:i + 2], "big")
        i += 2
    if v5:
        plen, shift = 0, 0
        while True:
            b = body[i]
            i += 1
            plen |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
        i += plen
    return topic, body[i:], mid
