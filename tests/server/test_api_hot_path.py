"""What the RPC path does per request to stay cheap, checked for staying
right: the device cache (through real HTTP: a change of owner or a deletion
is seen by the very next call), the UUID fast path, the loop-side
histograms, the per-route middleware facts."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from fleetrpc.api.errors import ApiError
from fleetrpc.api.metrics import _LATENCY_BUCKETS, LoopHistogram, Metrics
from fleetrpc.api.middleware import _under_api
from fleetrpc.api.thingsboard.access import DeviceCache, check_uuid

V2 = "/api/rpc"
FORBIDDEN = (403, b"You don't have permission to perform this operation!")
NOT_FOUND = (404, b"Device with requested id wasn't found!")
OFFLINE = (504, b"")  # access granted; the device is not connected (offline_fail_fast)


# -- the device cache through real HTTP ---------------------------------------------------


@pytest.mark.mqtt
async def test_rpc_access_follows_device_changes_at_once(start_server, world):
    async with start_server(rpc={"offline_fail_fast": True}) as (server, api):
        cache = server.ctx.device_cache
        tenant = await api.login(world.tenant.email)
        customer = await api.login(world.customer.email)      # customer 1
        customer2 = await api.login(world.customer2.email)    # customer 2
        call = {"method": "echo"}
        dev = world.dev_c1.id

        async def rpc(token: str, device_id: str = dev) -> tuple[int, bytes]:
            return (await api.request("POST", f"{V2}/twoway/{device_id}", token, json=call))[:2]

        for _ in range(3):
            assert await rpc(customer) == OFFLINE
        assert cache.hits >= 2  # the repeated calls did not ask the database
        assert await rpc(customer2) == FORBIDDEN

        # Reassigned to customer 2: customer 1 is refused on the next call.
        status, _, _ = await api.request("POST", f"/api/customer/{world.c2}/device/{dev}", tenant)
        assert status == 200
        assert await rpc(customer) == FORBIDDEN
        assert await rpc(customer2) == OFFLINE
        # Unassigned: neither customer may call it, the tenant administrator may.
        status, _, _ = await api.request("DELETE", f"/api/customer/device/{dev}", tenant)
        assert status == 200
        assert await rpc(customer2) == FORBIDDEN
        assert await rpc(tenant) == OFFLINE
        # Deleted: not found at once.
        status, _, _ = await api.request("DELETE", f"/api/device/{dev}", tenant)
        assert status == 200
        assert await rpc(tenant) == NOT_FOUND


# -- the device cache on its own ------------------------------------------------------------


class _Device:
    def __init__(self, id: str, tenant_id: str, customer_id: str = "c") -> None:
        self.id, self.tenant_id, self.customer_id = id, tenant_id, customer_id


class _Change:
    def __init__(self, device: _Device) -> None:
        self.device = device


class _Repo:
    """A devices repository that counts its queries; ``gate`` holds them."""

    def __init__(self) -> None:
        self.devices: dict[str, _Device] = {}
        self.queries = 0
        self.listeners: list = []
        self.gate: asyncio.Event | None = None

    def add_listener(self, fn, other_nodes: bool = False) -> None:
        self.listeners.append(fn)  # (one node: there are no others)

    def remove_listener(self, fn) -> None:
        self.listeners.remove(fn)

    async def get(self, tenant_id: str, device_id: str):
        self.queries += 1
        if self.gate is not None:
            await self.gate.wait()
        d = self.devices.get(device_id)
        return d if d is not None and d.tenant_id == tenant_id else None

    def change(self, device: _Device) -> None:
        for fn in self.listeners:
            fn([_Change(device)])


class _Ctx:
    def __init__(self, repo: _Repo) -> None:
        self.devices = repo


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_cache_hits_expiry_tenants_and_unknown_ids():
    repo, clock = _Repo(), _Clock()
    repo.devices["d1"] = _Device("d1", "t1")
    cache = DeviceCache(_Ctx(repo), ttl=5.0, clock=clock)
    assert (await cache.get("t1", "d1")).id == "d1"
    assert (await cache.get("t1", "d1")).id == "d1"
    assert repo.queries == 1
    # another tenant's hit is "not found", as the repository answers
    assert await cache.get("t2", "d1") is None
    assert repo.queries == 1
    # unknown ids are asked every time (never kept)
    assert await cache.get("t1", "nope") is None
    assert await cache.get("t1", "nope") is None
    assert repo.queries == 3
    # past the time to live: asked again (another node may have changed it)
    clock.now += 5.0
    await cache.get("t1", "d1")
    assert repo.queries == 4


async def test_cache_forgets_changed_devices_and_lookups_raced_by_a_change():
    repo = _Repo()
    d1 = repo.devices["d1"] = _Device("d1", "t1", "c1")
    cache = DeviceCache(_Ctx(repo))
    await cache.get("t1", "d1")
    assert len(repo.listeners) == 1
    repo.devices["d1"] = _Device("d1", "t1", "c2")
    repo.change(d1)
    assert (await cache.get("t1", "d1")).customer_id == "c2"
    # a lookup in flight while the device changes is answered but not kept
    repo.change(d1)
    repo.gate = asyncio.Event()
    lookup = asyncio.ensure_future(cache.get("t1", "d1"))
    await asyncio.sleep(0)  # the lookup is now waiting on the repository
    repo.change(d1)
    repo.gate.set()
    await lookup
    n = repo.queries
    await cache.get("t1", "d1")
    assert repo.queries == n + 1
    cache.close()
    assert repo.listeners == []


async def test_cache_is_bounded():
    repo = _Repo()
    for i in range(10):
        repo.devices[f"d{i}"] = _Device(f"d{i}", "t1")
    cache = DeviceCache(_Ctx(repo), size=4)
    for i in range(10):
        await cache.get("t1", f"d{i}")
    assert len(cache._entries) == 4
    await cache.get("t1", "d9")
    assert repo.queries == 10


# -- check_uuid's fast path agrees with uuid.UUID ---------------------------------------------


def _reference(value: str) -> str | None:
    try:
        if len(value) > 36:
            raise ValueError
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _check(value: str) -> str | None:
    try:
        return check_uuid(value)
    except ApiError as exc:
        assert exc.status == 400 and exc.message.startswith("Invalid UUID string: ")
        return None


uuid_like = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(str).flatmap(lambda s: st.integers(0, 35).map(lambda i: s[:i] + "g" + s[i + 1:])),
    st.text(alphabet="0123456789abcdefABCDEF-{}x", max_size=40),
    st.text(max_size=40),
)


@settings(max_examples=500)
@given(uuid_like)
def test_check_uuid_agrees_with_uuid_module(value):
    assert _check(value) == _reference(value)


# -- the loop-side histograms count as prometheus-client's ------------------------------------


@settings(max_examples=200)
@given(st.lists(st.one_of(st.sampled_from(_LATENCY_BUCKETS), st.floats(0, 100, allow_nan=False)), max_size=50))
def test_loop_histogram_matches_prometheus_client(values):
    reference = Histogram("h", "h", registry=CollectorRegistry(), buckets=_LATENCY_BUCKETS)
    ours = LoopHistogram()
    for v in values:
        reference.observe(v)
        ours.observe(v)
    samples = {(s.name, s.labels.get("le")): s.value for s in reference.collect()[0].samples}
    for le, count in ours.buckets():
        assert samples[("h_bucket", le)] == count
    assert samples[("h_sum", None)] == pytest.approx(ours.sum)


def test_metrics_exposition():
    m = Metrics()
    m.http_stats("/api/rpc/twoway/{deviceId}", "POST").done(200, 0.002)
    m.http_done("/api/rpc/twoway/{deviceId}", "POST", 200, 0.004)
    m.rpc_stats("twoway").by_outcome["ok"] = 0
    m.rpc_done("twoway", "ok", 0.0)
    text = m.render().decode()
    assert 'fleetrpc_http_requests_total{method="POST",route="/api/rpc/twoway/{deviceId}",status="200"} 2.0' in text
    assert 'fleetrpc_http_request_duration_seconds_bucket{le="0.005",route="/api/rpc/twoway/{deviceId}"} 2.0' in text
    assert 'fleetrpc_http_request_duration_seconds_bucket{le="0.001",route="/api/rpc/twoway/{deviceId}"} 0.0' in text
    assert 'fleetrpc_rest_rpc_calls_total{kind="twoway",outcome="ok",tenant=""} 1.0' in text
    assert 'fleetrpc_rest_rpc_duration_seconds_count{kind="twoway",tenant=""} 1.0' in text


# -- which routes are under /api, decided once per route ----------------------------------------


@pytest.mark.parametrize("pattern, expected", [
    ("/api/rpc/twoway/{deviceId}", True),
    ("/api/auth/login", True),
    ("/metrics", False),
    ("/healthz", False),
    ("/apix/{x}", False),
    ("/{tail}", None),
    ("/api", False),
    ("/ap{x}", None),
])
def test_under_api(pattern, expected):
    assert _under_api(pattern) is expected
