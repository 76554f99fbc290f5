"""ThingsBoard's HTTP device API for RPC, served beside the MQTT listener.

A device that long-polls ``GET /api/v1/{token}/rpc`` is reachable for
server-side calls exactly like an MQTT session subscribed to its request
topic: an :class:`HttpDevice` is one of the endpoint's routes of the device
(``DeviceEndpoint._routes``), so presence, the composite transport, other
nodes' relayed calls and persistent RPC treat it alike.

- A request goes to the oldest poll waiting for it whose client is still
  there, as ThingsBoard's body ``{"id": n, "method", "params"}``, and is
  DELIVERED then (a one-way call ends there); with no poll waiting it
  waits for the next one.
- The device stays routed (online) while it polls and ``grace`` seconds
  after a poll ends, so that re-polling does not make it blink offline; a
  call made between two polls is queued for the next.
- ``POST /api/v1/{token}/rpc/{n}`` answers request ``n``;
  ``POST /api/v1/{token}/rpc`` ``{"method", "params"}`` is a client-side
  call, answered in the response body.

The HTTP handlers are in ``api/thingsboard/device_api.py``; this module
keeps no HTTP objects, only futures.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any

import msgspec

from ...wire import REQUEST_DECODER
from .session import _persistent_id, _request_parts, merged_retry, remember_id

__all__ = ["HttpDevice", "HttpDevices", "POLL_DEFAULT_MS", "POLL_MAX_MS", "CALL_TIMEOUT_S"]

#: A poll without ``timeout`` (or 0) waits this long, as ThingsBoard's
#: ``transport.http.request_timeout``; longer ones are capped at its
#: ``max_request_timeout``.
POLL_DEFAULT_MS = 60_000
POLL_MAX_MS = 300_000
#: How long a client-side call over HTTP waits for its answer, seconds.
CALL_TIMEOUT_S = 60.0
#: How long a device stays reachable after its last poll ended, seconds.
GRACE_S = 10.0


class _TbHttpRequest(msgspec.Struct, gc=False):
    id: int
    method: str
    params: msgspec.Raw


_encode = msgspec.json.Encoder().encode


class HttpDevice:
    """One device polling over HTTP: a route of the endpoint (it has the
    route's ``send_request``) and the answer target of its client-side
    calls (``send_answer``)."""

    __slots__ = ("owner", "device", "base", "polls", "queued", "requests", "rpc_ids", "next_n", "answers",
                 "routed", "unroute_at")

    #: (a Session's ids of client-side calls in flight: this one's are ``answers``)
    calls = None

    def __init__(self, owner: "HttpDevices", device: str) -> None:
        self.owner = owner
        self.device = device
        self.base = owner.endpoint._dev_prefix + device
        #: polls waiting, oldest first
        self.polls: deque[asyncio.Future] = deque()
        #: requests no poll has taken yet: (body, confirm)
        self.queued: deque[tuple[bytes, Any]] = deque()
        #: request number awaiting the device's answer -> the REQUEST's ``{node}/{rid}``
        self.requests: dict[int, str] = {}
        #: a persistent call's id -> its request number (see session.merged_retry)
        self.rpc_ids: dict[str, int] | None = None
        self.next_n = 0
        #: client-side calls awaiting the dispatcher's answer: key -> future
        self.answers: dict[str, asyncio.Future] = {}
        self.routed = False
        self.unroute_at: asyncio.TimerHandle | None = None

    # -- the endpoint's side ----------------------------------------------------

    def send_request(self, topic: str, tail_at: int, payload: bytes, token: int, props: dict | None) -> None:
        ep = self.owner.endpoint
        try:
            req = _request_parts(payload)
        except msgspec.DecodeError:
            ep.stats.undeliverable += 1
            return
        limit = ep.settings.max_pending_responses
        if token < 0:
            tail = topic[tail_at:]
            rpc_id = _persistent_id(payload)
            old = merged_retry(self.requests, self.rpc_ids, rpc_id, tail) if rpc_id is not None else None
            if old is not None:
                # the device has it, or gets it with its next poll: not twice
                ep.stats.retries_merged += 1
                for i, (body, confirm) in enumerate(self.queued):
                    if confirm == old:  # not polled yet: delivered when it is
                        self.queued[i] = (body, tail)
                        return
                self._confirm(tail)
                return
            n = self._next()
            self.requests[n] = tail
            if len(self.requests) > limit:
                del self.requests[next(iter(self.requests))]
            if rpc_id is not None:
                self.rpc_ids = remember_id(self.rpc_ids, self.requests, rpc_id, n, limit)
            confirm: Any = tail
        else:
            n = self._next()
            confirm = token
        body = _encode(_TbHttpRequest(n, req.method, req.params))
        while self.polls:
            poll = self.polls.popleft()
            if not poll.done():
                poll.set_result(body)
                self._confirm(confirm)
                return
        self.queued.append((body, confirm))
        if len(self.queued) > ep.settings.max_pending_responses:
            self.queued.popleft()  # its call times out
            ep.stats.undeliverable += 1

    def _next(self) -> int:
        # ThingsBoard's request ids are 32-bit ints, as the MQTT sessions' are
        self.next_n = n = self.next_n + 1 if self.next_n < 2147483647 else 1
        return n

    def send_answer(self, topic: str, payload: bytes, qos: int, props: dict | None = None) -> None:
        fut = self.answers.pop(topic, None)
        if fut is not None and not fut.done():
            fut.set_result(payload)

    def _confirm(self, confirm: Any) -> None:
        """The device has the request: DELIVERED (a one-way call ends)."""
        ep = self.owner.endpoint
        if confirm.__class__ is int:
            ep.on_published(confirm)
        else:
            ep._deliver(self.base + "/ack/" + confirm, b"")


class HttpDevices:
    """The devices of one endpoint that use the HTTP API."""

    def __init__(self, endpoint: Any, grace: float = GRACE_S) -> None:
        self.endpoint = endpoint
        self.grace = grace
        self._devices: dict[str, HttpDevice] = {}
        self._keys = itertools.count(1)
        #: polls that wait for nothing (see idle)
        self._idlers: set[asyncio.Future] = set()

    def __len__(self) -> int:
        return len(self._devices)

    def _get(self, device: str) -> HttpDevice:
        hd = self._devices.get(device)
        if hd is None:
            hd = self._devices[device] = HttpDevice(self, device)
        return hd

    def _route(self, hd: HttpDevice) -> None:
        if hd.unroute_at is not None:
            hd.unroute_at.cancel()
            hd.unroute_at = None
        if not hd.routed:
            hd.routed = True
            self.endpoint._add_route(hd.device, hd)

    def _release(self, hd: HttpDevice) -> None:
        """A poll ended: unroute the device after the grace, unless it polls again."""
        if hd.polls or hd.unroute_at is not None:
            return
        hd.unroute_at = asyncio.get_running_loop().call_later(self.grace, self._unroute, hd)

    def _unroute(self, hd: HttpDevice) -> None:
        hd.unroute_at = None
        if hd.polls:
            return
        if hd.routed:
            hd.routed = False
            self.endpoint._remove_route(hd.device, hd)
        hd.queued.clear()  # their calls time out (a persistent one is retried)
        if not hd.answers and not hd.requests:
            # (With requests unanswered it stays: a device may answer a long
            # command after the grace, then poll again.)
            self._devices.pop(hd.device, None)

    async def poll(self, device: str, timeout: float) -> bytes | None:
        """The next request for ``device`` (ThingsBoard's JSON), or None when
        none came within ``timeout`` seconds."""
        hd = self._get(device)
        self._route(hd)
        if hd.queued:
            body, confirm = hd.queued.popleft()
            hd._confirm(confirm)
            self._release(hd)
            return body
        fut = asyncio.get_running_loop().create_future()
        hd.polls.append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            try:
                hd.polls.remove(fut)
            except ValueError:
                pass  # taken by send_request
            self._release(hd)

    async def idle(self, timeout: float) -> None:
        """A poll nothing will answer (attribute updates: fleetrpc keeps
        none): it waits out ``timeout``, or less when the server drains.
        It does not make the device reachable for RPC (nor does it in
        ThingsBoard)."""
        fut = asyncio.get_running_loop().create_future()
        self._idlers.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._idlers.discard(fut)

    def answer(self, device: str, n: int, payload: bytes) -> bool:
        """The device's answer to request ``n``; False when no such request
        awaits one (answered already, or forgotten)."""
        hd = self._devices.get(device)
        tail = hd.requests.pop(n, None) if hd is not None else None
        ep = self.endpoint
        if tail is None:
            ep.stats.unknown_response += 1
            return False
        ep.stats.responses += 1
        ep._deliver(hd.base + "/res/" + tail, payload)
        return True

    async def call(self, device: str, payload: bytes, timeout: float = CALL_TIMEOUT_S) -> bytes | None:
        """A client-side call ``{"method", "params"}`` of ``device``: the
        dispatcher's answer, or None when none came within ``timeout``.
        Raises msgspec.DecodeError for a body that is not such an object."""
        REQUEST_DECODER.decode(payload)
        ep = self.endpoint
        hd = self._get(device)
        if len(hd.answers) >= ep.settings.max_client_calls:
            raise OverflowError("too many calls awaiting an answer")
        key = str(next(self._keys))
        fut = asyncio.get_running_loop().create_future()
        hd.answers[key] = fut
        cid = ep._new_call(hd, key, 0, None)
        ep.stats.client_calls += 1
        ep._deliver(hd.base + "/call/" + cid, payload)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            hd.answers.pop(key, None)
            ep._calls.pop(cid, None)
            if not hd.routed and not hd.answers and not hd.polls and not hd.requests:
                self._devices.pop(device, None)

    def end_polls(self) -> None:
        """Answer every waiting poll with "nothing came" (408): the server is
        draining, and a poll is no work in flight to wait for."""
        for fut in [*self._idlers, *(f for hd in self._devices.values() for f in hd.polls)]:
            if not fut.done():
                fut.set_result(None)

    def close(self) -> None:
        """The endpoint closes: waiting polls and calls end as timed out
        (408), so that the devices poll again, elsewhere or later."""
        self.end_polls()
        for hd in list(self._devices.values()):
            if hd.unroute_at is not None:
                hd.unroute_at.cancel()
            for fut in hd.answers.values():
                if not fut.done():
                    fut.set_result(None)
        self._devices.clear()
