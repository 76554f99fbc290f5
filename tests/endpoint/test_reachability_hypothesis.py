"""Property-based: whatever a device subscribes to and unsubscribes from, in
any order, it counts as reachable for RPC exactly while it holds a
subscription its requests reach (one of ThingsBoard's request topics, or a
fleetrpc filter matching ``{p}/d/{id}/req/...``), and a request sent then
is written to it.  A device holding two such subscriptions once went
unreachable when it dropped one, and one left with only ``ret/+`` stayed
"reachable" while its requests went nowhere."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings, strategies as st

from fleetrpc.transport.endpoint import DeviceEndpoint, EndpointSettings
from fleetrpc.transport.endpoint.session import RPC_SUBSCRIPTIONS, Session
from fleetrpc.wire.topics import topic_matches

from . import rawmqtt as raw
from .test_session_hypothesis import FakeTransport

FILTERS = [
    "v1/devices/me/rpc/request/+", "v2/r/req/+", "v2/r/req/j/+", "v1/gateway/rpc", "v1/devices/me/attributes",
    "fleetrpc/d/dev-a/req/#", "fleetrpc/d/dev-a/ret/+", "fleetrpc/d/dev-a/#", "fleetrpc/d/dev-a/+/n1/+",
    "fleetrpc/d/dev-a/req/n1/+", "fleetrpc/d/dev-a",
]
#: a request of this node (n1).  (A filter naming one node only, e.g.
#: ``req/n2/+``, counts as taking requests too: the session does not know
#: which node will call; it is left out here.)
REQUEST = "fleetrpc/d/dev-a/req/n1/"


def ops():
    return st.lists(st.tuples(st.booleans(), st.sampled_from(FILTERS), st.integers(0, 1)), max_size=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops(), st.sampled_from([4, 5]))
def test_reachable_exactly_while_a_request_subscription_is_held(sequence, version):
    loop = asyncio.new_event_loop()
    try:
        ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0, max_inflight=100),
                            authenticate=lambda u, p, c: "dev-a" if u == "tok" else None)
        ep._loop = loop
        transport = FakeTransport()
        session = Session(ep)
        session.connection_made(transport)
        session.data_received(raw.connect("tok", version=version, client_id="c"))
        ep._flush()
        for k, (subscribe, flt, qos) in enumerate(sequence, 1):
            if subscribe:
                session.data_received(raw.subscribe(k, (flt, qos), version=version))
            else:
                session.data_received(raw.packet(0xA2, k.to_bytes(2, "big") + (b"\x00" if version == 5 else b"")
                                                 + raw.mstr(flt)))
            ep._flush()
            held = session.subscriptions()
            reachable = any(f in RPC_SUBSCRIPTIONS or topic_matches(f, REQUEST + "1") for f in held)
            assert ep.reaches("dev-a") == reachable, (held, k)
            before = len(transport.out)
            ep.publish(f"{REQUEST}{k}", b'{"method":"m","params":{}}', 1, False, -1)
            ep._flush()
            assert (len(transport.out) > before) == reachable, (held, k)
        session.connection_lost(None)
        assert not ep.reaches("dev-a")
    finally:
        loop.close()
