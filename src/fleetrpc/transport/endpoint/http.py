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
from typing import Any, Callable

import msgspec

from ...wire import REQUEST_DECODER, check_json_depth
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
#: How long an unrouted device's unanswered requests still take an answer, seconds.
LATE_ANSWER_S = 300.0
#: Polls one device may have waiting; a new one beyond ends the oldest (408).
#: (RPC polls and attribute-update polls each.)
MAX_POLLS = 8


class _TbHttpRequest(msgspec.Struct, gc=False):
    id: int
    method: str
    params: msgspec.Raw


_encode = msgspec.json.Encoder().encode


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class HttpDevice:
    """One device polling over HTTP: a route of the endpoint (it has the
    route's ``send_request``) and the answer target of its client-side
    calls (``send_answer``)."""

    __slots__ = ("owner", "device", "base", "polls", "queued", "requests", "rpc_ids", "next_n", "answers",
                 "routed", "timer")

    #: (a Session's ids of client-side calls in flight: this one's are ``answers``)
    calls = None

    def __init__(self, owner: "HttpDevices", device: str) -> None:
        self.owner = owner
        self.device = device
        self.base = owner.endpoint._dev_prefix + device
        #: polls waiting, oldest first: (future, is its client still there?)
        self.polls: deque[tuple[asyncio.Future, Callable[[], bool] | None]] = deque()
        #: requests no poll has taken yet: (number, body, confirm)
        self.queued: deque[tuple[int, bytes, Any]] = deque()
        #: request number awaiting the device's answer -> the REQUEST's ``{node}/{rid}``
        self.requests: dict[int, str] = {}
        #: a persistent call's id -> its request number (see session.merged_retry)
        self.rpc_ids: dict[str, int] | None = None
        self.next_n = 0
        #: client-side calls awaiting the dispatcher's answer: key -> future
        self.answers: dict[str, asyncio.Future] = {}
        self.routed = False
        #: the grace after the last poll, or (unrouted) how long late answers count
        self.timer: asyncio.TimerHandle | None = None

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
                for i, (n, body, confirm) in enumerate(self.queued):
                    if confirm == old:  # not polled yet: delivered when it is
                        self.queued[i] = (n, body, tail)
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
        self._offer((n, _encode(_TbHttpRequest(n, req.method, req.params)), confirm))

    def _offer(self, entry: tuple[int, bytes, Any], first: bool = False) -> None:
        """Hand a request to the oldest poll whose client is still there
        (the others end), or queue it for the next poll (``first``: ahead
        of the queue, as a request given back)."""
        polls = self.polls
        while polls:
            fut, alive = polls.popleft()
            if fut.done():
                continue
            if alive is not None and not alive():
                fut.set_result(None)  # its client has gone: not this one
                continue
            fut.set_result(entry)
            return
        if first:
            self.queued.appendleft(entry)
            return
        self.queued.append(entry)
        if len(self.queued) > self.owner.endpoint.settings.max_pending_responses:
            self._drop(self.queued.popleft())  # its call times out
            self.owner.endpoint.stats.undeliverable += 1

    def _drop(self, entry: tuple[int, bytes, Any]) -> None:
        """A request the device never got: no answer is awaited for it, and
        a persistent call's retry goes out as a new request."""
        n = entry[0]
        if self.requests.pop(n, None) is not None and self.rpc_ids:
            self.rpc_ids = {k: m for k, m in self.rpc_ids.items() if m != n} or None

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

    def _unused(self) -> bool:
        return not (self.routed or self.polls or self.requests or self.answers)


