"""Observability: Prometheus ``/metrics``, ``/healthz``, ``/readyz``, the
access log.

One :class:`Metrics` (and one prometheus-client registry) per server, so
two servers in one process (tests) never share counters.  What the hot path
updates is kept cheap: label children are looked up once and cached; what
the dispatcher, the engine and the stores already count is read at scrape
time by a collector instead of being counted twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .keys import CTX

__all__ = ["Metrics", "metrics_middleware", "setup"]

log = logging.getLogger("fleetrpc.access")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The server's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "fleetrpc_http_requests", "HTTP requests by route, method and status",
            ("route", "method", "status"), registry=r)
        self.http_latency = Histogram(
            "fleetrpc_http_request_duration_seconds", "HTTP request latency by route",
            ("route",), registry=r, buckets=_LATENCY_BUCKETS)
        self.rpc_calls = Counter(
            "fleetrpc_rest_rpc_calls", "RPCs made through the REST API by kind and outcome",
            ("kind", "outcome"), registry=r)
        self.rpc_latency = Histogram(
            "fleetrpc_rest_rpc_duration_seconds", "Latency of RPCs made through the REST API by kind",
            ("kind",), registry=r, buckets=_LATENCY_BUCKETS)
        self.store_write = Histogram(
            "fleetrpc_store_write_duration_seconds", "Latency of one store write transaction",
            registry=r, buckets=_LATENCY_BUCKETS)
        self._rpc_children: dict[tuple[str, str], Any] = {}
        self._rpc_latency_children: dict[str, Any] = {}
        self._http_children: dict[tuple[str, str, int], Any] = {}
        self._http_latency_children: dict[str, Any] = {}

    def rpc_done(self, kind: str, outcome: str, started: float) -> None:
        key = (kind, outcome)
        child = self._rpc_children.get(key)
        if child is None:
            child = self._rpc_children[key] = self.rpc_calls.labels(kind, outcome)
        child.inc()
        lat = self._rpc_latency_children.get(kind)
        if lat is None:
            lat = self._rpc_latency_children[kind] = self.rpc_latency.labels(kind)
        lat.observe(time.perf_counter() - started)

    def http_done(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self.http_requests.labels(route, method, str(status))
        child.inc()
        lat = self._http_latency_children.get(route)
        if lat is None:
            lat = self._http_latency_children[route] = self.http_latency.labels(route)
        lat.observe(seconds)

    def watch(self, ctx: Any) -> None:
        """Read the server's parts at scrape time."""
        self.registry.register(_PartsCollector(ctx))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PartsCollector:
    """Gauges and counters that the dispatcher, the engine, the stores and
    the event bus keep themselves."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def describe(self):
        return []

    def collect(self):
        ctx = self.ctx
        d = ctx.dispatcher
        if d is not None:
            g = GaugeMetricFamily("fleetrpc_pending_calls", "Calls awaiting completion in the dispatcher")
            g.add_metric([], len(d._pending) if d._pending is not None else 0)
            yield g
            g = GaugeMetricFamily("fleetrpc_inflight_calls", "Requests sent and awaiting a reply or ack")
            g.add_metric([], d._inflight)
            yield g
            g = GaugeMetricFamily("fleetrpc_held_calls", "Calls queued for their device, not yet sent")
            g.add_metric([], len(d._held))
            yield g
            g = GaugeMetricFamily("fleetrpc_devices_online", "Devices whose presence says online")
            g.add_metric([], len(d.online_devices))
            yield g
            g = GaugeMetricFamily("fleetrpc_presence_devices",
                                  "Devices whose presence or heartbeat is kept (at most dispatch.presence_max_devices)")
            g.add_metric([], len(d.presence))
            yield g
            c = CounterMetricFamily("fleetrpc_dispatcher_events", "Dispatcher counters", labels=["event"])
            for name, value in d.stats.as_dict().items():
                c.add_metric([name], value)
            yield c
        engine = ctx.engine
        if engine is not None:
            g = GaugeMetricFamily("fleetrpc_persistent_unfinished", "Persistent calls not finished yet")
            g.add_metric([], engine.unfinished)
            yield g
            c = CounterMetricFamily("fleetrpc_persistent_transitions",
                                    "Persistent calls by status reached", labels=["status"])
            for name, value in engine.stats.as_dict().items():
                c.add_metric([name], value)
            yield c
        bus = ctx.bus
        if bus is not None:
            c = CounterMetricFamily("fleetrpc_events_dropped", "Events dropped by full sink buffers")
            c.add_metric([], bus.dropped)
            yield c
            g = GaugeMetricFamily("fleetrpc_event_queue_depth", "Events waiting per sink", labels=["sink"])
            for sink in bus.sinks:
                g.add_metric([sink.name], len(sink._queue))
            yield g


def route_name(request: web.Request) -> str:
    """The route's pattern (``/api/rpc/twoway/{deviceId}``): bounded label values."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler):
    """Counts and times every request; keeps the in-flight count the drain
    waits on; answers 503 once the server is draining; writes the access log."""
    ctx = request.app[CTX]
    if ctx.draining:
        return web.Response(status=503, text="Server is shutting down", headers={"Connection": "close"})
    ctx.http_started()
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        ctx.http_finished()
        seconds = time.perf_counter() - started
        ctx.metrics.http_done(route_name(request), request.method, status, seconds)
        if ctx.settings.http.access_log:
            p = request.get("principal")
            log.info("%s %s %d %.1fms", request.method, request.path_qs[:200], status, seconds * 1000,
                     extra={"remote": request.remote, "status": status, "user": p.user_id if p else None,
                            "ms": round(seconds * 1000, 2)})


async def metrics_page(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = ctx.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    checks = await ctx.readiness()
    ok = all(checks.values())
    return web.json_response({"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503)


def setup(app: web.Application, ctx: Any) -> None:
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
