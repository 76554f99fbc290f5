"""The console in a real browser: Debian's Chromium driven by Playwright,
against a real server (SQLite, the test broker) with ThingsBoard's demo
accounts and simulated devices behind the widgets.  Screenshots of every
page go to the test's temporary directory (``shots``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from fleetrpc.server import Server, ServerContext
from fleetrpc.sim.widgets import WidgetDevice
from tests.entities_fixtures import CHEAP_HASHER
from tests.helpers.waiting import wait_until
from tests.server.conftest import server_settings

#: Devices of ThingsBoard's demo data that stay away when the test starts.
OFFLINE = ("Test Device B1",)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class Rig:
    """A server, its simulated devices (by name) and a browser."""

    def __init__(self, ctx: Any, browser: Any, shots: Path, mqtt_url: str) -> None:
        self.ctx = ctx
        self.browser = browser
        self.shots = shots
        self.mqtt_url = mqtt_url
        self.devices: dict[str, WidgetDevice] = {}
        self.registry: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return self.ctx.url + "/"

    async def page(self, email: str, password: str) -> Any:
        """A new browser page, logged in through the login form."""
        page = await self.browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.errors = errors
        await page.goto(self.url)
        await page.fill("#login input[name=username]", email)
        await page.fill("#login input[name=password]", password)
        await page.click("#login button[type=submit]")
        await page.wait_for_selector("#whoami")
        return page

    async def shot(self, page: Any, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path

    async def connect(self, name: str, level: int = 50) -> WidgetDevice:
        device = self.registry[name]
        creds = await self.ctx.devices.credentials(device.tenant_id, device.id)
        dev = WidgetDevice(device.id, self.mqtt_url, token=creds.credentials_id, level=level)
        await dev.connect()
        self.devices[name] = dev
        await wait_until(lambda: self.ctx.dispatcher.is_online(device.id))
        return dev


@pytest.fixture
async def rig(mqtt_url, tmp_path, chromium_path):
    from playwright.async_api import async_playwright

    settings = server_settings(mqtt_url, f"sqlite:///{tmp_path}/console.db", tmp_path,
                               dispatch={"min_timeout_ms": 1000})
    ctx = ServerContext(settings)
    ctx.password_hasher = CHEAP_HASHER
    ctx.demo = True
    server = Server(settings, ctx=ctx)
    await server.start()
    shots = tmp_path / "shots"
    shots.mkdir()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
            r = Rig(ctx, browser, shots, mqtt_url)
            tenant = await ctx.tenants.by_title("Tenant")
            for d in (await ctx.devices.list(tenant.id, 100, 0)).data:
                r.registry[d.name] = d
            for name in r.registry:
                if name not in OFFLINE:
                    await r.connect(name)
            try:
                yield r
            finally:
                for dev in r.devices.values():
                    with contextlib.suppress(Exception):
                        await dev.close()
                await browser.close()
    finally:
        await server.stop()
