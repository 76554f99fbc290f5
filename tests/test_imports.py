"""Every module of the package imports in a fresh interpreter (import cycles
and missing imports show up here, not in a user's program), and the library
imports without any extra installed."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap

import pytest

import fleetrpc

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(fleetrpc.__path__, "fleetrpc.")
)

# What the named extras bring (pyproject.toml); the library must do without.
EXTRA_PACKAGES = ["asyncpg", "aiosqlite", "click", "rich", "aiohttp", "amqtt", "psutil", "jwt",
                  "prometheus_client", "bcrypt", "argon2", "croniter", "playwright"]


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_every_module_is_found():
    assert "fleetrpc._core.codec_py" in MODULES and "fleetrpc.cli" in MODULES
    assert len(MODULES) > 30


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module):
    # Its own interpreter: nothing imported before it can hide a cycle.
    result = run(f"import {module}")
    assert result.returncode == 0, result.stderr


BLOCK_EXTRAS = f"""
import sys
class _NoExtras:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRA_PACKAGES!r}:
            raise ImportError(f"{{name}} is an extra (blocked by the test)")
        return None
sys.meta_path.insert(0, _NoExtras())
"""


def test_library_imports_without_extras():
    result = run(BLOCK_EXTRAS + textwrap.dedent("""
        import fleetrpc
        from fleetrpc import Dispatcher, Settings, DeviceClient, PersistentRpc, EventBus, open_store
        from fleetrpc.transport.mqtt import MqttTransport
        import fleetrpc.store, fleetrpc._core
        extras = [m for m in sys.modules if m.split(".")[0] in %r]
        assert not extras, extras
    """ % (EXTRA_PACKAGES,)))
    assert result.returncode == 0, result.stderr


def test_cli_without_its_extra_says_which_to_install():
    result = run(BLOCK_EXTRAS + "import fleetrpc.cli")
    assert result.returncode != 0
    assert "the fleetrpc command needs its 'cli' extra: pip install 'fleetrpc[cli]'" in result.stderr
