"""Every module of the package imports in a fresh interpreter (import cycles
and missing imports show up here, not in a user's program), and the library
imports without any extra installed."""

from __future__ import annotations

import pkgutil
import json
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


# One interpreter imports every module as if alone.  In a fresh interpreter
# `import fleetrpc.x.y` first runs fleetrpc/__init__.py to its end (the same
# for every module), so the harness imports the package once and, before
# each module, forgets every fleetrpc module imported since: each import then
# runs exactly as it would in its own process, and a cycle or a missing
# import that an earlier import would hide shows up (an interpreter per
# module did the same in minutes; this takes seconds).
IMPORT_EACH_ALONE = """
import importlib, json, sys, traceback
PREFIX = "fleetrpc"
importlib.import_module(PREFIX)
base = {m for m in sys.modules if m == PREFIX or m.startswith(PREFIX + ".")}
failed = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m.startswith(PREFIX + ".") and m not in base]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc()
print(json.dumps(failed))
"""


@pytest.fixture(scope="module")
def import_failures() -> dict[str, str]:
    result = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, json.dumps(MODULES)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module, import_failures):
    assert module not in import_failures, import_failures[module]


def test_each_import_starts_afresh(tmp_path):
    # The harness itself, on a cycle: `a` imported alone fails (it needs a
    # name of `b`, which needs one of `a` first); imported after `b` it would
    # pass.  The harness must report it whatever came before.
    pkg = tmp_path / "fleetrpc_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from fleetrpc_probe.b import X\nY = 1\n")
    (pkg / "b.py").write_text("X = 1\nfrom fleetrpc_probe.a import Y\n")
    code = IMPORT_EACH_ALONE.replace('PREFIX = "fleetrpc"', 'PREFIX = "fleetrpc_probe"')
    result = subprocess.run([sys.executable, "-c", code, json.dumps(["fleetrpc_probe.b", "fleetrpc_probe.a"])],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    failed = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(failed) == ["fleetrpc_probe.a"] and "ImportError" in failed["fleetrpc_probe.a"]


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
