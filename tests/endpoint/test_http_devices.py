"""The HTTP devices' bookkeeping (``transport/endpoint/http.py``) without
HTTP: what an unanswered request keeps and for how long, routes beside a
gateway's binding, the bound on polls per device, the drain; and the MQTT
short attribute topics' answer."""

from __future__ import annotations

import asyncio

import pytest

from fleetrpc.errors import RpcTimeoutError
from fleetrpc.transport.endpoint.http import MAX_POLLS, HttpDevice
from fleetrpc.transport.endpoint.session import SubDevice

from . import rawmqtt as raw
from .conftest import make_rig
from .test_limits import _until, assert_nothing_left


async def test_an_unanswered_request_is_kept_for_late_answers_then_forgotten():
    async with make_rig() as rig:
        http = rig.endpoint.http
        http.grace, http.late_answers = 0.05, 0.3
        for _ in range(3):  # the device takes three requests and answers none
            poll = asyncio.ensure_future(http.poll("dev-a", 2.0))
            await rig.online("dev-a")
            with pytest.raises(RpcTimeoutError):
                await rig.dispatcher.call("dev-a", "slow", {}, timeout=0.1)
            assert await poll is not None
        await rig.offline("dev-a")
        assert len(http) == 1  # an answer may still come late ...
        (hd,) = http._devices.values()
        assert sorted(hd.requests) == [1, 2, 3]
        assert http.answer("dev-a", 3, b'"late"') and not http.answer("dev-a", 3, b'"again"')
        await _until(lambda: len(http) == 0)  # ... for late_answers, then nothing is left
        await assert_nothing_left(rig)


async def test_the_last_late_answer_forgets_the_device_at_once():
    async with make_rig() as rig:
        http = rig.endpoint.http
        http.grace = 0.05
        poll = asyncio.ensure_future(http.poll("dev-a", 2.0))
        await rig.online("dev-a")
        call = asyncio.ensure_future(rig.dispatcher.call("dev-a", "slow", {}, timeout=5))
        assert await poll is not None
        await rig.offline("dev-a")
        assert http.answer("dev-a", 1, b'"done"')
        assert await call == "done"
        await assert_nothing_left(rig)


async def test_a_gateways_binding_never_takes_the_requests_of_a_device_polling_itself():
    async with make_rig() as rig:
        ep = rig.endpoint
        hd = ep.http._get("dev-a")
        ep.http._route(hd)  # dev-a polls over HTTP
        sub = SubDevice(None, "A", "dev-a", ep._dev_prefix + "dev-a")
        ep._add_route("dev-a", sub)  # then a gateway announces it
        assert ep._routes["dev-a"] == (sub, hd)  # requests go to the last route
        ep._remove_route("dev-a", sub)
        ep._add_route("dev-a", sub)
        assert ep._routes["dev-a"][-1] is hd
        ep._remove_route("dev-a", hd)
        assert ep._routes["dev-a"] is sub
        ep._remove_route("dev-a", sub)


async def test_polls_per_device_are_bounded_the_oldest_ends():
    async with make_rig() as rig:
        http = rig.endpoint.http
        polls = [asyncio.ensure_future(http.poll("dev-a", 30.0)) for _ in range(MAX_POLLS + 1)]
        await _until(lambda: polls[0].done())
        assert polls[0].result() is None and http.polls_waiting() == MAX_POLLS
        http.end_polls()
        assert await asyncio.gather(*polls) == [None] * (MAX_POLLS + 1)


async def test_once_draining_a_new_poll_ends_at_once():
    """A poll that arrives after the drain began (its token was being
    looked up) does not hold the shutdown for its whole timeout."""
    async with make_rig() as rig:
        http = rig.endpoint.http
        http.end_polls()
        assert await asyncio.wait_for(http.poll("dev-a", 300.0), 1) is None
        await asyncio.wait_for(http.idle("dev-a", 300.0), 1)
        assert not rig.dispatcher.is_online("dev-a") and len(http) == 0


async def test_a_request_handed_to_a_cancelled_poll_goes_to_the_next(monkeypatch):
    async with make_rig() as rig:
        http = rig.endpoint.http
        first = asyncio.ensure_future(http.poll("dev-a", 5.0))
        await rig.online("dev-a")
        offer = HttpDevice._offer

        def offer_then_cancel(hd, entry, first_in_line=False):
            offer(hd, entry, first_in_line)
            monkeypatch.setattr(HttpDevice, "_offer", offer)
            first.cancel()  # its handler is cancelled just as the request reached it

        monkeypatch.setattr(HttpDevice, "_offer", offer_then_cancel)
        call = asyncio.ensure_future(rig.dispatcher.call("dev-a", "open", {}, timeout=5))
        with pytest.raises(asyncio.CancelledError):
            await first
        body = await http.poll("dev-a", 5.0)
        assert body is not None and b'"open"' in body
        assert http.answer("dev-a", 1, b'"opened"')
        assert await call == "opened"


async def test_short_attribute_topics_are_answered_on_their_own_form():
    async with make_rig() as rig:
        c = await raw.RawClient.open(rig.port)
        await c.connect("token-a", client_id="short")
        c.send(raw.subscribe(1, ("v2/a/res/j/+", 0), ("v2/a/res/+", 0)))
        await c.read_packet()
        for request, answer in (("v2/a/req/j/5", "v2/a/res/j/5"), ("v2/a/req/6", "v2/a/res/6")):
            c.send(raw.publish(request, b'{"sharedKeys":"fw"}'))
            first, body = await c.read_packet()
            assert raw.publish_topic(body, 0, False)[:2] == (answer, b"{}")
        c.close()
        await assert_nothing_left(rig)
