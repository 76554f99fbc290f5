"""Devices authenticate at the broker: what ``fleetrpc serve`` runs of
:mod:`fleetrpc.broker_auth` (docs/identity.md).

- **The server's own broker** (``mqtt.url`` unset, Mosquitto with its
  dynamic security plugin, ``dynsec.enabled``): :func:`own_broker` starts it
  with the plugin, fresh admin and server accounts, and every device of the
  database preloaded (one file write instead of two plugin commands per
  device, each rewriting the plugin's whole file).  The server connects with
  the server account, the only one that may publish requests; devices with
  their access token as username and password.  Without Mosquitto or its
  plugin (amqtt, or ``dynsec.enabled = false``) the broker lets anonymous
  clients in, and a warning says so.
- **An external Mosquitto** (``mqtt.url``) loading the plugin: devices are
  provisioned when ``dynsec.admin_password`` is set; the server's account
  (``mqtt.username`` / ``mqtt.password``) is created with the server role
  when missing.
- **Provisioning** (:func:`provisioning`, a part of the server): a
  :class:`~fleetrpc.broker_auth.dynsec.DynsecProvisioner` listens to the
  device repository (device created, token changed, device deleted: the
  plugin also closes a deleted client's connections) and resyncs the broker
  from the database at start.
- **EMQX**: :data:`EMQX_FEATURE` is added to the HTTP app's features when
  ``emqx.enabled``; EMQX then asks the server's HTTP port.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from .context import ServerContext

__all__ = ["EMQX_FEATURE", "dynsec_wanted", "emqx_features", "own_broker", "provisioning"]

log = logging.getLogger("fleetrpc.server")

#: The ``create_app`` feature that serves EMQX's hooks.
EMQX_FEATURE = "fleetrpc.broker_auth.emqx"


def dynsec_wanted(ctx: ServerContext, kind: str) -> bool:
    """Whether the server's own broker of ``kind`` runs the dynamic security
    plugin; warns when devices will not authenticate."""
    from ..broker import find_dynsec_plugin

    if not ctx.settings.dynsec.enabled:
        log.warning("dynsec.enabled is false: the server's broker lets any client in (development only)")
        return False
    if kind != "mosquitto":
        log.warning("the embedded broker (amqtt) cannot check device tokens: it lets any client in; "
                    "install Mosquitto for devices to authenticate")
        return False
    if find_dynsec_plugin() is None:
        log.warning("Mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) was not found: "
                    "the server's broker lets any client in")
        return False
    return True


async def _credentials(ctx: ServerContext) -> list[tuple[str, str]]:
    """Every ``(device_id, token)`` of the database."""
    every = getattr(ctx.devices, "all_credentials", None)
    if every is None:  # a replaced directory (the REST bench's) has no tokens
        return []
    return [(device.id, token) async for device, token in every()]


@contextlib.asynccontextmanager
async def own_broker(ctx: ServerContext) -> AsyncIterator[Any]:
    """Start the server's own broker (``server.broker``), with the devices
    preloaded into its dynamic security plugin when :func:`dynsec_wanted`."""
    from ..broker import choose_kind, start_broker

    s = ctx.settings
    kind = choose_kind(s.server.broker)
    options: dict[str, Any] = {"host": s.server.broker_host, "port": s.server.broker_port or None}
    if dynsec_wanted(ctx, kind):
        devices = await _credentials(ctx)
        options = {"dynsec": True, "dynsec_devices": devices, "dynsec_prefix": s.dispatch.prefix}
    async with start_broker(kind, **options) as broker:
        if broker.dynsec is not None:
            log.info("started a %s broker at %s; %d devices authenticate with their access tokens",
                     broker.kind, broker.url, len(options["dynsec_devices"]))
        else:
            log.info("started a %s broker at %s", broker.kind, broker.url)
        yield broker


def _provisioner(ctx: ServerContext) -> Any:
    """The provisioner of this server's broker, or None when devices are
    not provisioned (no plugin, or an external broker without the admin
    password)."""
    from ..broker_auth.dynsec import DynsecProvisioner

    s = ctx.settings
    d = s.dynsec
    b = ctx.broker
    common = {"prefix": s.dispatch.prefix, "timeout": d.timeout_s, "batch": d.batch}
    if s.mqtt.url is None:
        if b is None or getattr(b, "dynsec", None) is None:
            return None
        a = b.dynsec
        return DynsecProvisioner(b.url, a.admin_username, a.admin_password,
                                 server_username=a.server_username, **common)
    if not d.enabled or d.admin_password is None:
        return None
    m = s.mqtt
    return DynsecProvisioner(
        m.url, d.admin_username, d.admin_password, server_username=m.username, version=m.version,
        tls=m.tls or None, tls_ca=m.tls_ca, tls_cert=m.tls_cert, tls_key=m.tls_key,
        tls_insecure=m.tls_insecure, **common,
    )


async def provisioning(ctx: ServerContext) -> AsyncIterator[None]:
    """The part that keeps the broker's device accounts in step with the
    database (see the module docstring).  Started after the database and
    the broker, before the dispatcher connects (an external broker's
    server account may be created here)."""
    p = _provisioner(ctx)
    if p is None:
        yield
        return
    s = ctx.settings
    await p.start()
    try:
        if s.mqtt.url is not None and s.mqtt.username and s.mqtt.password:
            await p.ensure_server_account(s.mqtt.username, s.mqtt.password)
        # Listen first, then resync: a change made meanwhile by another node
        # waits for the resync's lock and is applied after it.
        ctx.devices.add_listener(p.on_device_changes)
        try:
            if s.mqtt.url is not None:
                # The server's own broker was preloaded from the database a
                # moment ago, before anything could change a device: a
                # resync there would only read 2 x N entries back.
                report = await p.sync(ctx.devices.all_credentials())
                log.info("broker accounts of %d devices checked: %d created, %d removed, %d refused",
                         report.devices, report.created, report.removed, report.refused)
            ctx.provisioner = p
            yield
        finally:
            ctx.provisioner = None
            ctx.devices.remove_listener(p.on_device_changes)
    finally:
        await p.close()


def emqx_features(ctx: ServerContext) -> tuple[str, ...]:
    """``ctx.features`` with the EMQX hooks when ``emqx.enabled``."""
    s = ctx.settings
    if not s.emqx.enabled or EMQX_FEATURE in ctx.features:
        return ctx.features
    if not s.mqtt.username:
        log.warning("emqx.enabled without mqtt.username: the hooks cannot tell EMQX that the server's "
                    "own connection is the server (give it mqtt.username and mqtt.password)")
    return (*ctx.features, EMQX_FEATURE)
