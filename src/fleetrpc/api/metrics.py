"""Observability: Prometheus ``/metrics``, ``/healthz``, ``/readyz``, the
access log.

One :class:`Metrics` (and one prometheus-client registry) per server, so
two servers in one process (tests) never share counters.  What every
request updates (requests by route and status, their latency, REST RPCs by
kind and outcome) is counted in plain ints on the event loop's thread --
prometheus-client's own ``Counter.inc`` takes a lock and its
``Histogram.observe`` walks the buckets in Python, several microseconds a
request -- and handed to the registry at scrape time by a collector, as
prometheus-client's "custom collector" pattern intends.  Scrapes run on the
same loop, so nothing is read half-written.  What the dispatcher, the
engine and the stores already count is read at scrape time too.
"""

from __future__ import annotations

import hmac
import logging
import time
from bisect import bisect_left
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from .errors import ErrorCode, error_response
from .keys import CTX

__all__ = ["HttpStats", "LoopHistogram", "Metrics", "RpcStats", "route_name", "setup"]

log = logging.getLogger("fleetrpc.access")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LE = [floatToGoString(b) for b in _LATENCY_BUCKETS] + ["+Inf"]


class LoopHistogram:
    """A histogram child updated from the event loop only: a count per
    bucket (``bisect`` in C finds it) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative, as Prometheus wants them."""
        out, total = [], 0
        for le, n in zip(_LE, self.counts):
            total += n
            out.append((le, total))
        return out


class HttpStats:
    """One route and method: requests by status, and the route's latency
    (shared by its methods).  The request middleware keeps one per route."""

    __slots__ = ("route", "method", "by_status", "latency")

    def __init__(self, route: str, method: str, latency: LoopHistogram) -> None:
        self.route = route
        self.method = method
        self.by_status: dict[int, int] = {}
        self.latency = latency

    def done(self, status: int, seconds: float) -> None:
        by_status = self.by_status
        by_status[status] = by_status.get(status, 0) + 1
        self.latency.observe(seconds)


class RpcStats:
    """REST RPCs of one kind (``oneway``, ``twoway``, ``persistent``) and
    one tenant: calls by outcome and their latency (the console's overview
    shows a tenant administrator its own)."""

    __slots__ = ("kind", "tenant", "by_outcome", "latency")

    def __init__(self, kind: str, tenant: str = "") -> None:
        self.kind = kind
        self.tenant = tenant
        self.by_outcome: dict[str, int] = {}
        self.latency = LoopHistogram()

    def done(self, outcome: str, started: float) -> None:
        """Count one call that began at ``started`` (``time.perf_counter()``)."""
        by_outcome = self.by_outcome
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
        self.latency.observe(time.perf_counter() - started)


