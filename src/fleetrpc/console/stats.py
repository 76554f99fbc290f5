"""The overview page's figures, read from the server's Prometheus registry.

``GET /api/console/stats`` answers one sample; the browser keeps a few
minutes of them and draws rates and latency from the differences between
samples, so the server keeps no history.

Who sees what: the system administrator sees the whole server (dispatcher
counters, pending calls, devices online, persistent calls, REST latency).
A tenant administrator sees its own tenant only: its REST RPC calls and
their latency (the ``tenant`` label of ``fleetrpc_rest_rpc_*``, read from
its own counters: collecting the registry would cost every tenant's
sample the series of all the others), its devices and how many are
online.  A customer user has no
overview.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..api.errors import ApiError
from ..api.keys import CTX, PRINCIPAL

__all__ = ["stats"]


def _samples(registry: Any) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in registry.collect():
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _value(samples: dict[str, list], name: str, **labels: str) -> float:
    total = 0.0
    for s in samples.get(name, ()):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def _buckets(samples: dict[str, list], name: str, **labels: str) -> list[list[float]]:
    """Cumulative histogram buckets ``[[le, count], ...]`` summed over the
    other labels (the browser computes quantiles over a window from them)."""
    by_le: dict[float, float] = {}
    for s in samples.get(name + "_bucket", ()):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            le = float(s.labels["le"])
            by_le[le] = by_le.get(le, 0.0) + s.value
    return [[le if le != float("inf") else None, n] for le, n in sorted(by_le.items())]


def _tenant_buckets(rpc: list) -> list[list[float]]:
    """:func:`_buckets` of one tenant's counters (summed over the kinds)."""
    by_le: dict[float, float] = {}
    for s in rpc:
        for le, n in s.latency.buckets():
            le = float(le)
            by_le[le] = by_le.get(le, 0.0) + float(n)
    return [[le if le != float("inf") else None, n] for le, n in sorted(by_le.items())]


async def stats(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    now = int(time.time() * 1000)
    if p.authority == "SYS_ADMIN":
        samples = _samples(ctx.metrics.registry)
        ev = lambda name: _value(samples, "fleetrpc_dispatcher_events_total", event=name)  # noqa: E731
        body = {
            "ts": now, "scope": "server",
            "calls": {"total": ev("calls"), "timeouts": ev("timeouts"), "offline": ev("offline_rejected"),
                      "failed": ev("timeouts") + ev("offline_rejected") + ev("queue_full") + ev("not_json")},
            "pending": _value(samples, "fleetrpc_pending_calls"),
            "devices": {"online": _value(samples, "fleetrpc_devices_online"), "total": None},
            "persistent": {"unfinished": _value(samples, "fleetrpc_persistent_unfinished"),
                           "failed": _value(samples, "fleetrpc_persistent_transitions_total", status="failed")},
            "latency": _buckets(samples, "fleetrpc_rest_rpc_duration_seconds"),
        }
    elif p.authority == "TENANT_ADMIN":
        t = p.tenant_id
        rpc = ctx.metrics.tenant_rpc(t)
        total = float(sum(n for s in rpc for n in s.by_outcome.values()))
        ok = float(sum(s.by_outcome.get("ok", 0) + s.by_outcome.get("queued", 0) for s in rpc))
        devices = await ctx.devices.count(t) if hasattr(ctx.devices, "count") else None
        hub = getattr(ctx, "console_hub", None)
        body = {
            "ts": now, "scope": "tenant",
            "calls": {"total": total, "failed": total - ok},
            "pending": None,
            "devices": {"online": hub.online_count(t) if hub is not None else None, "total": devices},
            "persistent": None,
            "latency": _tenant_buckets(rpc),
        }
    else:
        raise ApiError.forbidden()
    return web.json_response(body)
