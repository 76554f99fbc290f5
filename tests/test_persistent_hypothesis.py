"""PersistentRpc.call_many against a model, property-based: whatever mix of
device ids, request ids and queue limits a batch holds, each device's call
is stored or refused on its own, with the error its own input earns, and no
device ever holds more than ``queue_cap`` unfinished calls."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid

from hypothesis import HealthCheck, given, settings, strategies as st

from fleetrpc.config import Settings
from fleetrpc.dispatch import Dispatcher
from fleetrpc.dispatch.options import check_request_uuid
from fleetrpc.errors import DuplicateRpcError, QueueFullError, ValidationError
from fleetrpc.rpc.persistent import PersistentRpc
from fleetrpc.store import open_store
from fleetrpc.wire import validate_id
from tests.test_dispatcher_fuzz import FakeTransport

CAP = 3
PRE = [str(uuid.UUID(int=i)) for i in (1, 2)]  # stored on d1 before the batch
NEW = [str(uuid.UUID(int=i)) for i in (7, 8, 9)]
devices = st.sampled_from(["d1", "d2", "d3", "", "a/b", "+", "#", "é-4", "x" * 300])
request_ids = st.one_of(st.none(), st.sampled_from(PRE + NEW + ["not-a-uuid", NEW[0].upper()]))


def _valid(check, value) -> bool:
    try:
        check(value)
    except ValidationError:
        return False
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(devices, request_ids), max_size=12), group_commit=st.booleans())
def test_call_many_refuses_each_call_only_for_its_own_reason(batch, group_commit):
    async def scenario() -> None:
        tmp = tempfile.mkdtemp(prefix="callmany-")
        d = Dispatcher(Settings(node_id="cm", min_timeout_ms=0, presence=False, ttl_enabled=False),
                       transport=FakeTransport())
        await d.start()
        store = await open_store(f"sqlite:///{tmp}/rpc.db", group_commit=group_commit)
        engine = PersistentRpc(d, store, queue_cap=CAP)
        await engine.start()
        try:
            for rpc_id in PRE:
                await engine.call("d1", "m", request_uuid=rpc_id, timeout_ms=60_000)
            out = await engine.call_many([dev for dev, _ in batch], "m", {"k": 1},
                                         request_uuids=[rid for _, rid in batch], timeout_ms=60_000)
            assert len(out) == len(batch)
            held = {"d1": len(PRE)}  # calls past the queue check, per device (the model)
            taken_ids = set(PRE)
            for (dev, rid), got in zip(batch, out):
                if not _valid(lambda v: validate_id("device", v), dev) or (
                        rid is not None and not _valid(check_request_uuid, rid)):
                    assert isinstance(got, ValidationError), (dev, rid, got)
                    continue
                rid = None if rid is None else check_request_uuid(rid)
                if held.get(dev, 0) >= CAP:
                    assert isinstance(got, QueueFullError), (dev, rid, got)
                    continue
                held[dev] = held.get(dev, 0) + 1
                if rid in taken_ids:
                    assert isinstance(got, DuplicateRpcError), (dev, rid, got)
                    continue
                assert type(got) is str and (rid is None or got == rid), (dev, rid, got)
                taken_ids.add(got)
                record = await engine.get(got)
                assert record.device_id == dev and record.params == {"k": 1}
            for dev in {dev for dev, _ in batch if _valid(lambda v: validate_id("device", v), dev)} | {"d1"}:
                assert (await engine.list_by_device(dev)).total_elements <= CAP
        finally:
            await engine.close()
            await d.close()
            await store.close()
            shutil.rmtree(tmp, ignore_errors=True)

    asyncio.run(scenario())
