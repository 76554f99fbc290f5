"""Shared fixtures.

``core`` parametrises a test over both variants of the compiled core
(``c`` and ``py``).  When ``FLEETRPC_REQUIRE_EXTENSIONS=1`` (the README's test
command sets it) a missing compiled core is an error, never a silent skip.
"""

from __future__ import annotations

import os
import types

import pytest

from fleetrpc import _core

pytest_plugins = ["tests.services", "tests.entities_fixtures"]

if os.environ.get("FLEETRPC_REQUIRE_EXTENSIONS") and not _core.COMPILED:
    raise RuntimeError(
        "FLEETRPC_REQUIRE_EXTENSIONS is set but the compiled core is not "
        "importable: build it with `pip install -e .`"
    )


@pytest.fixture(params=sorted(_core.VARIANTS))
def core(request):
    """Namespace of one variant's classes: core.TimingWheel, core.Codec, ..."""
    ns = types.SimpleNamespace(**_core.VARIANTS[request.param])
    ns.name = request.param
    return ns
