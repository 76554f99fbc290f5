"""The device endpoint's own work per round trip, without sockets.

``bench_endpoint.py`` measures whole processes over loopback TCP, where the
kernel's share (a loopback ``send`` also runs the receiver's TCP input) and
the machine's other load dominate.  This one drives :class:`DeviceEndpoint`
sessions through a stand-in transport that only counts writes, so what it
measures is the endpoint's Python and compiled-core work alone: a REQUEST
published by the owner, framed and queued; the device's PUBACK and reply fed
back as bytes; the ACK and REPLY handed to the owner.  Steady and therefore
fit for ``valgrind --tool=callgrind`` (instruction counts do not depend on
the machine's load)::

    python benchmarks/bench_endpoint_core.py --devices 1000 --rounds 20
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        python benchmarks/bench_endpoint_core.py --rounds 5
    callgrind_annotate /tmp/cg.out | head -40

``--form v1`` uses ThingsBoard's topics, ``--form fleetrpc`` the SDK's
(the simulator's); ``--qos`` the device's subscription QoS (and its reply's).

``--dispatcher``: a real :class:`Dispatcher` on the endpoint calls, each
round one ``broadcast`` to every device (as a fleet job calls), so the
figure is the server process's whole work per round trip but the kernel's
and uvloop's: pending table, queues, timing wheel, codec, endpoint.  That
is the part of ``bench_endpoint.py``'s direct-path CPU that fleetrpc's own
code decides, measured without its noise::

    python benchmarks/bench_endpoint_core.py --dispatcher --devices 10000 --qos 0
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

import uvloop

from fleetrpc import Dispatcher, Settings
from fleetrpc._core import encode_publish
from fleetrpc.transport.endpoint import DeviceEndpoint, EndpointSettings
from fleetrpc.transport.endpoint.packets import mqtt_string, packet
from fleetrpc.transport.endpoint.session import Session


class _Transport:
    """Enough of an asyncio transport for a session: counts what is written."""

    __slots__ = ("writes", "bytes", "last")

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)
        self.last = data

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default=None):
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _published(written: bytes) -> tuple[str, int]:
    """Topic and packet id of the PUBLISH that ends ``written`` (the one
    written last to a device: the round's request, after the PUBACK of
    the device's last reply when both left in one write)."""
    while written[0] == 0x40:
        written = written[4:]
    i = 1
    while written[i] & 0x80:
        i += 1
    i += 1
    n = int.from_bytes(written[i:i + 2], "big")
    topic = written[i + 2:i + 2 + n].decode()
    qos = (written[0] >> 1) & 3
    return topic, int.from_bytes(written[i + 2 + n:i + 4 + n], "big") if qos else 0


async def run(args) -> dict:
    loop = asyncio.get_running_loop()
    ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0, max_inflight=1000),
                        authenticate=lambda u, p, c: c)
    ep._loop = loop  # no listener: sessions are made by hand
    replies = 0
    d = None
    if args.dispatcher:
        d = Dispatcher(Settings(node_id="bench", qos=args.qos, min_timeout_ms=0,
                                inflight_window=max(20000, args.devices)), transport=ep)
        await d.start()  # (the endpoint's start: a listener on a free port, unused)
    else:
        def on_message(topic: str, payload: bytes, props) -> None:
            nonlocal replies
            if "/res/" in topic:
                replies += 1

        ep.on_message = on_message
        ep.on_published = lambda token: None
    devices = [f"dev-{i:05d}" for i in range(args.devices)]
    sessions = []
    transports = []
    prefix = ep.settings.prefix
    for dev in devices:
        t = _Transport()
        s = Session(ep)
        s.connection_made(t)
        s.data_received(packet(0x10, mqtt_string("MQTT") + bytes((4, 0x82)) + (60).to_bytes(2, "big")
                               + mqtt_string(dev) + mqtt_string("bench")))
        sub = (f"{prefix}/d/{dev}/req/#" if args.form == "fleetrpc" else "v1/devices/me/rpc/request/+")
        s.data_received(packet(0x82, (1).to_bytes(2, "big") + mqtt_string(sub) + bytes((args.qos,))))
        sessions.append(s)
        transports.append(t)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    body = b'{"method":"echo","params":{"i":1}}'
    answer = b'{"i":1}'
    rid = 0
    untimed = 0.0  # CPU spent making the devices' bytes
    gc.collect()

    fleetrpc = args.form == "fleetrpc"
    res_base = [f"{prefix}/d/{dev}/res/bench/" for dev in devices]
    req_topic = [f"{prefix}/d/{dev}/req/bench/" for dev in devices]
    publish = ep.publish
    qos = args.qos

    async def one_round() -> None:
        # The device side costs as little as it can (its bytes are made
        # here): the per-round-trip figure is mostly the endpoint's.
        nonlocal rid, replies, untimed
        rid += 1
        tail = str(rid)
        if d is None:
            for topic in req_topic:
                publish(topic + tail, body, 1, False, -1, None)
        else:
            bc = d.broadcast(devices, "echo", {"i": 1}, timeout=30)
        await asyncio.sleep(0)  # the endpoint's flush: two hops (one after the wakeups)
        await asyncio.sleep(0)
        # The devices' bytes, made first: their making is not timed.
        made = time.process_time()
        packets = []
        for k, s in enumerate(sessions):
            if d is not None:
                # the request's own topic and packet id, from its bytes
                rtopic, mid = _published(transports[k].last)
                if fleetrpc:
                    rtopic = rtopic.replace("/req/", "/res/", 1)
                else:
                    rtopic = "v1/devices/me/rpc/response/" + rtopic.rpartition("/")[2]
            else:
                rtopic = res_base[k] + tail if fleetrpc else "v1/devices/me/rpc/response/" + str(s.next_n)
                mid = qos and s.extra.next_mid  # (a session that has QoS 1 in flight has its extra)
            if qos:
                packets.append(b"\x40\x02" + mid.to_bytes(2, "big") + encode_publish(rtopic, answer, 1, mid, False, False))
            else:
                packets.append(encode_publish(rtopic, answer, 0, 0, False, False))
        untimed += time.process_time() - made
        for s, written in zip(sessions, packets):
            s.data_received(written)
        await asyncio.sleep(0)  # PUBACKs owed to the devices
        if d is not None:
            summary = await bc.wait()
            if summary.succeeded != len(devices):
                raise RuntimeError(f"{summary.failed} of {len(devices)} calls failed: "
                                   f"{next(o.error for o in summary.outcomes if not o.ok)!r}")
            replies += summary.succeeded

    await one_round()  # warm-up
    writes0 = sum(t.writes for t in transports)
    replies0 = replies
    untimed = 0.0
    t0 = time.process_time()
    for _ in range(args.rounds):
        await one_round()
    cpu = time.process_time() - t0 - untimed
    n = replies - replies0
    writes = sum(t.writes for t in transports) - writes0
    if d is not None:
        await d.close()
    return {"round_trips": n, "us_per_rt": cpu / n * 1e6, "writes_per_rt": writes / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--qos", type=int, default=1, choices=(0, 1))
    p.add_argument("--form", choices=("fleetrpc", "v1"), default="fleetrpc")
    p.add_argument("--dispatcher", action="store_true",
                   help="a Dispatcher broadcasts to every device each round (dispatcher + endpoint)")
    args = p.parse_args()
    r = uvloop.run(run(args))
    what = "dispatcher + endpoint" if args.dispatcher else "endpoint only"
    print(f"form={args.form} qos={args.qos} devices={args.devices}: {r['round_trips']} round trips, "
          f"{r['us_per_rt']:.2f} us CPU each ({what}, the devices' bytes made beforehand), "
          f"{r['writes_per_rt']:.2f} writes each")


if __name__ == "__main__":
    main()
