"""The parts of a server, each started and stopped in order.

A part is an async generator ``part(ctx)``: what comes before its ``yield``
starts it, what comes after stops it (aiohttp's ``cleanup_ctx``).  The
server starts the parts in :data:`PARTS` order and stops the started ones in
reverse, also when a later one fails to start:

1. ``embedded``     data directory, JWT signing key
2. ``database``     the shared Database, the identity repositories, the RPC store
   ``leases``       this node's identity; on PostgreSQL (``[cluster]``) its
                    LeaseManager: device partitions and named leases
3. ``broker``       the server's own broker when ``mqtt.url`` is unset, its
                    devices preloaded from the database (so after it)
4. ``provisioning`` device accounts at the broker kept in step with the
                    database (server/device_auth.py)
5. ``events``       the event bus and its sinks (last to stop: it delivers
                    what the others emit while stopping)
6. ``dispatcher``   the broker connection, the dispatch engine, client-side
                    RPC (server/client_rpc.py)
7. ``engine``       persistent RPC: recovers unfinished calls; TTL clean-up;
                    on stop, flushes every status write
8. ``jobs``         fleet jobs: resumes interrupted ones
9. ``elves``        the Elves services (``[elves]``; services/elves/part.py)
10. ``http``        the API (with EMQX's hooks when configured); on stop it
                    drains (see :func:`http`)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from ..api.auth import TokenService, load_or_create_secret
from ..errors import StoreUnavailableError
from .context import ServerContext
from .device_auth import provisioning
from .logs import HttpServerLog

__all__ = ["PARTS", "Part"]

log = logging.getLogger("fleetrpc.server")

Part = Callable[[ServerContext], AsyncIterator[None]]


async def embedded(ctx: ServerContext) -> AsyncIterator[None]:
    s = ctx.settings
    if s.store.url is None or s.jwt.secret is None:
        s.data_dir.mkdir(parents=True, exist_ok=True)
    secret = s.jwt.secret or load_or_create_secret(s.data_dir)
    ctx.tokens = TokenService(s.jwt, secret)
    yield


async def broker(ctx: ServerContext) -> AsyncIterator[None]:
    s = ctx.settings
    overrides: dict[str, Any] = _cluster_overrides(ctx)
    if s.mqtt.url is None:
        from .device_auth import own_broker

        async with own_broker(ctx) as b:
            ctx.broker = b
            overrides["mqtt_url"] = b.url
            if b.kind == "embedded":
                overrides["mqtt_version"] = 4  # amqtt speaks MQTT 3.1.1 only
            if b.dynsec is not None:  # the one account that may publish requests
                overrides["mqtt_username"] = b.dynsec.server_username
                overrides["mqtt_password"] = b.dynsec.server_password
            ctx.library = s.library(**overrides)
            try:
                yield
            finally:
                ctx.broker = None
        return
    ctx.library = s.library(**overrides)
    yield


def _timed_writes(store: Any, histogram: Any) -> None:
    """Time every write transaction of the store under ``store`` (group
    commit batches go through its ``write``)."""
    inner = getattr(store, "store", store)
    write = inner.write

    @functools.wraps(write)
    async def timed(*args: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            return await write(*args, **kw)
        finally:
            histogram.observe(time.perf_counter() - started)

    inner.write = timed


async def database(ctx: ServerContext) -> AsyncIterator[None]:
    from ..store import rpc_store
    from ..store.db import open_database
    from .identity import open_repositories

    ctx.db = await open_database(ctx.settings.store_url)  # applies every migration
    try:
        close_repositories = await open_repositories(ctx)
        try:
            ctx.store = rpc_store(ctx.db, group_commit=True)  # on the shared Database
            await ctx.store.open()
            _timed_writes(ctx.store, ctx.metrics.store_write)
            try:
                yield
            finally:
                await ctx.store.close()
                ctx.store = None
        finally:
            await close_repositories()
    finally:
        await ctx.db.close()
        ctx.db = None


def _cluster_overrides(ctx: ServerContext) -> dict[str, Any]:
    """The dispatcher's node id is the node's (``--node-id``, or generated
    once into the data directory); a cluster node joins the share group
    ``fleetrpc`` unless one is set, so that each client-side and Elves
    call reaches one node."""
    out: dict[str, Any] = {}
    if ctx.node is not None:
        out["node_id"] = ctx.node.node_id
    if ctx.leases is not None and not ctx.leases.single_node and ctx.settings.dispatch.share_group is None:
        out["share_group"] = DEFAULT_SHARE_GROUP
    return out


#: The shared-subscription group of cluster nodes that name none.
DEFAULT_SHARE_GROUP = "fleetrpc"


async def leases(ctx: ServerContext) -> AsyncIterator[None]:
    """This node's identity and, in a cluster, its leases: device partitions
    (the persistent engine drives the calls of the partitions it owns) and
    named leases (jobs, the cron loop).  On SQLite every partition is this
    node's.  Stopped after the engine and the jobs: their partitions and
    leases are released only once they stopped acting on them."""
    from ..cluster import LeaseManager, load_node_identity

    s = ctx.settings
    if s.dispatch.node_id is not None:
        ctx.node = load_node_identity(None, s.dispatch.node_id)
    elif s.clustered:
        ctx.node = load_node_identity(s.data_dir)  # generated once, kept
    else:
        ctx.node = load_node_identity(None, s.library().node_id)
    if not s.clustered:
        ctx.leases = LeaseManager(_SingleNode(), ctx.node, s.cluster)  # type: ignore[arg-type]
        await ctx.leases.start()
        try:
            yield
        finally:
            await ctx.leases.stop()
            ctx.leases = None
        return
    _import_later_parts(ctx)
    m = LeaseManager(ctx.db, ctx.node, s.cluster)
    await m.start()
    # Start with this node's share (a claim interval, or a hand-over by the
    # others within a renewal round), so that the engine resumes its calls
    # at start; a node that cannot get it within the lease time starts
    # anyway and takes its share later.
    deadline = time.monotonic() + s.cluster.lease_ttl_s
    while m.status()["balancing"] and time.monotonic() < deadline:
        await asyncio.sleep(s.cluster.claim_interval / 2)
    log.info("cluster node %s (session %s): %d partitions, lease %.1f s",
             ctx.node.node_id, m.session, m.partitions, s.cluster.lease_ttl_s)
    ctx.leases = m
    try:
        yield
    finally:
        await m.stop()
        ctx.leases = None
        from ..rpc.cluster import announce_leave

        try:
            await announce_leave(ctx.db)  # the others claim at once
        except Exception as e:  # they claim at their next round anyway
            log.info("could not announce the leave: %s", e)


def _import_later_parts(ctx: ServerContext) -> None:
    """Import now what the parts after this one import when they start:
    an import blocks the event loop (a second or more on a loaded machine),
    and the leases must be renewed meanwhile, or the node fences itself
    during its own start."""
    import importlib

    names = ["fleetrpc.dispatch", "fleetrpc.rpc.persistent", "fleetrpc.jobs", "fleetrpc.jobs.registry",
             "fleetrpc.store.jobs", "fleetrpc.api.app", "fleetrpc.events", "fleetrpc.server.client_rpc",
             *(f.split(":")[0] for f in ctx.features)]
    if ctx.settings.elves.enabled:
        names += ["fleetrpc.services.elves.service", "fleetrpc.services.elves.directory",
                  "fleetrpc.services.elves.http"]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # the part itself reports it


class _SingleNode:
    """A stand-in Database for :class:`LeaseManager`: one node, every lease its own."""

    dialect = "sqlite"


async def events(ctx: ServerContext) -> AsyncIterator[None]:
    from ..events import EventBus, MqttSink, WebhookSink

    s = ctx.settings.events
    bus = EventBus()
    for url in s.webhook_urls:
        bus.add(WebhookSink(url, buffer=s.buffer, buffer_bytes=s.buffer_mib << 20))
    if s.mqtt_topic:
        # Published through the dispatcher's connection, once it is up.
        def publish(topic: str, payload: bytes, qos: int) -> None:
            ctx.dispatcher.publish(topic, payload, qos=qos)

        bus.add(MqttSink(publish, s.mqtt_topic, buffer=s.buffer, buffer_bytes=s.buffer_mib << 20))
    bus.start()
    ctx.bus = bus
    try:
        yield
    finally:
        await bus.close()
        ctx.bus = None


async def dispatcher(ctx: ServerContext) -> AsyncIterator[None]:
    from ..dispatch import Dispatcher
    from .client_rpc import ClientRpc

    registered = await _registered_devices(ctx)
    transport = _with_endpoint(ctx, registered) if ctx.settings.endpoint.enabled else _following_nodes
    d = Dispatcher(ctx.library, transport=transport, presence=_presence_registry(ctx, registered))
    if registered is not None:
        registered.attach(d.presence)
        ctx.registered_devices = registered

    def presence(device: str, online: bool) -> None:
        ctx.activity.touch(device)

    d.on_presence(presence)
    # Devices' own calls: built-ins, configured handlers, the webhook; each
    # emits TO_SERVER_RPC_REQUEST once (no status hook: it would cost every
    # call ~8 us and emit the client-side calls a second time).
    client_rpc = ClientRpc(ctx.settings.client_rpc, bus=ctx.bus, devices=ctx.devices,
                           max_payload=ctx.library.max_payload, max_inflight=ctx.library.queue_cap)
    client_rpc.install(d)
    ctx.client_rpc = client_rpc
    try:
        await d.start()
        ctx.dispatcher = d
        ctx.metrics.watch(ctx)
        background = [asyncio.ensure_future(_flush_activity_every(ctx, ctx.settings.server.activity_flush_s))]
        if registered is not None and ctx.leases is not None and not ctx.leases.single_node:
            # Devices created on the other nodes.
            background.append(asyncio.ensure_future(registered.follow(ctx.settings.cluster.poll_interval_s)))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await d.close()  # closes the endpoint too
            await _flush_activity(ctx)
    finally:
        if registered is not None:
            registered.detach()
            ctx.registered_devices = None
        await client_rpc.close()
        ctx.client_rpc = None
        if ctx.endpoint is not None:
            ctx.endpoint_directory.close()
            ctx.endpoint = ctx.endpoint_directory = None


async def _registered_devices(ctx: ServerContext) -> Any:
    """The device registry's ids in memory, or None when the repository
    cannot list them (presence is then bounded by its size alone)."""
    from .registered import RegisteredDevices

    registered = RegisteredDevices(ctx.devices)
    if not registered.available:
        log.info("presence is kept for any device id (the device repository cannot list its ids)")
        return None
    await registered.load()
    log.info("presence is kept for the %d registered devices", len(registered))
    return registered


def _presence_registry(ctx: ServerContext, registered: Any) -> Any:
    from ..presence import PresenceRegistry

    return PresenceRegistry.from_settings(ctx.library, registered.__contains__ if registered is not None else None)


def _with_endpoint(ctx: ServerContext, registered: Any = None) -> Callable[[Any], Any]:
    """Devices connect to this server directly as well (``[endpoint]``):
    the dispatcher's transport is the endpoint beside the broker connection
    (docs/endpoint.md; returned as the dispatcher's transport factory),
    tokens are checked against the device registry through a cache, and the
    endpoint's counters go to /metrics."""
    from ..transport.endpoint import CompositeTransport, DeviceEndpoint
    from ..transport.endpoint.directory import DeviceDirectory
    from ..transport.endpoint.metrics import EndpointCollector

    s = ctx.settings
    directory = DeviceDirectory(ctx.devices, size=s.endpoint.auth_cache_size, ttl=s.endpoint.auth_cache_ttl_s,
                                on_found=registered.confirm if registered is not None else None)
    endpoint = DeviceEndpoint(s.endpoint_settings(), authenticate=directory.authenticate,
                              resolve_subdevice=directory.resolve_subdevice)
    directory.on_gone = endpoint.disconnect_device
    ctx.endpoint = endpoint
    ctx.endpoint_directory = directory
    ctx.metrics.registry.register(EndpointCollector(endpoint))
    share = s.endpoint.share_devices
    # beside the broker connection the dispatcher would have made itself
    return lambda d: CompositeTransport(endpoint, d.mqtt_transport(), node=d.node if share else None,
                                        max_brokered=d.settings.presence_max_devices)


def _following_nodes(d: Any) -> Any:
    """No endpoint here, but other nodes may have one: this node follows
    which node each device is connected to, and acts on a lost node's Will
    like they do (docs/endpoint.md, "Several nodes")."""
    from ..transport.endpoint import CompositeTransport

    return CompositeTransport(None, d.mqtt_transport(), node=d.node, prefix=d.settings.prefix,
                              max_brokered=d.settings.presence_max_devices)


async def _flush_activity(ctx: ServerContext) -> None:
    """Write the devices' last activity seen since the last flush."""
    touch = getattr(ctx.devices, "touch_activity_many", None)
    changes = ctx.activity.take_changes()
    if touch is None or not changes:
        return
    try:
        await touch(changes)
    except StoreUnavailableError as e:
        # An outage: a line per flush interval, no traceback; what was not
        # written is lost, the next activity of each device is written.
        log.warning("could not write the last activity of %d devices: %s", len(changes), e)
    except Exception:
        log.exception("could not write the last activity of %d devices", len(changes))


async def _flush_activity_every(ctx: ServerContext, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)  # a period, not a synchronisation
        await _flush_activity(ctx)


async def engine(ctx: ServerContext) -> AsyncIterator[None]:
    from ..rpc.persistent import PersistentRpc

    # No default tenant: every call, read and delete must name its tenant.
    # In a cluster it drives the calls of the partitions this node owns.
    e = PersistentRpc(ctx.dispatcher, ctx.store, emit=ctx.bus.emit, default_tenant=None,
                      leases=ctx.leases, poll_interval_s=ctx.settings.cluster.poll_interval_s)
    recovered = await e.start()
    if recovered:
        log.info("recovered %d unfinished persistent calls", recovered)
    ctx.engine = e
    try:
        yield
    finally:
        await e.close()  # every status write flushed; unfinished calls stay stored


async def jobs(ctx: ServerContext) -> AsyncIterator[None]:
    """Fleet jobs: resumes the jobs a restart interrupted; on stop, the
    running ones stay stored and resume on the next start."""
    from ..jobs import JobEngine
    from ..jobs.registry import JobTargets
    from ..store.jobs import JobRepository

    ctx.job_targets = JobTargets(ctx.db)
    engine = JobEngine(ctx.dispatcher, JobRepository(ctx.db), persistent=ctx.engine,
                       targets=ctx.job_targets, emit=ctx.bus.emit, leases=ctx.leases,
                       ttl_days=ctx.settings.jobs.ttl_days,
                       ttl_check_interval_s=ctx.settings.store.ttl_check_interval_s)
    resumed = await engine.start()
    if resumed:
        log.info("resumed %d fleet jobs", resumed)
    ctx.jobs = engine
    try:
        yield
    finally:
        await engine.close()
        ctx.jobs = None


async def elves(ctx: ServerContext) -> AsyncIterator[None]:
    from ..services.elves.part import elves_part

    async for _ in elves_part(ctx):
        yield


def _ssl_context(ctx: ServerContext) -> ssl.SSLContext | None:
    h = ctx.settings.http
    if h.tls_cert is None:
        return None
    sc = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sc.load_cert_chain(h.tls_cert, h.tls_key)
    return sc


async def http(ctx: ServerContext) -> AsyncIterator[None]:
    """Serve the API.  Stopping drains: the listening socket closes and idle
    connections with it; requests still running get ``server.drain_timeout_s``
    to finish; then the dispatcher is closed, which answers every
    lightweight call still waiting with 503 ("Server is shutting down");
    requests arriving meanwhile on open connections get 503 too."""
    from ..api.app import create_app
    from .device_auth import emqx_features

    ctx.features = emqx_features(ctx)
    app = create_app(ctx)

    async def drain(app: web.Application) -> None:
        ctx.draining = True
        if ctx.endpoint is not None:
            ctx.endpoint.http.end_polls()  # HTTP devices' long polls: nothing to wait for
        timeout = ctx.settings.server.drain_timeout_s
        if not await ctx.wait_http_idle(timeout):
            log.warning("%d requests still running after %.1f s: failing their calls",
                        ctx.http_inflight, timeout)
            if ctx.engine is not None:
                await ctx.engine.close()
            await ctx.dispatcher.close()
            await ctx.wait_http_idle(5.0)

    app.on_shutdown.append(drain)
    h = ctx.settings.http
    # aiohttp's own access log is off (api/middleware.py writes ours); a
    # request it cannot parse is logged as the client's fault (server/logs.py).
    server_log = HttpServerLog(logging.getLogger("aiohttp.server"),
                               logging.INFO if h.access_log else logging.DEBUG)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0, logger=server_log)
    await runner.setup()
    sc = _ssl_context(ctx)
    site = web.TCPSite(runner, h.host, h.port, ssl_context=sc)
    await site.start()
    port = runner.addresses[0][1]
    ctx.app = app
    ctx.url = f"{'https' if sc else 'http'}://{h.host}:{port}"
    log.info("HTTP API at %s", ctx.url)
    try:
        yield
    finally:
        await runner.cleanup()
        ctx.app = None


PARTS: tuple[tuple[str, Part], ...] = (
    ("embedded", embedded),
    ("database", database),
    ("leases", leases),
    ("broker", broker),
    ("provisioning", provisioning),
    ("events", events),
    ("dispatcher", dispatcher),
    ("engine", engine),
    ("jobs", jobs),
    ("elves", elves),
    ("http", http),
)
