"""The web console as its users see it, in a real browser."""

from __future__ import annotations

import time

import pytest

from fleetrpc.api.auth import TokenService
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt


async def _row(page, name: str):
    return page.locator(f'#devices tr[data-device="{name}"]')


async def test_tenant_admin_sees_the_fleet_and_presence_changes_live(rig):
    page = await rig.page("tenant@thingsboard.org", "tenant")
    await page.goto(rig.url + "#/devices")
    await page.wait_for_selector('#devices tr[data-device="Test Device A1"]')
    a1 = await _row(page, "Test Device A1")
    b1 = await _row(page, "Test Device B1")
    await a1.locator(".dot.online").wait_for()
    await b1.locator(".dot.offline").wait_for()
    assert await page.locator("#devices tbody tr").count() == len(rig.registry)
    await rig.shot(page, "devices")

    rig.devices["Test Device A1"].client.kill()  # gone: the broker sends its Will
    await a1.locator(".dot.offline").wait_for(timeout=10_000)
    await rig.connect("Test Device B1")
    await b1.locator(".dot.online").wait_for(timeout=10_000)

    await page.fill('input[type=search]', "Thermostat")
    await page.wait_for_function("document.querySelectorAll('#devices tbody tr').length === 2")
    assert page.errors == []


async def test_device_widgets_send_what_thingsboard_widgets_send(rig):
    dev = rig.devices["Test Device A1"]
    dev.level = 30
    page = await rig.page("tenant@thingsboard.org", "tenant")
    await page.goto(rig.url + f"#/device/{rig.registry['Test Device A1'].id}")

    # where it is connected (DeviceInfo's connectedVia)
    await page.locator("#connected-via", has_text="through the broker").wait_for()
    # on load: two-way getValue with params null, for the switch and the knob
    await page.locator("#round-switch .round-switch.on").wait_for()
    await page.locator('#knob input[type=range]').wait_for()
    await page.locator("#knob .knob-value").wait_for()  # visible
    assert ("getValue", None) in dev.received

    # RPC button: rpcCommand {} one-way
    await page.click("#rpc-button button")
    await page.locator("#rpc-button output", has_text="sent").wait_for()
    assert ("rpcCommand", {}) in dev.received

    # round switch: one-way setValue with the bare boolean
    await page.click("#round-switch .round-switch")
    await wait_until(lambda: dev.level == 0)
    assert ("setValue", False) in dev.received
    await page.click("#round-switch .round-switch")
    await wait_until(lambda: dev.level == 30)

    # knob: one-way setValue with the number; read back through getValue
    await page.locator('#knob input[type=range]').fill("72")
    await wait_until(lambda: dev.level == 72)
    assert ("setValue", 72) in dev.received

    # debug terminal: always two-way, prints the reply
    await page.fill("#terminal input", 'echo {"a": 1}')
    await page.press("#terminal input", "Enter")
    await page.locator("#terminal .t-ok", has_text='{"a":1}').wait_for()
    await page.fill("#terminal input", "noSuchMethod")
    await page.press("#terminal input", "Enter")
    await page.locator("#terminal .t-ok", has_text="METHOD_NOT_FOUND").wait_for()
    await rig.shot(page, "device")
    assert page.errors == []


async def test_persistent_call_to_an_offline_device_goes_queued_then_successful(rig):
    b1 = rig.registry["Test Device B1"]
    page = await rig.page("tenant@thingsboard.org", "tenant")
    await page.goto(rig.url + f"#/device/{b1.id}")
    await page.fill('#persistent-call input[aria-label=Method]', "setValue")
    await page.fill('#persistent-call input[aria-label=Params]', "true")
    await page.click("#persistent-call button[type=submit]")
    row = page.locator("#persistent-table tbody tr").first
    await row.locator(".status", has_text="QUEUED").wait_for(timeout=10_000)
    await rig.shot(page, "persistent-queued")
    dev = await rig.connect("Test Device B1", level=0)
    # the row follows the status events live (no reload)
    await row.locator(".status", has_text="SUCCESSFUL").wait_for(timeout=15_000)
    assert ("setValue", True) in dev.received
    await rig.shot(page, "persistent-successful")
    assert page.errors == []


async def test_customer_user_sees_only_its_customers_devices(rig):
    page = await rig.page("customerA@thingsboard.org", "customer")
    await page.goto(rig.url + "#/devices")
    await page.wait_for_selector('#devices tr[data-device="Test Device A1"]')
    names = await page.locator("#devices tbody tr").evaluate_all("rows => rows.map(r => r.dataset.device)")
    assert sorted(names) == ["Test Device A1", "Test Device A2", "Test Device A3"]
    await rig.shot(page, "customer-devices")
    # another customer's device, by its address: refused
    await page.goto(rig.url + f"#/device/{rig.registry['Test Device C1'].id}")
    await page.locator(".error").wait_for()
    assert "permission" in (await page.locator(".error").first.inner_text()).lower()
    assert await page.locator("nav a", has_text="Customers").count() == 0


