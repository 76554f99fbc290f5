"""The control widgets' settings (ThingsBoard's advanced settings: method
names, params, one-way or two-way, timeout, min and max), kept per device
type in the browser, in a real browser against a real server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt

A1 = "Test Device A1"  # type "default"
A2 = "Test Device A2"  # type "default"
T1 = "Thermostat T1"  # type "thermostat"


def _record_rpc(page) -> list[tuple[str, dict]]:
    """Every RPC the page POSTs: ("oneway" or "twoway", body)."""
    posts: list[tuple[str, dict]] = []

    def on_request(req: Any) -> None:
        if req.method == "POST" and "/api/rpc/" in req.url:
            posts.append((req.url.split("/api/rpc/")[1].split("/")[0], json.loads(req.post_data)))

    page.on("request", on_request)
    return posts


async def _open_device(rig, name: str):
    page = await rig.page("tenant@thingsboard.org", "tenant")
    posts = _record_rpc(page)
    await page.goto(rig.url + f"#/device/{rig.registry[name].id}")
    await page.locator("#rpc-button").wait_for()
    return page, posts


def _calls(dev, method: str) -> list[Any]:
    return [params for m, params in dev.received if m == method]


async def test_rpc_button_sends_the_method_and_params_set_in_its_settings(rig):
    dev = rig.devices[A1]
    page, posts = await _open_device(rig, A1)
    panel = page.locator("#rpc-button form.widget-settings")
    # the defaults, under ThingsBoard's names
    await page.click("#rpc-button .widget-gear")
    assert await panel.locator("[name=methodName]").input_value() == "rpcCommand"
    assert await panel.locator("[name=methodParams]").input_value() == "{}"
    assert await panel.locator("[name=oneWayElseTwoWay]").input_value() == "true"
    assert await panel.locator("[name=requestTimeout]").input_value() == "5000"

    await panel.locator("[name=methodName]").fill("echo")
    await panel.locator("[name=methodParams]").fill('{"led": [1, 2], "on": true}')
    await panel.locator("[name=oneWayElseTwoWay]").select_option("false")
    await panel.locator("[name=requestTimeout]").fill("7000")
    await rig.shot(page, "widget-settings-open")
    await panel.locator("button[type=submit]").click()
    await panel.wait_for(state="detached")

    await page.locator("#rpc-button .call-summary", has_text="echo").wait_for()
    await page.click("#rpc-button button:has-text('Send RPC')")
    await page.locator("#rpc-button output", has_text='{"led":[1,2],"on":true}').wait_for()  # two-way: the reply
    assert _calls(dev, "echo") == [{"led": [1, 2], "on": True}]
    await wait_until(lambda: any(body["method"] == "echo" for kind, body in posts))
    sent = [body for kind, body in posts if body["method"] == "echo"]
    assert sent == [{"method": "echo", "params": {"led": [1, 2], "on": True}, "persistent": False, "timeout": 7000}]
    assert [kind for kind, body in posts if body["method"] == "echo"] == ["twoway"]
    assert page.errors == []


async def test_switch_control_reads_and_sets_with_custom_methods(rig):
    dev = rig.devices[A1]
    relay = {"on": True}

    def get_relay(params: Any) -> dict:
        dev.received.append(("getRelay", params))
        return {"relay": dict(relay)}

    def set_relay(params: Any) -> dict:
        dev.received.append(("setRelay", params))
        relay["on"] = params["on"]
        return {}

    dev.client.add_method("getRelay", get_relay)
    dev.client.add_method("setRelay", set_relay)
    page, posts = await _open_device(rig, A1)
    toggle = page.locator("#switch-control .slide-toggle")
    # by default what ThingsBoard's switch control sends: getValue, params null
    await page.locator('#switch-control .slide-toggle[aria-checked="true"]').wait_for()  # level 50: on
    await wait_until(lambda: ("twoway", {"method": "getValue", "params": None, "persistent": False,
                                         "timeout": 500}) in posts)

    await page.click("#switch-control .widget-gear")
    panel = page.locator("#switch-control form.widget-settings")
    assert await panel.locator("[name=retrieveValueMethod]").input_value() == "rpc"
    assert await panel.locator("[name=convertValueTemplate]").input_value() == "$value"
    await panel.locator("[name=getValueMethod]").fill("getRelay")
    await panel.locator("[name=parseValueKey]").fill("relay.on")
    await panel.locator("[name=setValueMethod]").fill("setRelay")
    await panel.locator("[name=convertValueTemplate]").fill('{"on": $value}')
    await panel.locator("button[type=submit]").click()
    await panel.wait_for(state="detached")

    # read again with the new method, the reply's relay.on shown
    await wait_until(lambda: _calls(dev, "getRelay") == [None])
    await page.locator('#switch-control .slide-toggle[aria-checked="true"]').wait_for()
    await toggle.click()
    await page.locator('#switch-control .slide-toggle[aria-checked="false"]').wait_for()
    await wait_until(lambda: _calls(dev, "setRelay") == [{"on": False}])
    assert relay == {"on": False}
    # (the page's request event may reach the test after the device got the call)
    await wait_until(lambda: ("oneway", {"method": "setRelay", "params": {"on": False}, "persistent": False,
                                         "timeout": 500}) in posts)
    # read back: the device's state, through the custom get method
    await page.click("#switch-control a:has-text('read back')")
    await wait_until(lambda: len(_calls(dev, "getRelay")) == 2)
    await page.locator('#switch-control .slide-toggle[aria-checked="false"]').wait_for()
    # the round switch keeps its own (default) settings: it never sent these
    assert _calls(dev, "setValue") == []
    assert page.errors == []


async def test_settings_persist_for_the_device_type_only(rig):
    page, posts = await _open_device(rig, A1)
    await page.click("#rpc-button .widget-gear")
    panel = page.locator("#rpc-button form.widget-settings")
    await panel.locator("[name=methodName]").fill("echo")
    await panel.locator("[name=methodParams]").fill('{"n": 7}')
    await panel.locator("button[type=submit]").click()
    await panel.wait_for(state="detached")

    # another device of the same type, after a reload: the same settings
    a2 = rig.devices[A2]
    await page.goto(rig.url + f"#/device/{rig.registry[A2].id}")
    await page.reload()
    await page.locator("#rpc-button .call-summary", has_text='echo {"n": 7}').wait_for()
    await page.click("#rpc-button button:has-text('Send RPC')")
    await page.locator("#rpc-button output", has_text="sent").wait_for()
    await wait_until(lambda: _calls(a2, "echo") == [{"n": 7}])

    # a device of another type: ThingsBoard's defaults
    t1 = rig.devices[T1]
    await page.goto(rig.url + f"#/device/{rig.registry[T1].id}")
    await page.locator("#rpc-button .call-summary", has_text="rpcCommand {}").wait_for()
    await page.click("#rpc-button button:has-text('Send RPC')")
    await page.locator("#rpc-button output", has_text="sent").wait_for()
    await wait_until(lambda: _calls(t1, "rpcCommand") == [{}])
    assert _calls(t1, "echo") == []

    # reset to ThingsBoard's defaults, for the type
    await page.goto(rig.url + f"#/device/{rig.registry[A2].id}")
    await page.click("#rpc-button .widget-gear")
    panel = page.locator("#rpc-button form.widget-settings")
    assert await panel.locator("[name=methodName]").input_value() == "echo"
    await panel.locator("button.reset-defaults").click()
    assert await panel.locator("[name=methodName]").input_value() == "rpcCommand"
    assert await panel.locator("[name=methodParams]").input_value() == "{}"
    assert await page.evaluate("localStorage.getItem('fleetrpc.widgets.default')") is None
    await page.click("#rpc-button .widget-gear")  # close
    await page.click("#rpc-button button:has-text('Send RPC')")
    await wait_until(lambda: _calls(a2, "rpcCommand") == [{}])
    assert page.errors == []


async def test_bad_json_is_refused_and_never_sent(rig):
    dev = rig.devices[A1]
    page, posts = await _open_device(rig, A1)
    await page.locator("#round-switch .round-switch.on").wait_for()  # the loads are done
    await page.locator('#switch-control .slide-toggle[aria-checked="true"]').wait_for()
    await wait_until(lambda: len(posts) == 3)  # getValue: round switch, switch control, knob
    loaded = len(posts)

    await page.click("#rpc-button .widget-gear")
    panel = page.locator("#rpc-button form.widget-settings")
    params = panel.locator("[name=methodParams]")
    await panel.locator("[name=methodName]").fill("setLeds")
    await params.fill('{"on": tru')
    await panel.locator("button[type=submit]").click()
    alert = panel.locator("small.error[role=alert]")
    await alert.wait_for()
    assert "Not valid JSON" in await alert.inner_text()
    assert await params.get_attribute("aria-invalid") == "true"
    assert await panel.is_visible()  # still open: not saved
    assert await page.evaluate("localStorage.getItem('fleetrpc.widgets.default')") is None
    await rig.shot(page, "widget-settings-refused")
    # corrected, the message goes as it is typed
    await params.fill('{"on": true}')
    await alert.wait_for(state="detached")
    await params.fill("not json")
    await alert.wait_for()

    # a switch's params template that is not JSON either way is refused too
    await page.click("#switch-control .widget-gear")
    sw = page.locator("#switch-control form.widget-settings")
    await sw.locator("[name=convertValueTemplate]").fill('{"on": $value')
    await sw.locator("button[type=submit]").click()
    await sw.locator("small.error[role=alert]", has_text="not valid JSON").wait_for()

    # cancelled: the stored (default) settings are what the button sends
    await panel.locator("button:has-text('Cancel')").click()
    await page.wait_for_timeout(300)
    assert len(posts) == loaded  # nothing was sent while the form was wrong
    assert _calls(dev, "setLeds") == []
    await page.click("#rpc-button button:has-text('Send RPC')")
    await wait_until(lambda: _calls(dev, "rpcCommand") == [{}])

    # a damaged stored entry (edited by hand) is not sent either: defaults
    await page.evaluate("""localStorage.setItem('fleetrpc.widgets.default',
        JSON.stringify({rpcButton: {methodName: 'setLeds', methodParams: '{bad', oneWayElseTwoWay: true,
                                    requestTimeout: 5000}}))""")
    await page.reload()
    await page.locator("#rpc-button .call-summary", has_text="rpcCommand {}").wait_for()
    await page.click("#rpc-button button:has-text('Send RPC')")
    await wait_until(lambda: _calls(dev, "rpcCommand") == [{}, {}])
    assert _calls(dev, "setLeds") == []
    assert page.errors == []


async def test_knob_settings_and_a_narrow_screen(rig):
    dev = rig.devices[A1]
    page, posts = await _open_device(rig, A1)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.click("#knob .widget-gear")
    panel = page.locator("#knob form.widget-settings")
    await panel.locator("[name=maxValue]").fill("-1")
    await panel.locator("button[type=submit]").click()
    await panel.locator("small.error", has_text="more than the minimum").wait_for()
    await panel.locator("[name=setValueMethod]").fill("setLevel")
    await panel.locator("[name=minValue]").fill("10")
    await panel.locator("[name=maxValue]").fill("40")
    await rig.shot(page, "widget-settings-narrow")
    # nothing widens the page past the screen (wide tables scroll in place)
    width = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], width
    overflow = await page.evaluate("""() => [...document.querySelectorAll('.widget, .widget *')]
        .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
        .map(e => e.outerHTML.slice(0, 80))""")
    assert overflow == []
    await panel.locator("button[type=submit]").click()
    await panel.wait_for(state="detached")

    knob = page.locator("#knob input[type=range]")
    assert (await knob.get_attribute("min"), await knob.get_attribute("max")) == ("10", "40")
    dev.client.add_method("setLevel", lambda p: dev.received.append(("setLevel", p)) or {})
    await knob.fill("33")
    await wait_until(lambda: _calls(dev, "setLevel") == [33])
    await wait_until(lambda: ("oneway", {"method": "setLevel", "params": 33, "persistent": False,
                                         "timeout": 5000}) in posts)
    assert page.errors == []