class Metrics:
    """The server's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.store_write = Histogram(
            "fleetrpc_store_write_duration_seconds", "Latency of one store write transaction",
            registry=r, buckets=_LATENCY_BUCKETS)
        self._http: dict[tuple[str, str], HttpStats] = {}
        self._http_latency: dict[str, LoopHistogram] = {}
        self._rpc: dict[tuple[str, str], RpcStats] = {}
        self._rpc_of_tenant: dict[str, list[RpcStats]] = {}
        r.register(_RequestCollector(self))

    def http_stats(self, route: str, method: str) -> HttpStats:
        """The counters of ``route`` (its pattern, a bounded label) and ``method``."""
        stats = self._http.get((route, method))
        if stats is None:
            latency = self._http_latency.get(route)
            if latency is None:
                latency = self._http_latency[route] = LoopHistogram()
            stats = self._http[route, method] = HttpStats(route, method, latency)
        return stats

    def rpc_stats(self, kind: str, tenant: str = "") -> RpcStats:
        stats = self._rpc.get((kind, tenant))
        if stats is None:
            stats = self._rpc[kind, tenant] = RpcStats(kind, tenant)
            self._rpc_of_tenant.setdefault(tenant, []).append(stats)
        return stats

    def tenant_rpc(self, tenant: str) -> list[RpcStats]:
        """The tenant's REST RPC counters, one per kind (read without the
        other tenants': the console's overview asks every few seconds)."""
        return self._rpc_of_tenant.get(tenant, [])

    def rpc_done(self, kind: str, outcome: str, started: float, tenant: str = "") -> None:
        self.rpc_stats(kind, tenant).done(outcome, started)

    def http_done(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_stats(route, method).done(status, seconds)

    def watch(self, ctx: Any) -> None:
        """Read the server's parts at scrape time."""
        self.registry.register(_PartsCollector(ctx))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RequestCollector:
    """The loop-side counters of :class:`Metrics`, as Prometheus families."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        m = self.metrics
        c = CounterMetricFamily("fleetrpc_http_requests", "HTTP requests by route, method and status",
                                labels=["route", "method", "status"])
        for stats in list(m._http.values()):
            for status, n in list(stats.by_status.items()):
                c.add_metric([stats.route, stats.method, str(status)], n)
        yield c
        h = HistogramMetricFamily("fleetrpc_http_request_duration_seconds", "HTTP request latency by route",
                                  labels=["route"])
        for route, hist in list(m._http_latency.items()):
            h.add_metric([route], hist.buckets(), hist.sum)
        yield h
        c = CounterMetricFamily("fleetrpc_rest_rpc_calls",
                                "RPCs made through the REST API by kind, outcome and tenant",
                                labels=["kind", "outcome", "tenant"])
        for stats in list(m._rpc.values()):
            for outcome, n in list(stats.by_outcome.items()):
                c.add_metric([stats.kind, outcome, stats.tenant], n)
        yield c
        h = HistogramMetricFamily("fleetrpc_rest_rpc_duration_seconds",
                                  "Latency of RPCs made through the REST API by kind and tenant",
                                  labels=["kind", "tenant"])
        for stats in list(m._rpc.values()):
            h.add_metric([stats.kind, stats.tenant], stats.latency.buckets(), stats.latency.sum)
        yield h


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
            yield GaugeMetricFamily("fleetrpc_pending_calls", "Calls awaiting completion in the dispatcher",
                                    value=len(d._pending) if d._pending is not None else 0)
            yield GaugeMetricFamily("fleetrpc_inflight_calls", "Requests sent and awaiting a reply or ack",
                                    value=d._inflight)
            yield GaugeMetricFamily("fleetrpc_held_calls", "Calls queued for their device, not yet sent",
                                    value=len(d._held))
            yield GaugeMetricFamily("fleetrpc_devices_online", "Devices whose presence says online",
                                    value=len(d.online_devices))
            yield GaugeMetricFamily(
                "fleetrpc_presence_devices",
                "Devices whose presence or heartbeat is kept (at most dispatch.presence_max_devices)",
                value=len(d.presence),
            )
            c = CounterMetricFamily("fleetrpc_dispatcher_events", "Dispatcher counters", labels=["event"])
            for name, value in d.stats.as_dict().items():
                c.add_metric([name], value)
            yield c
        engine = ctx.engine
        if engine is not None:
            yield GaugeMetricFamily("fleetrpc_persistent_unfinished", "Persistent calls not finished yet",
                                    value=engine.unfinished)
            c = CounterMetricFamily("fleetrpc_persistent_transitions",
                                    "Persistent calls by status reached", labels=["status"])
            for name, value in engine.stats.as_dict().items():
                c.add_metric([name], value)
            yield c
        bus = ctx.bus
        if bus is not None:
            yield CounterMetricFamily("fleetrpc_events_dropped", "Events dropped by full sink buffers",
                                      value=bus.dropped)
            g = GaugeMetricFamily("fleetrpc_event_queue_depth", "Events waiting per sink", labels=["sink"])
            b = GaugeMetricFamily("fleetrpc_event_queue_bytes", "Bytes of events waiting per sink (as JSON)",
                                  labels=["sink"])
            for sink in bus.sinks:
                g.add_metric([sink.name], sink.pending)
                b.add_metric([sink.name], sink.pending_bytes)
            yield g
            yield b


def route_name(request: web.Request) -> str:
    """The route's pattern (``/api/rpc/twoway/{deviceId}``): bounded label values."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


#: The refusal of /metrics (401, ThingsBoard's JSON error, errorCode 10).
METRICS_REFUSED = "metrics need Authorization: Bearer <http.metrics_token>"


def _bearer_is(header: str, token: str) -> bool:
    """Whether ``header`` is ``Bearer <token>``, compared in constant time.
    aiohttp decodes a header's bytes as UTF-8 with ``surrogateescape``:
    encoding it back the same way gives those bytes, whatever they are (a
    plain ``encode()`` raised on non-UTF-8 bytes: a 500)."""
    try:
        given = header.encode("utf-8", "surrogateescape")
    except UnicodeError:  # a lone surrogate no decoding made: not the token
        return False
    return hmac.compare_digest(given, b"Bearer " + token.encode())


async def metrics_page(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    token = ctx.settings.http.metrics_token
    if token is not None:
        if not _bearer_is(request.headers.get("Authorization", ""), token):
            refused = error_response(401, METRICS_REFUSED, ErrorCode.AUTHENTICATION)
            refused.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return refused
    body = ctx.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    checks = await ctx.readiness()
    ok = all(checks.values())
    body: dict[str, Any] = {"status": "ready" if ok else "not ready", "checks": checks}
    cluster = ctx.cluster_status() if hasattr(ctx, "cluster_status") else None
    if cluster is not None:
        body["cluster"] = cluster
    return web.json_response(body, status=200 if ok else 503)


def setup(app: web.Application, ctx: Any) -> None:
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