async def test_new_device_shows_its_token_and_how_to_connect(rig):
    page = await rig.page("tenant@thingsboard.org", "tenant")
    await page.goto(rig.url + "#/devices")
    await page.click("text=+ Add device")
    await page.fill("#create-device input[name=name]", "Pump 7")
    await page.fill("#create-device input[name=type]", "pump")
    await page.click("#create-device button[type=submit]")
    token = await page.locator("#access-token").inner_text()
    # the command names the broker this server uses (GET /api/console/info)
    await page.locator("#connect-command", has_text=rig.ctx.library.mqtt_url).wait_for()
    command = await page.locator("#connect-command").inner_text()
    device = await rig.ctx.devices.by_name(rig.registry["Test Device A1"].tenant_id, "Pump 7")
    creds = await rig.ctx.devices.credentials(device.tenant_id, device.id)
    assert token == creds.credentials_id
    assert f"--device {device.id} --token {token}" in command
    await rig.shot(page, "new-device")


async def test_jobs_page_runs_a_job_and_shows_its_progress(rig):
    page = await rig.page("tenant@thingsboard.org", "tenant")
    await page.goto(rig.url + "#/jobs")
    await page.click("text=+ New job")
    await page.select_option("#new-job select", "deviceType")
    await page.fill("#new-job label:has-text('Value') input", "thermostat")
    await page.fill("#new-job label:has-text('Method') input", "setValue")
    await page.fill("#new-job label:has-text('Params') input", "21")
    await page.click("#new-job button[type=submit]")
    await page.locator("h2 .status", has_text="COMPLETED").wait_for(timeout=15_000)
    # The rows follow the job's end (polling stops with it): both devices'
    # outcomes show, however early the job ended.
    await page.locator("#job-devices tbody tr", has_text="SUCCEEDED").nth(1).wait_for(timeout=5_000)
    assert await page.locator("#job-devices tbody tr").count() == 2
    thermostats = sorted(n for n in rig.devices if n.startswith("Thermostat"))
    assert sorted(await page.locator("#job-devices tbody td:first-child a").all_inner_texts()) == thermostats
    counts = await page.locator("small.counts").first.inner_text()  # words apart (was "offline ·0 in progress")
    assert counts == "2 succeeded · 0 failed · 0 timed out · 0 offline · 0 in progress · 0 queued · 0 skipped of 2"
    assert all(d.level == 21 for n, d in rig.devices.items() if n.startswith("Thermostat"))
    await rig.shot(page, "job")


async def test_overview_and_events_pages(rig):
    page = await rig.page("tenant@thingsboard.org", "tenant")
    await page.goto(rig.url + "#/events")
    await page.locator("#events li.muted").wait_for()
    await wait_until(lambda: rig.ctx.console_hub.streams)  # the page's stream is open
    await rig.connect("Test Device B1")
    await page.locator("#events li.ev-presence").first.wait_for(timeout=10_000)
    await page.goto(rig.url + "#/overview")
    await page.locator("#tiles").wait_for()
    tiles = await page.locator("#tiles").inner_text()
    assert "devices online" in tiles
    await page.wait_for_timeout(2500)  # two samples: rates and the charts
    await rig.shot(page, "overview")
    sys_page = await rig.page("sysadmin@thingsboard.org", "sysadmin")
    await sys_page.goto(rig.url + "#/tenants")
    await sys_page.locator("td", has_text="Tenant").first.wait_for()
    await rig.shot(sys_page, "tenants")


async def test_an_expired_token_is_refreshed_as_thingsboards_ui_does(rig):
    page = await rig.page("tenant@thingsboard.org", "tenant")
    user = await rig.ctx.users.by_email("tenant@thingsboard.org")
    past = TokenService(rig.ctx.settings.jwt, rig.ctx.settings.jwt.secret, clock=lambda: time.time() - 20_000)
    expired = past.issue(user)["token"]
    await page.evaluate(
        "t => { const s = JSON.parse(localStorage.getItem('fleetrpc.auth')); s.token = t;"
        " localStorage.setItem('fleetrpc.auth', JSON.stringify(s)); }", expired)
    await page.goto(rig.url + "#/devices")
    await page.reload()
    # the first request answers 401 errorCode 11; the console refreshes and goes on
    await page.wait_for_selector('#devices tr[data-device="Test Device A1"]')
    stored = await page.evaluate("JSON.parse(localStorage.getItem('fleetrpc.auth')).token")
    assert stored != expired
