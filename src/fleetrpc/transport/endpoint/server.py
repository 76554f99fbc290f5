"""The device endpoint: fleetrpc's own MQTT listener, a transport for the
dispatcher.

To the dispatcher it looks like :class:`~fleetrpc.transport.MqttTransport`:
``start(filters)``, ``close()``, ``publish(topic, payload, qos, retain,
token, properties)`` and the callbacks ``on_message``, ``on_published`` and
``on_connection``.  Underneath, devices connect to it directly:

- a REQUEST ``{p}/d/{device}/req/{node}/{rid}`` goes to the newest session
  of that device that subscribed to its RPC topic, in that session's form
  (``v1/devices/me/rpc/request/{n}``, ``v2/r/req/{n}``, the gateway's
  ``v1/gateway/rpc``, or the fleetrpc topic unchanged) at the QoS the device
  subscribed with;
- the device's answer becomes a REPLY ``{p}/d/{device}/res/{node}/{rid}``;
  its PUBACK (QoS 1), or the write itself (QoS 0), an ACK
  ``{p}/d/{device}/ack/{node}/{rid}``: ThingsBoard's DELIVERED;
- a device's own call becomes a CALL ``{p}/d/{device}/call/{cid}`` with a
  ``cid`` chosen here, and the dispatcher's RETURN on ``ret/{cid}`` goes back
  to the session that asked, on the topic it expects;
- ``getSessionLimits`` is answered here, as ThingsBoard's transport does;
- the first session of a device that subscribes to its RPC topic makes it
  online (a PRESENCE message ``{"status": "online"}``), the last one to go
  makes it offline.

Time: one sweep per second checks the connections whose connect timeout or
keepalive falls due (bucketed by second, so an idle connection costs a
check per keepalive, not per sweep), slow readers and expired sessions.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import ssl as _ssl
import time
from typing import Any, Awaitable, Callable, Union

import msgspec

from ...dispatch.rejects import RejectLog
from ...errors import ValidationError
from ...wire import devices_root, validate_id, validate_prefix
from ...wire.topics import presence_topic
from . import packets as P
from .limits import RateLimit, parse_rate_limits
from .http import HttpDevices
from .session import CLOSED, CONNECTED, Session, SubDevice
from .settings import EndpointSettings

log = logging.getLogger("fleetrpc.endpoint")

_json = msgspec.json.Encoder().encode


class Identity(msgspec.Struct, frozen=True):
    """Who a connection is, as ``authenticate`` tells: a device of the
    registry, and whether it may use the gateway API (ThingsBoard allows
    that only to devices marked as gateways)."""

    device_id: str
    gateway: bool = False


AuthResult = Union[str, Identity, None]
#: authenticate(username, password, client_id) -> device id / Identity / None,
#: or an awaitable of that.  An empty user name reaches it only with
#: ``mqtt_basic``; the password is None when the device sent none.
Authenticate = Callable[[str, "str | None", str], Union[AuthResult, Awaitable[AuthResult]]]
#: resolve_subdevice(gateway device id, sub-device name) -> device id / None,
#: or an awaitable of that.
ResolveSubdevice = Callable[[str, str], Union["str | None", Awaitable["str | None"]]]


class EndpointStats:
    """Counters of one endpoint."""

    __slots__ = (
        "accepted", "refused_max_connections", "refused_auth", "refused_unavailable", "takeovers",
        "closed_protocol", "closed_too_large", "closed_keepalive", "closed_rate_limit",
        "closed_slow_reader", "closed_connect_timeout", "closed_other",
        "requests", "retries_merged", "responses", "unknown_response", "client_calls", "session_limits",
        "undeliverable", "too_large_for_device", "ignored", "attribute_requests", "refused_topic",
        "refused_subdevices", "stored_sessions_dropped",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def count_close(self, reason: int) -> None:
        if reason in (P.MALFORMED_PACKET, P.PROTOCOL_ERROR, P.QOS_NOT_SUPPORTED, P.TOPIC_NAME_INVALID):
            self.closed_protocol += 1
        elif reason == P.PACKET_TOO_LARGE:
            self.closed_too_large += 1
        elif reason == P.KEEP_ALIVE_TIMEOUT:
            self.closed_keepalive += 1
        elif reason == P.MESSAGE_RATE_TOO_HIGH:
            self.closed_rate_limit += 1
        else:
            self.closed_other += 1

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"EndpointStats({self.as_dict()})"


#: Most stored sessions (distinct client ids) one device keeps at a time.
MAX_STORED_PER_DEVICE = 16


class _StoredSession:
    """A disconnected session kept for its expiry interval: its subscriptions."""

    __slots__ = ("endpoint", "key", "subs", "deadline", "check_bucket")

    def __init__(self, endpoint: "DeviceEndpoint", key: tuple[str, str], subs: dict[str, int], deadline: float) -> None:
        self.endpoint = endpoint
        self.key = key
        self.subs = subs
        self.deadline = deadline
        self.check_bucket: set | None = None

    def _check(self, now: float) -> None:
        ep = self.endpoint
        if ep._stored.get(self.key) is not self:
            return
        if now >= self.deadline:
            ep._forget_stored(self.key)
        else:
            ep._check_at(self, self.deadline)


#: the "bucket" of the objects whose check the sweep is about to make (see _sweep)
_DUE: set = set()


def _members(entry: Any) -> tuple:
    """A per-device table's value as a tuple: one member is kept bare (a
    1-tuple for each device would cost 40 bytes), more in a tuple."""
    return entry if entry.__class__ is tuple else (entry,)


def _joined(entry: Any, member: Any) -> Any:
    """``entry`` (None: no members yet) with ``member`` last."""
    return member if entry is None else _members(entry) + (member,)


def _routed_last(routes: Any, target: Any) -> Any:
    """A device's routes with ``target`` added where requests find it: they
    go to the last route. The device's own routes (its MQTT sessions, its
    HTTP polls) stay after every gateway's binding of it, so that while the
    device is connected itself no gateway answers for it; among each kind,
    the newest is last."""
    if target.__class__ is not SubDevice:
        return _joined(routes, target)
    members = _members(routes)
    own = [m for m in members if m.__class__ is not SubDevice]
    if not own:
        return members + (target,)
    return tuple(m for m in members if m.__class__ is SubDevice) + (target,) + tuple(own)


def _left(entry: Any, member: Any) -> Any:
    """``entry`` without ``member``; None when nothing is left."""
    rest = tuple(m for m in _members(entry) if m is not member)
    return rest if len(rest) > 1 else rest[0] if rest else None


def _name_is_id(gateway: str, name: str) -> str | None:
    """Library default for sub-devices: the name announced is the device id."""
    try:
        return validate_id("device", name)
    except ValidationError:
        return None


class DeviceEndpoint:
    """fleetrpc's own MQTT listener for devices, usable as a dispatcher's
    transport (see the module docstring).

    ``authenticate(username, password, client_id)`` says which device a
    connection is (a device id, an :class:`Identity`, or None to refuse);
    it may be a coroutine function.  ``resolve_subdevice(gateway_id, name)``
    maps a gateway's announced sub-device name to a device id (default: the
    name is the id).
    """

    #: Holds no retained messages: a dispatcher on it alone has every
    #: presence as the devices connect, and no broker to wait for on start.
    keeps_retained = False

    def __init__(
        self,
        settings: EndpointSettings | None = None,
        *,
        authenticate: Authenticate,
        resolve_subdevice: ResolveSubdevice | None = None,
        ssl_context: _ssl.SSLContext | None = None,
    ) -> None:
        self.settings = s = settings or EndpointSettings()
        validate_prefix(s.prefix)
        self._auth_cb = authenticate
        self._resolve_cb = resolve_subdevice or _name_is_id
        self._ssl_context = ssl_context
        self._dev_prefix = devices_root(s.prefix)
        self._max_packet = s.max_packet
        self._rate_spec = parse_rate_limits(s.rate_limit)
        self.stats = EndpointStats()
        #: devices on ThingsBoard's HTTP device API (see http.py)
        self.http = HttpDevices(self)
        #: Connections refused because the device registry could not be read
        #: (a database outage): counted, logged in summaries, not one
        #: traceback per device of a reconnect storm.
        self.auth_failures = RejectLog(log, 10.0)
        #: Publishes refused (another device's topics): counted in ``stats``,
        #: logged in summaries (one device could otherwise bury the log).
        self.refusals = RejectLog(log, 10.0)

        #: Set by the owner: on_message(topic, payload, properties).
        self.on_message: Callable[[str, bytes, "dict | None"], None] = lambda t, p, props: None
        #: Set by the owner: on_published(token) once the device has it.
        self.on_published: Callable[[int], None] = lambda token: None
        #: Set by the owner: on_connection(listening: bool).
        self.on_connection: Callable[[bool], None] = lambda up: None
        #: Set by the dispatcher: how many replies it awaits (write batching).
        self.awaiting: Callable[[], int] = lambda: 0
        self._write_batch_above = s.write_batch_above

        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self.ports: dict[str, int] = {}
        #: open connections (accepted, until connection_lost); each is in one
        #: of the sweep's buckets all that time, which is where they are found
        #: (see _open_sessions): a set of them cost 30-65 bytes each
        self._connections = 0
        # In the per-device tables, one member is kept bare and more in a
        # tuple (see _members): almost every device has one, and they
        # change only when sessions come and go.
        #: device -> its sessions (connected, authenticated), at most one per
        #: client id (MQTT's one-session-per-client-id rule, per device)
        self._sessions: dict[str, Session | tuple[Session, ...]] = {}
        #: device -> where its requests go (sessions and gateway sub-devices), newest last
        self._routes: dict[str, Session | SubDevice | tuple[Session | SubDevice, ...]] = {}
        #: client-side call id -> (session, answer topic, QoS, answer properties)
        self._calls: dict[str, tuple[Session, str, int, dict | None]] = {}
        # Call ids far above what devices pick for themselves: with the
        # composite transport, a device id reached through the broker too
        # gets answers on ret/{its own id}, which must not look like ours.
        self._cids = itertools.count(1 << 40)
        self._client_ids = itertools.count(1)
        self._stored: dict[tuple[str, str], _StoredSession] = {}
        #: device -> how many of ``_stored`` are its (at most MAX_STORED_PER_DEVICE)
        self._stored_per_device: dict[str, int] = {}
        self._limits: dict[str, RateLimit] = {}
        self._paused: set[Session] = set()
        self._dirty: list[Session] = []
        self._flush_scheduled = False
        self._checks: dict[int, set] = {}
        #: the bucket the sweep is checking now (see _sweep)
        self._due: set = _DUE
        self._swept = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._last_purge = 0.0
        self._tasks: set[asyncio.Task] = set()
        #: gateway session -> sub-device name -> what waits for its lookup
        #: (``bound`` callbacks): one lookup per name at a time, counted
        #: against max_subdevices while it runs
        self._resolving: dict[Session, dict[str, list[Callable[[], None]]]] = {}
        self._closing = False
        limits: dict[str, Any] = {"messages": s.rate_limit or "", "telemetryMessages": s.rate_limit or "",
                                  "telemetryDataPoints": ""}
        self._limits_device = _json({"maxPayloadSize": s.max_payload, "maxInflightMessages": s.max_inflight,
                                     "rateLimits": limits})
        self._limits_gateway = _json({"maxPayloadSize": s.max_payload, "maxInflightMessages": s.max_inflight,
                                      "rateLimits": limits, "gatewayRateLimits": limits})

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, filters: list[tuple[str, int]] = ()) -> None:
        """Listen.  ``filters`` (the dispatcher's subscriptions) are only
        checked against the prefix: every message for the dispatcher is made
        here, so nothing needs subscribing."""
        for f, _ in filters:
            if self._dev_prefix in f:
                break
        else:
            if filters:
                raise ValidationError(
                    f"the endpoint's prefix {self.settings.prefix!r} is not the dispatcher's: "
                    f"its subscriptions are {[f for f, _ in filters]}"
                )
        self._loop = loop = asyncio.get_running_loop()
        s = self.settings
        try:
            if s.port is not None:
                server = await loop.create_server(lambda: Session(self), s.host, s.port, backlog=4096,
                                                  reuse_port=s.reuse_port or None)
                self._servers.append(server)
                self.ports["tcp"] = server.sockets[0].getsockname()[1]
            if s.tls_port is not None:
                ctx = self._ssl_context or self._make_ssl_context()
                server = await loop.create_server(
                    lambda: Session(self), s.host, s.tls_port, ssl=ctx, backlog=4096,
                    ssl_handshake_timeout=s.connect_timeout, reuse_port=s.reuse_port or None,
                )
                self._servers.append(server)
                self.ports["tls"] = server.sockets[0].getsockname()[1]
        except BaseException:
            for server in self._servers:
                server.close()
            self._servers.clear()
            raise
        self._swept = int(loop.time())
        self._sweeper = loop.call_later(1.0, self._sweep)
        log.info("device endpoint listening on %s", self.ports)
        self.on_connection(True)

    def _make_ssl_context(self) -> _ssl.SSLContext:
        s = self.settings
        ctx = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
        if s.tls_ca:
            ctx.load_verify_locations(s.tls_ca)
            ctx.verify_mode = _ssl.CERT_OPTIONAL
        return ctx

    async def close(self) -> None:
        """Stop listening and close every connection (MQTT 5 sessions hear
        "server shutting down")."""
        if self._closing:
            return
        self._closing = True
        self.http.close()
        self.auth_failures.close()
        self.refusals.close()
        for server in self._servers:
            server.close()
        for session in self._open_sessions():
            session.close(P.SERVER_SHUTTING_DOWN)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except asyncio.TimeoutError:
                log.warning("device endpoint: connections still open after close")
        self._servers.clear()
        self.on_connection(False)

    # -- what the owner may ask -------------------------------------------------------

    def reaches(self, device: str) -> bool:
        """True while a session of ``device`` (or its gateway) has subscribed
        to its RPC topic here."""
        return device in self._routes

    def disconnect_device(self, device: str, why: str) -> int:
        """The registry deleted ``device`` or replaced its credentials: its
        connections close (MQTT 5 ones hear "not authorized"), no gateway
        answers for it any more and its HTTP polls end, as ThingsBoard's
        transports close such sessions; it must authenticate again.
        Returns the number of connections closed."""
        sessions = self.sessions_of(device)
        for session in sessions:
            session._fail(P.NOT_AUTHORIZED, why)
        routes = self._routes.get(device)
        for member in _members(routes) if routes is not None else ():
            if member.__class__ is SubDevice:
                member.session.drop_subdevice(member.name)
        self.http.forget_device(device)
        return len(sessions)

    def sessions_of(self, device: str) -> tuple[Session, ...]:
        """The authenticated connections of ``device``, oldest first."""
        entry = self._sessions.get(device)
        return () if entry is None else _members(entry)

    @property
    def connected_devices(self) -> frozenset[str]:
        """Devices with at least one authenticated connection."""
        return frozenset(self._sessions)

    @property
    def connection_count(self) -> int:
        """Open connections, authenticated or not."""
        return self._connections

    def buffered_bytes(self) -> int:
        """Bytes held for all connections: partial packets read, output not yet
        handed to the kernel, and the transports' write buffers."""
        total = 0
        for s in self._open_sessions():
            if s.reader is not None:
                total += s.reader.buffered
            if s.early is not None:
                total += len(s.early)
            out = s.out
            if out is not None:
                total += sum(map(len, out)) if out.__class__ is list else len(out)
            if s.transport is not None:
                total += s.transport.get_write_buffer_size()
        return total

    def tracked(self) -> dict[str, int]:
        """Sizes of every per-connection table (tests assert they return to
        zero once the devices are gone)."""
        return {
            "connections": self._connections,
            "devices": len(self._sessions),
            "routes": len(self._routes),
            "calls": len(self._calls),
            "paused": len(self._paused),
            "dirty": len(self._dirty),
            "tasks": len(self._tasks),
            "http_devices": len(self.http),
            "http_polls": self.http.polls_waiting(),
            # sessions in the sweep's buckets, closed ones too: a closed
            # connection must not be kept alive by its bucket
            "checks": sum(1 for items in self._checks.values() for s in items if isinstance(s, Session)),
        }

    # -- transport interface: the dispatcher publishes ----------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                token: int = -1, properties: dict | None = None) -> None:
        """Deliver a dispatcher message to the device it is for; a device
        that is not connected here does not get it (its call times out, as
        through a broker)."""
        if not self.try_publish(topic, payload, qos, retain, token, properties):
            self.stats.undeliverable += 1

    @property
    def request_head(self) -> str:
        """``{prefix}/d/``: a dispatcher whose requests start with it may
        hand them to :meth:`publish_request`."""
        return self._dev_prefix

    def publish_request(self, device: str, topic: str, payload: bytes, qos: int = 1, token: int = -1,
                        properties: dict | None = None) -> None:
        """:meth:`publish` of a REQUEST ``{request_head}{device}/req/...``
        for ``device``: the dispatcher's send path, routed by the device it
        names rather than by parsing the topic again (5-6 % of the
        instructions of a direct round trip, bench_endpoint_core.py
        --dispatcher under callgrind)."""
        if not self.try_publish_request(device, topic, payload, qos, token, properties):
            self.stats.undeliverable += 1

    def try_publish_request(self, device: str, topic: str, payload: bytes, qos: int = 1, token: int = -1,
                            properties: dict | None = None) -> bool:
        """:meth:`publish_request`, returning False when no connection here
        has ``device``."""
        targets = self._routes.get(device)
        if targets is None:
            return False
        self.stats.requests += 1
        # ``{node}/{rid}`` starts after ``{request_head}{device}/req/``
        (targets[-1] if targets.__class__ is tuple else targets).send_request(
            topic, len(self._dev_prefix) + len(device) + 5, payload, token, properties)
        return True

    def try_publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                    token: int = -1, properties: dict | None = None) -> bool:
        """:meth:`publish`, returning False when no connection here takes it."""
        dp = self._dev_prefix
        if not topic.startswith(dp):
            return False
        i = len(dp)
        j = topic.find("/", i)
        if j < 0:
            return False
        device = topic[i:j]
        kind = topic[j + 1:j + 5]
        if kind == "req/":
            return self.try_publish_request(device, topic, payload, qos, token, properties)
        if kind == "ret/":
            entry = self._calls.pop(topic[j + 5:], None)
            if entry is not None:
                session, answer, q, answer_props = entry
                calls = session.calls
                if calls is not None:
                    calls.discard(topic[j + 5:])
                session.send_answer(answer, payload, q, answer_props)
                return True
            return False  # an answer to a call that came another way
        # anything else for a fleetrpc-SDK device connected here
        delivered = False
        for session in self.sessions_of(device):
            q = session._fr_qos(topic)
            if q >= 0:
                session._publish(topic, payload, q, token if token >= 0 else None, properties)
                delivered = True
        return delivered

    # -- called by sessions --------------------------------------------------------------

    def _deliver(self, topic: str, payload: bytes, props: dict | None = None) -> None:
        if self._closing:
            return
        try:
            self.on_message(topic, payload, props)
        except Exception:  # the owner's bug must not cost the device its connection
            log.exception("on_message failed for %r", topic)

    def _accept(self, session: Session) -> bool:
        """A new connection: counted, and due for its connect timeout (which
        keeps it in the sweep's buckets until it is lost); False to refuse."""
        if self._closing or self._connections >= self.settings.max_connections:
            self.stats.refused_max_connections += 1
            return False
        self._connections += 1
        self.stats.accepted += 1
        self._check_at(session, session.last_in + self.settings.connect_timeout)
        return True

    def _authenticate(self, username: str, password: str | None, client_id: str):
        return self._auth_cb(username, password, client_id)

    def _identity(self, result: Any) -> Identity | None:
        if result is None:
            return None
        if isinstance(result, str):
            result = Identity(result)
        elif not isinstance(result, Identity):
            log.error("authenticate() returned %r: expected a device id, an Identity or None", result)
            return None
        try:
            validate_id("device", result.device_id)
        except ValidationError as exc:
            log.error("authenticate() returned an unusable device id: %s", exc)
            return None
        return result

    def _assign_client_id(self) -> str:
        return f"fleetrpc-auto-{next(self._client_ids)}"

    def _register(self, session: Session) -> bool:
        """An authenticated session: take over an older one of the same
        client id (same device only), count it; returns session-present."""
        device = session.device
        client_id = session.client_id
        key = (device, client_id)
        for old in self.sessions_of(device):
            if old.client_id == client_id and old is not session:
                self.stats.takeovers += 1
                old.close(P.SESSION_TAKEN_OVER)  # (which takes it out of _sessions)
        self._sessions[device] = _joined(self._sessions.get(device), session)
        if session.clean_start:
            self._unstore(key)
            return False
        return key in self._stored

    def _forget_stored(self, key: tuple[str, str]) -> "_StoredSession | None":
        stored = self._stored.pop(key, None)
        if stored is not None:
            device = key[0]
            n = self._stored_per_device[device] - 1
            if n:
                self._stored_per_device[device] = n
            else:
                del self._stored_per_device[device]
        return stored

    def _unstore(self, key: tuple[str, str]) -> "_StoredSession | None":
        """Forget the stored session ``key`` (its sweep check too)."""
        stored = self._forget_stored(key)
        if stored is not None:
            self._uncheck(stored)
        return stored

    def _store(self, stored: "_StoredSession") -> None:
        """Keep ``stored`` until its deadline; past max_stored_sessions the
        one stored longest ago (the dict's first: a key stored again moves
        last) is forgotten first.  A device that already has
        MAX_STORED_PER_DEVICE stored sessions (one device cycling client
        ids) gets no more: it cannot push the other devices' out."""
        stored_map = self._stored
        self._unstore(stored.key)
        device = stored.key[0]
        per_device = self._stored_per_device.get(device, 0)
        if per_device >= MAX_STORED_PER_DEVICE:
            self.stats.stored_sessions_dropped += 1
            return
        limit = self.settings.max_stored_sessions
        while len(stored_map) >= limit:
            self._unstore(next(iter(stored_map)))
            self.stats.stored_sessions_dropped += 1
        stored_map[stored.key] = stored
        self._stored_per_device[device] = self._stored_per_device.get(device, 0) + 1
        self._check_at(stored, stored.deadline)

    def _restore(self, session: Session) -> None:
        stored = self._unstore((session.device, session.client_id))
        if stored is not None:
            for topic, qos in stored.subs.items():
                session.subscribe(topic, qos)

    def _detach(self, session: Session) -> None:
        """A session ends (closed here or by the device): it reaches nothing
        any more.  Idempotent."""
        device = session.device
        if not device:
            return
        sessions = self._sessions.get(device)
        if sessions is None or session not in _members(sessions):
            return
        rest = _left(sessions, session)
        if rest is None:
            del self._sessions[device]
        else:
            self._sessions[device] = rest
        self._remove_route(device, session)
        x = session.extra
        if x is None:
            return
        for sub in (x.subdevices or {}).values():
            self._remove_route(sub.device, sub)
        for cid in x.calls or ():
            self._calls.pop(cid, None)
        x.calls = None
        client_id = session.client_id
        if x.session_expiry and not self._closing and all(
                s.client_id != client_id for s in (() if rest is None else _members(rest))):
            key = (device, client_id)
            self._store(_StoredSession(self, key, session.subscriptions(), self._loop.time() + x.session_expiry))

    def _lost(self, session: Session) -> None:
        self._detach(session)
        if session.check_bucket is not None:  # (None: it was never accepted)
            self._connections -= 1
            self._uncheck(session)
        self._paused.discard(session)

    def _add_route(self, device: str, target: Session | SubDevice) -> None:
        routes = self._routes.get(device)
        if routes is None:
            self._routes[device] = target
            self._presence(device, True)
        elif target not in _members(routes):
            self._routes[device] = _routed_last(routes, target)

    def _remove_route(self, device: str, target: Session | SubDevice) -> None:
        routes = self._routes.get(device)
        if routes is None or target not in _members(routes):
            return
        rest = _left(routes, target)
        if rest is not None:
            self._routes[device] = rest
        else:
            del self._routes[device]
            self._presence(device, False)

    def _presence(self, device: str, online: bool) -> None:
        body = _json({"status": "online" if online else "offline", "ts": int(time.time() * 1000)})
        self._deliver(presence_topic(self.settings.prefix, device), body)

    def _new_call(self, session: Session, answer: str, qos: int, props: dict | None) -> str:
        cid = str(next(self._cids))
        self._calls[cid] = (session, answer, qos, props)
        return cid

    def _session_limits(self, gateway: bool) -> bytes:
        return self._limits_gateway if gateway else self._limits_device

    def _rate_limit(self, device: str) -> RateLimit | None:
        if not self._rate_spec:
            return None
        limit = self._limits.get(device)
        if limit is None:
            limit = self._limits[device] = RateLimit(self._rate_spec, self._loop.time())
        return limit

    def _resolve_subdevice(self, session: Session, name: str,
                           bound: Callable[[], None] | None = None) -> None:
        """Bind ``name`` to the gateway ``session`` as ``resolve_subdevice``
        says; then ``bound()``, only if the name is bound (the resolver may
        refuse it, the session may have closed meanwhile, the gateway may
        have max_subdevices already)."""
        if not self._room_for_subdevice(session, name):
            return
        resolving = self._resolving.get(session)
        if resolving is not None and name in resolving:  # announced again meanwhile: one lookup
            if bound is not None:
                resolving[name].append(bound)
            return
        try:
            result = self._resolve_cb(session.device, name)
        except Exception as exc:
            self._lookup_failed(session, name, exc)
            return
        if inspect.isawaitable(result):
            if resolving is None:
                resolving = self._resolving[session] = {}
            resolving[name] = [] if bound is None else [bound]
            self._spawn(self._await_subdevice(session, name, result))
        elif result is not None:
            self._bind_subdevice(session, name, result, bound)
        else:
            self.stats.ignored += 1

    async def _await_subdevice(self, session: Session, name: str, awaitable) -> None:
        # The lookup has auth_timeout, as a token's check has: one that never
        # answers must not hold its place under max_subdevices for ever.
        device = None
        try:
            device = await asyncio.wait_for(awaitable, self.settings.auth_timeout)
        except Exception as exc:
            self._lookup_failed(session, name, exc)
        finally:
            resolving = self._resolving.get(session)
            waiting = resolving.pop(name, ()) if resolving is not None else ()
            if resolving is not None and not resolving:
                del self._resolving[session]
        if device is not None:
            self._bind_subdevice(session, name, device, None)
            if name in (session.subdevices or ()):
                for bound in waiting:
                    bound()

    def _lookup_failed(self, session: Session, name: str, exc: BaseException) -> None:
        # in summaries: a gateway that reconnects during a registry outage
        # announces all its sub-devices at once
        self.stats.ignored += 1
        why = "no answer within auth_timeout" if isinstance(exc, asyncio.TimeoutError) else repr(exc)
        self.auth_failures.note("subdevice_lookup", "gateway %s: sub-device %r not bound, its lookup failed: %s",
                                session.device, name, why)

    def _bind_subdevice(self, session: Session, name: str, device: str, bound: Callable[[], None] | None) -> None:
        subdevices = session.subdevices or ()
        if name not in subdevices and len(subdevices) >= self.settings.max_subdevices:
            self._refuse_subdevice(session, name)  # (a safeguard: a lookup holds its place meanwhile)
            return
        session.add_subdevice(name, device)
        if bound is not None and name in (session.subdevices or ()):
            bound()

    def _room_for_subdevice(self, session: Session, name: str) -> bool:
        """The gateway ``session`` may bind ``name``: it has it already (or
        its lookup runs), or fewer than max_subdevices bound and being looked
        up.  Otherwise the name is refused, counted and logged in summaries
        (a gateway announcing name after name must neither grow without
        bound nor bury the log)."""
        subdevices = session.subdevices or ()
        resolving = self._resolving.get(session) or ()
        limit = self.settings.max_subdevices
        if len(subdevices) + len(resolving) < limit or name in subdevices or name in resolving:
            return True
        self._refuse_subdevice(session, name)
        return False

    def _refuse_subdevice(self, session: Session, name: str) -> None:
        self.stats.refused_subdevices += 1
        self.refusals.note("refused_subdevices", "gateway %s announced sub-device %r beyond max_subdevices "
                           "(%d): ignored", session.device, name, self.settings.max_subdevices)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- output and time --------------------------------------------------------------

    def _mark_dirty(self, session: Session) -> None:
        self._dirty.append(session)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            above = self._write_batch_above
            if above and self.awaiting() >= above:
                self._loop.call_later(self.settings.write_batch_delay, self._flush)
            else:
                self._loop.call_soon(self._flush_after_wakeups)

    def _flush_after_wakeups(self) -> None:
        # One hop more: the callers that this iteration's answers woke run
        # first, so a device's PUBACK and its next request leave in one send.
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for session in dirty:
            session._flush()

    def _check_at(self, obj: Any, when: float) -> None:
        """Have the sweep call ``obj._check(now)`` once ``when`` has passed;
        an object is in one bucket at a time (a new time replaces the old).
        The object keeps its bucket itself in ``check_bucket``, not the
        bucket's key: an int per object would be 32 bytes more each."""
        old = obj.check_bucket
        if old is not None:
            old.discard(obj)
        key = max(int(when) + 1, self._swept + 1)
        bucket = self._checks.get(key)
        if bucket is None:
            bucket = self._checks[key] = {obj}
        else:
            bucket.add(obj)
        obj.check_bucket = bucket

    def _open_sessions(self) -> list[Session]:
        """Every open connection: each is in a bucket of the sweep (or due
        in the sweep that runs now)."""
        found = [obj for bucket in self._checks.values() for obj in bucket if obj.__class__ is Session]
        found += [obj for obj in self._due if obj.check_bucket is _DUE and obj.__class__ is Session]
        return found

    def _uncheck(self, obj: Any) -> None:
        """``obj`` needs no more checks: a closed connection is not kept
        alive by its bucket until it falls due (up to 1.5 keepalives)."""
        bucket = obj.check_bucket
        if bucket is not None:
            bucket.discard(obj)
            obj.check_bucket = None

    def _sweep(self) -> None:
        loop = self._loop
        now = loop.time()
        sec = int(now)
        checks = self._checks
        for key in range(self._swept + 1, sec + 1):
            bucket = checks.pop(key, None)
            if bucket:
                # Each is marked due (and out of this set, which a check must
                # not change while it is iterated); a check that moves or
                # ends another one of them takes its mark away.
                for obj in bucket:
                    obj.check_bucket = _DUE
                self._due = bucket
                for obj in bucket:
                    if obj.check_bucket is _DUE:
                        obj.check_bucket = None
                        try:
                            obj._check(now)
                        except Exception:
                            log.exception("device endpoint: keepalive check failed")
                            if obj.__class__ is Session and obj.transport is not None and obj.check_bucket is None:
                                self._check_at(obj, now + 1)  # (an open connection stays in a bucket)
                self._due = _DUE
        self._swept = max(self._swept, sec)
        if self._paused:
            grace = self.settings.slow_reader_grace
            for session in list(self._paused):
                if session.paused_since and now - session.paused_since >= grace:
                    self.stats.closed_slow_reader += 1
                    log.info("device session %s dropped: a slow reader for %.0f s", session._who(), grace)
                    self._paused.discard(session)
                    session.abort()
        if self._limits and now - self._last_purge >= 60:
            self._last_purge = now
            for device in [d for d, lim in self._limits.items() if d not in self._sessions and lim.full(now)]:
                del self._limits[device]
        if not self._closing:
            self._sweeper = loop.call_later(1.0, self._sweep)
