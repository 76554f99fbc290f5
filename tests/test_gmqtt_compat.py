"""gmqtt's private names live in transport/gmqtt_compat.py only, and that
module refuses a gmqtt release it does not know."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from fleetrpc.transport import gmqtt_compat

SRC = Path(gmqtt_compat.__file__).parent
ROOT = Path(__file__).resolve().parents[1]  # the checkout (fleetrpc may be an installed wheel)


@pytest.mark.parametrize("found", ["0.8.0", "0.8.1", "0.8.17"])
def test_supported_versions(found):
    gmqtt_compat.check_version(found)


@pytest.mark.parametrize("found", ["0.7.0", "0.6.16", "0.9.0", "1.0.0", "unknown", ""])
def test_unsupported_versions_fail_clearly(found):
    with pytest.raises(ImportError) as info:
        gmqtt_compat.check_version(found)
    message = str(info.value)
    assert f"gmqtt {found} is installed" in message
    assert "pip install 'gmqtt>=0.8.0,<0.9'" in message


def test_installed_gmqtt_is_supported():
    gmqtt_compat.check_version(gmqtt_compat.GMQTT_VERSION)


def test_pyproject_bounds_gmqtt_as_the_module_does():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [d.replace(" ", "") for d in project["dependencies"] if d.startswith("gmqtt")]
    assert specs == [gmqtt_compat.SUPPORTED_SPEC]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _gmqtt_private_names() -> set[str]:
    """Every private attribute or method name gmqtt's own source uses."""
    import gmqtt

    names: set[str] = set()
    for path in Path(gmqtt.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(node.name):
                names.add(node.name)
    return names


def _private_uses(tree: ast.AST) -> list[tuple[str, str]]:
    """(where, name) of every private attribute reached or defined: ``where``
    is the class whose body it is in, or "" at module level."""
    found = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name)
                continue
            if isinstance(child, ast.Attribute) and _private(child.attr):
                owner = child.value.id if isinstance(child.value, ast.Name) else "?"
                found.append((where, owner, child.attr))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(child.name):
                found.append((where, "def", child.name))
            visit(child, where)

    visit(tree, "")
    return found


def test_mqtt_transport_uses_no_gmqtt_private_name():
    tree = ast.parse((SRC / "mqtt.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("gmqtt."), f"import from {node.module} outside gmqtt_compat"
    gmqtt_names = _gmqtt_private_names()
    # Classes built on gmqtt's (through gmqtt_compat): nothing of gmqtt's private
    # vocabulary at all.  Elsewhere: no gmqtt private name on another object
    # (MqttTransport's own self._username is its own business).
    subclasses = {
        node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
        and any(isinstance(b, ast.Name) and b.id in ("ProtocolBase", "ClientBase") for b in node.bases)
    }
    assert subclasses == {"_FastProtocol", "_Client"}
    bad = [
        (where, owner, name) for where, owner, name in _private_uses(tree)
        if name in gmqtt_names and (where in subclasses or owner not in ("self", "def"))
    ]
    assert bad == [], "gmqtt private names outside gmqtt_compat"
