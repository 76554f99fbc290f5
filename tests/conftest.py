"""Shared fixtures.

``core`` parametrises a test over both variants of the compiled core
(``c`` and ``py``).  When ``FLEETRPC_REQUIRE_EXTENSIONS=1`` (the README's test
command sets it) a missing compiled core is an error, never a silent skip.
"""

from __future__ import annotations

import gc
import os
import types

import pytest

from fleetrpc import _core

pytest_plugins = ["tests.services", "tests.entities_fixtures", "tests.hangs"]

if os.environ.get("FLEETRPC_REQUIRE_EXTENSIONS") and not _core.COMPILED:
    raise RuntimeError(
        "FLEETRPC_REQUIRE_EXTENSIONS is set but the compiled core is not "
        "importable: build it with `pip install -e .`"
    )


if os.environ.get("FLEETRPC_EXPECT_DEBUG_CORE") and _core.debug_counters() is None:
    raise RuntimeError(
        "FLEETRPC_EXPECT_DEBUG_CORE is set but the core in use is not a debug build "
        f"(FLEETRPC_DEBUG=1): {_core.__file__}"
    )

# The core's own tests: after each, no wheel entry, pending call, queue state
# or queued call may be left alive (checked in a debug build of the core,
# where the counters exist; tools/dev test runs these modules on one).
CORE_TEST_MODULES = {
    "test_wheel", "test_pending", "test_queues", "test_queues_hypothesis",
    "test_timers_hypothesis", "test_codec", "test_mqttfast", "test_debug_counters",
}


def core_leaks() -> dict[str, int]:
    """The debug core's counters that are not 0 (after a collection); {} in
    a normal build, which has no counters."""
    gc.collect()
    counters = _core.debug_counters() or {}
    return {name: n for name, n in counters.items() if n}


@pytest.fixture(autouse=True)
def _core_leak_check(request):
    yield
    if request.module.__name__.rsplit(".", 1)[-1] in CORE_TEST_MODULES:
        assert core_leaks() == {}, "core objects left alive by this test"


@pytest.fixture(params=sorted(_core.VARIANTS))
def core(request):
    """Namespace of one variant's classes: core.TimingWheel, core.Codec, ..."""
    ns = types.SimpleNamespace(**_core.VARIANTS[request.param])
    ns.name = request.param
    return ns
