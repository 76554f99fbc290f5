"""Mosquitto's dynamic security plugin, provisioned by fleetrpc.

Each device is a dynsec *client* whose username (and password: the plugin
refuses a client without one) is its access token, with a *role* of its
own, ``fleetrpc-device-{id}``, holding the ACLs of
:meth:`~fleetrpc.broker_auth.acl.DeviceAcl.fleetrpc`.  The server's account
has the role ``fleetrpc-server`` (publish and subscribe anywhere outside
``$`` topics).  Nothing else may publish: the plugin's default denies it.

:class:`DynsecProvisioner` keeps the broker in step with the database:

- :meth:`~DynsecProvisioner.on_device_changes` is a
  :meth:`DeviceRepository.add_listener <fleetrpc.store.entities.DeviceRepository.add_listener>`
  listener: a device created gets its client, a new token replaces the old
  client (whose connections the plugin closes), a device deleted loses its
  client and role;
- :meth:`~DynsecProvisioner.sync` is the full resync at start: it creates
  what is missing, fixes changed tokens and removes clients of devices that
  are gone.

Commands go to ``$CONTROL/dynamic-security/v1`` over fleetrpc's MQTT
transport (gmqtt); every command carries a ``correlationData`` that its
response echoes, so several server nodes may share the admin account.
Clients the provisioner did not make (their ``textname`` lacks the
``fleetrpc device`` marker) are never modified nor deleted: a device token
equal to another account's username is refused instead.

A throwaway Mosquitto with the plugin: :class:`fleetrpc.broker.Broker` with
``dynsec=True`` (see :func:`initial_config`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterable, Iterable
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from .._core.constants import DEFAULT_PREFIX
from ..errors import BrokerError
from ..wire import validate_prefix
from .acl import DeviceAcl

__all__ = [
    "CONTROL_TOPIC",
    "RESPONSE_TOPIC",
    "SERVER_ROLE",
    "DynsecError",
    "DynsecAccounts",
    "DynsecSection",
    "DynsecProvisioner",
    "SyncReport",
    "device_role",
    "initial_config",
    "hash_password",
]

log = logging.getLogger("fleetrpc.broker_auth.dynsec")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
SERVER_ROLE = "fleetrpc-server"
ADMIN_ROLE = "fleetrpc-dynsec-admin"
_DEVICE_ROLE = "fleetrpc-device-"
_DEVICE_MARK = "fleetrpc device "
_SERVER_MARK = "fleetrpc server"
#: PBKDF2 rounds of passwords written into a new config file
#: (mosquitto_ctrl's own value is 101; the plugin accepts any).
_ITERATIONS = 10_000

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class DynsecError(BrokerError):
    """The plugin refused a command, or did not answer in time."""


def device_role(device_id: str) -> str:
    return _DEVICE_ROLE + device_id


# -- the initial config file -------------------------------------------------------------


def hash_password(password: str, *, iterations: int = _ITERATIONS, salt: bytes | None = None) -> dict[str, Any]:
    """The plugin's stored form of a password: PBKDF2-SHA512, base64."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": iterations}


def _acl(acltype: str, topic: str, allow: bool = True, priority: int = 0) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": allow, "priority": priority}


def _server_role_acls() -> list[dict[str, Any]]:
    return [_acl("publishClientSend", "#"), _acl("subscribePattern", "#"), _acl("unsubscribePattern", "#")]


class DynsecAccounts(msgspec.Struct, kw_only=True, frozen=True):
    """The two accounts a dynsec broker starts with: the admin (controls the
    plugin, nothing else) and the server (publishes requests)."""

    admin_username: str = "fleetrpc-admin"
    admin_password: str
    server_username: str = "fleetrpc-server"
    server_password: str

    @classmethod
    def generate(cls) -> DynsecAccounts:
        """Fresh random passwords (a throwaway broker's)."""
        return cls(admin_password=secrets.token_urlsafe(24), server_password=secrets.token_urlsafe(24))


#: PBKDF2 rounds of device clients written offline: a token is already a
#: random 119-bit secret (20 alphanumerics), so the rounds add nothing but
#: start-up time; mosquitto_ctrl uses the same value.
_DEVICE_ITERATIONS = 101


def _device_role_acls(prefix: str, device_id: str) -> list[dict[str, Any]]:
    acl = DeviceAcl.fleetrpc(prefix, device_id)
    acls = [_acl("publishClientSend", t) for t in acl.publish]
    acls += [_acl("subscribePattern", t) for t in acl.subscribe]
    acls.append(_acl("unsubscribePattern", "#"))
    return acls