class HttpDevices:
    """The devices of one endpoint that use the HTTP API."""

    def __init__(self, endpoint: Any, grace: float = GRACE_S) -> None:
        self.endpoint = endpoint
        self.grace = grace
        self._devices: dict[str, HttpDevice] = {}
        self._keys = itertools.count(1)
        #: polls that wait for nothing (see idle), per device, oldest first
        self._idlers: dict[str, deque[asyncio.Future]] = {}
        #: the server drains: polls end at once
        self.draining = False
        #: seconds an unrouted device's unanswered requests still take an answer
        self.late_answers = LATE_ANSWER_S

    def __len__(self) -> int:
        return len(self._devices)

    def polls_waiting(self) -> int:
        return sum(map(len, self._idlers.values())) + sum(len(hd.polls) for hd in self._devices.values())

    def _get(self, device: str) -> HttpDevice:
        hd = self._devices.get(device)
        if hd is None:
            hd = self._devices[device] = HttpDevice(self, device)
        return hd

    def _route(self, hd: HttpDevice) -> None:
        if hd.timer is not None:
            hd.timer.cancel()
            hd.timer = None
        if not hd.routed:
            hd.routed = True
            self.endpoint._add_route(hd.device, hd)

    def _release(self, hd: HttpDevice) -> None:
        """A poll ended: unroute the device after the grace, unless it polls again."""
        if hd.polls or hd.timer is not None or not hd.routed:
            return
        hd.timer = asyncio.get_running_loop().call_later(self.grace, self._unroute, hd)

    def _unroute(self, hd: HttpDevice) -> None:
        hd.timer = None
        if hd.polls:
            return
        if hd.routed:
            hd.routed = False
            self.endpoint._remove_route(hd.device, hd)
        while hd.queued:  # their calls time out (a persistent one is sent again)
            hd._drop(hd.queued.popleft())
        hd.rpc_ids = None  # as after an MQTT reconnect: a retry is a new request
        if hd.requests or hd.answers:
            # a device may answer a long command after the grace (then poll again)
            hd.timer = asyncio.get_running_loop().call_later(self.late_answers, self._forget, hd)
        else:
            self._forget(hd)

    def _forget(self, hd: HttpDevice) -> None:
        """Drop an unrouted device (its unanswered requests with it)."""
        if hd.timer is not None:
            hd.timer.cancel()
            hd.timer = None
        if not hd.routed and not hd.polls and self._devices.get(hd.device) is hd:
            del self._devices[hd.device]

    def forget_device(self, device: str) -> None:
        """``device`` is no longer what its token named (deleted, or new
        credentials): its polls end (408), it is unrouted and forgotten."""
        hd = self._devices.get(device)
        if hd is None:
            return
        for fut, _ in hd.polls:
            _expire(fut)
        hd.polls.clear()
        for fut in hd.answers.values():
            _expire(fut)
        hd.requests.clear()
        if hd.timer is not None:
            hd.timer.cancel()
        self._unroute(hd)

    async def poll(self, device: str, timeout: float, alive: Callable[[], bool] | None = None) -> bytes | None:
        """The next request for ``device`` (ThingsBoard's JSON), or None when
        none came within ``timeout`` seconds.  ``alive()`` says whether the
        poll's client is still there: a request is never handed to a poll
        whose client has gone (it goes to the next poll instead)."""
        if self.draining:
            return None
        hd = self._get(device)
        self._route(hd)
        if hd.queued and (alive is None or alive()):
            _, body, confirm = hd.queued.popleft()
            hd._confirm(confirm)
            self._release(hd)
            return body
        if len(hd.polls) >= MAX_POLLS:
            _expire(hd.polls.popleft()[0])  # the oldest ends (408): polls are bounded per device
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        timer = loop.call_later(timeout, _expire, fut)
        hd.polls.append((fut, alive))
        try:
            entry = await fut
        except asyncio.CancelledError:  # its handler was cancelled
            if fut.done() and not fut.cancelled() and fut.result() is not None:
                hd._offer(fut.result(), first=True)  # handed over just before: not lost
            raise
        finally:
            timer.cancel()
            for i, (f, _) in enumerate(hd.polls):
                if f is fut:
                    del hd.polls[i]
                    break
            self._release(hd)
        if entry is None:
            return None
        if alive is not None and not alive():
            hd._offer(entry, first=True)
            return None
        hd._confirm(entry[2])
        return entry[1]

    async def idle(self, device: str, timeout: float) -> None:
        """A poll nothing will answer (attribute updates: fleetrpc keeps
        none): it waits out ``timeout``, or less when the server drains or
        ``device`` opens more than :data:`MAX_POLLS` of them (the oldest
        ends: aiohttp does not end a handler whose client has gone, so
        polls dropped at once would otherwise pile up for their whole
        timeout).  It does not make the device reachable for RPC (nor does
        it in ThingsBoard)."""
        if self.draining:
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        timer = loop.call_later(timeout, _expire, fut)
        idlers = self._idlers.get(device)
        if idlers is None:
            idlers = self._idlers[device] = deque()
        elif len(idlers) >= MAX_POLLS:
            _expire(idlers.popleft())
        idlers.append(fut)
        try:
            await fut
        finally:
            timer.cancel()
            try:
                idlers.remove(fut)
            except ValueError:
                pass  # (ended as the oldest)
            if not idlers and self._idlers.get(device) is idlers:
                del self._idlers[device]

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
        if hd._unused():
            self._forget(hd)  # the last late answer of an unrouted device
        return True

    async def call(self, device: str, payload: bytes, timeout: float = CALL_TIMEOUT_S) -> bytes | None:
        """A client-side call ``{"method", "params"}`` of ``device``: the
        dispatcher's answer, or None when none came within ``timeout``.
        Raises msgspec.DecodeError for a body that is not such an object."""
        try:
            check_json_depth(payload)
            REQUEST_DECODER.decode(payload)
        except RecursionError:  # deeper than MAX_JSON_DEPTH (JsonTooDeep), or than msgspec recurses
            raise msgspec.DecodeError("JSON nested too deeply") from None
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
            if hd._unused():
                self._forget(hd)

    def end_polls(self) -> None:
        """Answer every waiting poll with "nothing came" (408): the server is
        draining, and a poll is no work in flight to wait for."""
        self.draining = True  # (and the polls that start from now on end at once)
        idlers = (f for waiting in self._idlers.values() for f in waiting)
        for fut in [*idlers, *(f for hd in self._devices.values() for f, _ in hd.polls)]:
            _expire(fut)

    def close(self) -> None:
        """The endpoint closes: waiting polls and calls end as timed out
        (408), so that the devices poll again, elsewhere or later."""
        self.end_polls()
        for hd in list(self._devices.values()):
            if hd.timer is not None:
                hd.timer.cancel()
            for fut in hd.answers.values():
                _expire(fut)
        self._devices.clear()
