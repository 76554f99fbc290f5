"""Whatever arrives from the network, the dispatcher neither crashes nor
loses a pending call: property-based, through its real inbound path."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings, strategies as st

from fleetrpc.config import Settings
from fleetrpc.dispatch import Dispatcher


class FakeTransport:
    """Stands in for the broker connection (records what is published)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.connected = True

    async def start(self, filters) -> None:
        pass

    async def close(self) -> None:
        pass

    def publish(self, topic, payload, qos=1, retain=False, token=-1, properties=None) -> None:
        self.published.append((topic, payload))
        if token >= 0:
            self.on_published(token)


NODE = "fz"
levels = st.sampled_from(["fleetrpc", "d", "dev-1", "dev-2", "res", "ack", "call", "presence",
                          "hb", "elves", NODE, "1", "2", "-1", "99999999999999999999", "", "+", "é"])
topics = st.one_of(
    st.lists(levels, min_size=1, max_size=7).map("/".join),
    st.text(max_size=60),
)
payloads = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"", b"{}", b"null", b'{"status":"online"}', b'{"status":"offline"}',
                     b'{"method":"m","params":{}}', b'{"method":1}', b"[1,2", b'"x"', b"\xff\xfe"]),
)
props = st.one_of(st.none(), st.just({"response_topic": ["x/y"], "correlation_data": [b"1"]}),
                  st.just({"response_topic": [None]}), st.just({}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(topics, payloads, props), max_size=30))
def test_random_inbound_never_crashes_and_keeps_pending_calls(messages):
    async def scenario() -> None:
        d = Dispatcher(Settings(node_id=NODE, min_timeout_ms=0, presence=False), transport=FakeTransport())
        await d.start()
        d.add_handler("m", lambda device, params: params)
        fut = asyncio.ensure_future(d.call("dev-9", "echo", {}, timeout=30))
        await asyncio.sleep(0)
        for topic, payload, prop in messages:
            d._on_message(topic, payload, prop)  # must never raise
        # the pending call of dev-9 is untouched by anything not from dev-9
        assert not fut.done()
        assert len(d._pending) == 1
        await d.close()
        await asyncio.sleep(0)
        assert fut.done() and type(fut.exception()).__name__ == "DispatcherClosedError"

    asyncio.run(scenario())