def initial_config(
    accounts: DynsecAccounts,
    devices: Iterable[tuple[str, str]] = (),
    prefix: str = DEFAULT_PREFIX,
) -> dict[str, Any]:
    """A ``dynamic-security.json`` with the admin and server accounts (what
    ``mosquitto_ctrl dynsec init`` writes, plus the server's account) and,
    for a broker about to start, every ``(device_id, token)`` already
    provisioned: written in one go, where the plugin's commands would
    rewrite the whole file once per command (quadratic; see docs/identity.md)."""
    admin_acls = [
        _acl("publishClientSend", "$CONTROL/dynamic-security/#"),
        _acl("publishClientReceive", "$CONTROL/dynamic-security/#"),
        _acl("subscribePattern", "$CONTROL/dynamic-security/#"),
        _acl("unsubscribePattern", "#"),
    ]
    clients = [
        {"username": accounts.admin_username, "textname": "fleetrpc dynsec admin",
         **hash_password(accounts.admin_password), "roles": [{"rolename": ADMIN_ROLE}]},
        {"username": accounts.server_username, "textname": _SERVER_MARK,
         **hash_password(accounts.server_password), "roles": [{"rolename": SERVER_ROLE}]},
    ]
    roles = [
        {"rolename": ADMIN_ROLE, "acls": admin_acls},
        {"rolename": SERVER_ROLE, "acls": _server_role_acls()},
    ]
    reserved = {accounts.admin_username, accounts.server_username}
    for device_id, token in devices:
        if token in reserved:
            log.error("device %s: its token is the broker account %r; not provisioned", device_id, token)
            continue
        clients.append({"username": token, "textname": _DEVICE_MARK + device_id,
                        **hash_password(token, iterations=_DEVICE_ITERATIONS),
                        "roles": [{"rolename": device_role(device_id)}]})
        roles.append({"rolename": device_role(device_id), "acls": _device_role_acls(prefix, device_id)})
    return {
        "clients": clients,
        "roles": roles,
        "groups": [],
        # The plugin's defaults, spelled out: nobody publishes or subscribes
        # unless a role allows it.
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                             "subscribe": False, "unsubscribe": True},
    }


# -- settings -------------------------------------------------------------------------------


class DynsecSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[dynsec]``: provision devices into Mosquitto's dynamic security plugin."""

    enabled: Annotated[bool, Meta(description=(
        "Provision every device's client and role into Mosquitto's dynamic security plugin "
        "(the broker must load it; the broker the server starts itself does).")) ] = False
    admin_username: Annotated[str, Meta(description="The plugin's admin account.")] = "fleetrpc-admin"
    admin_password: Annotated[str | None, Meta(description="Password of admin_username.",
                                               extra={"secret": True})] = None
    timeout_s: Annotated[float, Meta(description="How long one batch of commands may take.", gt=0)] = 10.0
    batch: Annotated[int, Meta(description="Commands sent in one control message.", ge=1, le=10_000)] = 200


class SyncReport(msgspec.Struct, kw_only=True):
    """What :meth:`DynsecProvisioner.sync` changed."""

    devices: int = 0      # devices in the database
    created: int = 0      # clients created (missing or re-tokened)
    removed: int = 0      # clients of devices that are gone, or old tokens
    roles_removed: int = 0
    refused: int = 0      # tokens taken by an account fleetrpc did not make


# -- the provisioner ------------------------------------------------------------------------


