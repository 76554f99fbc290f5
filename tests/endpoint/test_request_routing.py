"""The dispatcher hands requests to a transport that routes by device
(``publish_request``) with their device, instead of a topic the transport
parses again; only when the transport names requests as it does."""

from __future__ import annotations

import asyncio

from fleetrpc import Dispatcher, Settings
from fleetrpc.device import DeviceClient
from fleetrpc.errors import RpcTimeoutError
from fleetrpc.transport.endpoint import CompositeTransport, DeviceEndpoint, EndpointSettings

from .conftest import make_rig


class _Recorder:
    """A transport that records how each request reached it."""

    def __init__(self, request_head: str) -> None:
        self.request_head = request_head
        self.seen: list[tuple] = []

    async def start(self, filters=()) -> None:
        pass

    async def close(self) -> None:
        pass

    def publish(self, topic, payload, qos=1, retain=False, token=-1, properties=None) -> None:
        self.seen.append(("publish", topic))

    def publish_request(self, device, topic, payload, qos=1, token=-1, properties=None) -> None:
        self.seen.append(("publish_request", device, topic))


async def _one_request(head: str) -> tuple[list[tuple], str]:
    t = _Recorder(head)
    d = Dispatcher(Settings(node_id="n1", presence=False, min_timeout_ms=0), transport=t)
    await d.start()
    try:
        call = asyncio.ensure_future(d.call("dev-7", "m", timeout=0.05))
        try:
            await call
        except RpcTimeoutError:
            pass
    finally:
        await d.close()
    return t.seen, d.node


async def test_requests_go_with_their_device_when_the_transport_names_them_alike():
    (seen,), node = await _one_request("fleetrpc/d/")
    assert seen[:2] == ("publish_request", "dev-7") and seen[2].startswith(f"fleetrpc/d/dev-7/req/{node}/")


async def test_a_transport_naming_requests_otherwise_gets_the_topic_to_parse():
    # (a transport under another prefix must not route by a device whose
    # position in the topic it would get wrong)
    (seen,), node = await _one_request("other/d/")
    assert seen[0] == "publish" and seen[1].startswith(f"fleetrpc/d/dev-7/req/{node}/")


async def test_a_direct_device_gets_its_request_and_an_absent_one_is_counted_undeliverable():
    async with make_rig() as rig:
        d, ep = rig.dispatcher, rig.endpoint
        assert d._publish_request == ep.publish_request
        dev = DeviceClient("dev-a", f"mqtt://127.0.0.1:{rig.port}", username="token-a")
        dev.add_method("echo", lambda params: params)
        await dev.connect()
        try:
            await rig.online("dev-a")
            requests = ep.stats.requests
            assert await d.call("dev-a", "echo", {"x": 1}) == {"x": 1}
            assert ep.stats.requests == requests + 1
            undeliverable = ep.stats.undeliverable
            ep.publish_request("dev-nobody", f"{ep.request_head}dev-nobody/req/n1/9", b"{}", 1, -1, None)
            assert ep.stats.undeliverable == undeliverable + 1
        finally:
            await dev.close()


async def test_the_composite_sends_a_device_not_connected_here_through_the_broker():
    class Broker:
        published: list = []

        def publish(self, topic, payload, qos=1, retain=False, token=-1, properties=None):
            self.published.append((topic, payload, qos, retain, token))

    ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0), authenticate=lambda u, p, c: None)
    broker = Broker()
    composite = CompositeTransport(ep, broker)
    assert composite.request_head == ep.request_head == "fleetrpc/d/"
    composite.publish_request("dev-b", "fleetrpc/d/dev-b/req/n1/5", b"{}", 1, 5, None)
    assert broker.published == [("fleetrpc/d/dev-b/req/n1/5", b"{}", 1, False, 5)]
    assert ep.stats.undeliverable == 0  # not the endpoint's to count: the broker took it