class DynsecProvisioner:
    """Keeps Mosquitto's dynamic security plugin in step with the devices.

    ``url`` is the broker (``mqtt://host:port`` or ``mqtts://``); the admin
    account controls the plugin.  ``server_username``, when given, is
    never touched and never given to a device.  ``transport_options`` go to
    :class:`~fleetrpc.transport.mqtt.MqttTransport` (TLS files ...).
    """

    def __init__(
        self,
        url: str,
        admin_username: str,
        admin_password: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        server_username: str | None = None,
        timeout: float = 10.0,
        batch: int = 200,
        **transport_options: Any,
    ) -> None:
        from ..transport.mqtt import MqttTransport

        self.prefix = validate_prefix(prefix)
        self.admin_username = admin_username
        self.server_username = server_username
        self.timeout = timeout
        self.batch = batch
        self._reserved = {admin_username} | ({server_username} if server_username else set())
        self._transport = MqttTransport(
            url, client_id=f"fleetrpc-dynsec-{uuid.uuid4().hex[:8]}", username=admin_username,
            password=admin_password, **transport_options,
        )
        self._transport.on_message = self._on_message
        self._pending: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._tag = uuid.uuid4().hex[:8]
        self._lock = asyncio.Lock()  # one change at a time: they read, then write
        self.commands_sent = 0

    async def start(self) -> None:
        """Connect and subscribe to the plugin's responses."""
        await self._transport.start([(RESPONSE_TOPIC, 1)])

    async def close(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(DynsecError("the provisioner closed"))
        self._pending.clear()
        await self._transport.close()

    async def __aenter__(self) -> DynsecProvisioner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- commands ------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, properties: dict | None) -> None:
        try:
            body = _decode(payload)
            responses = body["responses"]
        except (msgspec.DecodeError, KeyError, TypeError):
            log.warning("unreadable dynsec response on %s: %r", topic, payload[:200])
            return
        for response in responses if isinstance(responses, list) else ():
            if not isinstance(response, dict):
                continue
            fut = self._pending.pop(str(response.get("correlationData")), None)
            if fut is not None and not fut.done():
                fut.set_result(response)

    async def execute(self, commands: list[dict[str, Any]], *, ignore: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Send ``commands`` (``{"command": ..., ...}``) in batches and return
        their responses in order.  A response with an ``error`` raises
        :class:`DynsecError`, unless its error text is in ``ignore``
        (e.g. "Client not found" for a delete that may find nothing)."""
        ignore = set(ignore)
        out: list[dict[str, Any]] = []
        for start in range(0, len(commands), self.batch):
            chunk = commands[start:start + self.batch]
            futures = []
            loop = asyncio.get_running_loop()
            for command in chunk:
                key = f"{self._tag}-{next(self._ids)}"
                fut = loop.create_future()
                self._pending[key] = fut
                futures.append((key, fut))
                command["correlationData"] = key
            self._transport.publish(CONTROL_TOPIC, _encode({"commands": chunk}), 1, False)
            self.commands_sent += len(chunk)
            try:
                done = await asyncio.wait_for(asyncio.gather(*(f for _, f in futures)), self.timeout)
            except asyncio.TimeoutError:
                raise DynsecError(
                    f"the dynamic security plugin did not answer {len(chunk)} commands within "
                    f"{self.timeout:g} s (is it loaded, and may {self.admin_username!r} use it?)"
                ) from None
            finally:
                for key, _ in futures:
                    self._pending.pop(key, None)
            for command, response in zip(chunk, done):
                error = response.get("error")
                if error and error not in ignore:
                    raise DynsecError(f"dynsec {command['command']} failed: {error}")
            out.extend(done)
        return out

    async def _all(self, command: str, key: str) -> list[dict[str, Any]]:
        """Every item of a listClients / listRoles, page by page."""
        items: list[dict[str, Any]] = []
        page = 1000
        while True:
            [response] = await self.execute([{"command": command, "verbose": True, "count": page,
                                              "offset": len(items)}])
            got = (response.get("data") or {}).get(key) or []
            items.extend(got)
            if len(got) < page:
                return items

    # -- what a device gets ------------------------------------------------------------

    def _device_commands(self, device_id: str, token: str) -> list[dict[str, Any]]:
        role = device_role(device_id)
        return [
            {"command": "createRole", "rolename": role, "acls": _device_role_acls(self.prefix, device_id)},
            {"command": "createClient", "username": token, "password": token,
             "textname": _DEVICE_MARK + device_id, "roles": [{"rolename": role}]},
        ]

    def _refuse(self, device_id: str, token: str) -> bool:
        if token in self._reserved:
            log.error("device %s: its token is the broker account %r; not provisioned", device_id, token)
            return True
        return False

    async def _client(self, username: str) -> dict[str, Any] | None:
        [response] = await self.execute([{"command": "getClient", "username": username}],
                                        ignore={"Client not found"})
        return (response.get("data") or {}).get("client") if not response.get("error") else None

    async def provision(self, device_id: str, token: str) -> bool:
        """Create (or repair) the device's role and client.  False when the
        token is taken by an account fleetrpc did not make."""
        async with self._lock:
            return await self._provision(device_id, token)

    async def _provision(self, device_id: str, token: str) -> bool:
        if self._refuse(device_id, token):
            return False
        existing = await self._client(token)
        if existing is not None:
            if existing.get("textname") != _DEVICE_MARK + device_id:
                log.error("device %s: its token is already the broker client %r of something else; "
                          "not provisioned", device_id, existing.get("textname"))
                return False
            await self.execute([{"command": "deleteClient", "username": token}], ignore={"Client not found"})
        role, client = self._device_commands(device_id, token)
        await self.execute([role], ignore={"Role already exists"})
        await self.execute([client])
        return True

    async def remove(self, device_id: str, token: str | None) -> None:
        """Delete the device's client (the plugin closes its connections)
        and role."""
        async with self._lock:
            await self._remove(device_id, token)

    async def _remove(self, device_id: str, token: str | None) -> None:
        if token is not None and not self._refuse(device_id, token):
            existing = await self._client(token)
            if existing is not None and existing.get("textname") == _DEVICE_MARK + device_id:
                await self.execute([{"command": "deleteClient", "username": token}], ignore={"Client not found"})
        await self.execute([{"command": "deleteRole", "rolename": device_role(device_id)}],
                           ignore={"Role not found"})

    async def change_token(self, device_id: str, old_token: str | None, token: str) -> bool:
        """The device's old token stops working, the new one starts."""
        async with self._lock:
            if old_token is not None and not self._refuse(device_id, old_token):
                existing = await self._client(old_token)
                if existing is not None and existing.get("textname") == _DEVICE_MARK + device_id:
                    await self.execute([{"command": "deleteClient", "username": old_token}],
                                       ignore={"Client not found"})
            return await self._provision(device_id, token)

    async def on_device_changes(self, changes: list[Any]) -> None:
        """A :class:`~fleetrpc.store.entities.DeviceRepository` listener."""
        for change in changes:
            try:
                if change.kind == "created":
                    await self.provision(change.device.id, change.token)
                elif change.kind == "credentials":
                    await self.change_token(change.device.id, change.old_token, change.token)
                elif change.kind == "deleted":
                    await self.remove(change.device.id, change.old_token)
            except DynsecError:
                # The database is the truth: the next sync repairs the broker.
                log.exception("broker provisioning of device %s (%s) failed", change.device.id, change.kind)

    async def ensure_server_account(self, username: str, password: str) -> None:
        """Create the server's account and role if missing (an external
        Mosquitto set up with only ``mosquitto_ctrl dynsec init``)."""
        async with self._lock:
            await self.execute([{"command": "createRole", "rolename": SERVER_ROLE, "acls": _server_role_acls()}],
                               ignore={"Role already exists"})
            existing = await self._client(username)
            if existing is None:
                await self.execute([{"command": "createClient", "username": username, "password": password,
                                     "textname": _SERVER_MARK, "roles": [{"rolename": SERVER_ROLE}]}])
            self._reserved.add(username)

    # -- full resync ---------------------------------------------------------------------

    async def sync(self, devices: AsyncIterable[tuple[Any, str]]) -> SyncReport:
        """Make the broker's device clients exactly the database's:
        ``devices`` yields ``(device, token)`` for every device
        (``DeviceRepository.all_credentials()``)."""
        async with self._lock:
            report = SyncReport()
            clients = await self._all("listClients", "clients")
            ours: dict[str, set[str]] = {}        # device id -> usernames it has
            for c in clients:
                text = c.get("textname") or ""
                if text.startswith(_DEVICE_MARK):
                    ours.setdefault(text[len(_DEVICE_MARK):], set()).add(c["username"])
            taken = {c["username"]: c.get("textname") or "" for c in clients}
            wanted: dict[str, str] = {}
            commands: list[dict[str, Any]] = []
            roles: list[dict[str, Any]] = []
            async for device, token in devices:
                report.devices += 1
                wanted[device.id] = token
                have = ours.get(device.id, set())
                for stale in have - {token}:
                    commands.append({"command": "deleteClient", "username": stale})
                    report.removed += 1
                if token in have:
                    continue
                owner = taken.get(token)
                # A client of another device holding this token is stale (the
                # token is unique in the database): it is deleted below first.
                if token in self._reserved or (owner is not None and not owner.startswith(_DEVICE_MARK)):
                    log.error("device %s: its token is the broker account %r; not provisioned", device.id, token)
                    report.refused += 1
                    continue
                role, client = self._device_commands(device.id, token)
                roles.append(role)
                commands.append(client)
                report.created += 1
            gone = [device_id for device_id in ours if device_id not in wanted]
            deletes = [{"command": "deleteClient", "username": u} for d in gone for u in ours[d]]
            report.removed += len(deletes)
            # Deletions first: a token may move from a deleted device to a new one.
            await self.execute(deletes + [c for c in commands if c["command"] == "deleteClient"],
                               ignore={"Client not found"})
            await self.execute(roles, ignore={"Role already exists"})
            await self.execute([c for c in commands if c["command"] == "createClient"])
            all_roles = await self._all("listRoles", "roles")
            stale_roles = [r["rolename"] for r in all_roles
                           if r.get("rolename", "").startswith(_DEVICE_ROLE)
                           and r["rolename"][len(_DEVICE_ROLE):] not in wanted]
            await self.execute([{"command": "deleteRole", "rolename": r} for r in stale_roles],
                               ignore={"Role not found"})
            report.roles_removed = len(stale_roles)
            log.info("dynsec sync: %s", report)
            return report
