"""The benchmarks still run: they are not part of the suite's own checks, so
an API they use can move without anything failing (``bench_persistent_engine``
imported ``fleetrpc.dispatcher`` for a while after it became
``fleetrpc.dispatch``).  Three cheap checks, none of them timed:

- every ``fleetrpc`` name any benchmark imports, at its top or inside a
  function, exists;
- every command-line benchmark answers ``--help`` (its top level runs);
- the pytest-benchmark files run each body once (``--benchmark-disable``).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def _fleetrpc_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name or None) for each fleetrpc import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "fleetrpc":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names if alias.name.split(".")[0] == "fleetrpc"]
    return found


def _uses_argparse(path: Path) -> bool:
    return "argparse" in path.read_text()


def _is_pytest_benchmark(path: Path) -> bool:
    return "def test_" in path.read_text() and "benchmark" in path.read_text()


def test_there_are_benchmarks_of_each_kind():
    assert len(SCRIPTS) >= 20
    assert any(_uses_argparse(p) for p in SCRIPTS) and any(_is_pytest_benchmark(p) for p in SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_fleetrpc_name_a_benchmark_imports_exists(path):
    missing = []
    for line, module, name in _fleetrpc_imports(path):
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{path.name}:{line}: {module} ({e})")
            continue
        if name is not None and name != "*" and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{path.name}:{line}: {module}.{name}")
    assert not missing, "\n".join(missing)


def test_every_command_line_benchmark_answers_help():
    scripts = [p for p in SCRIPTS if _uses_argparse(p)]
    assert scripts
    procs = {p.name: subprocess.Popen([sys.executable, str(p), "--help"], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, cwd=BENCHMARKS.parent)
             for p in scripts}
    failed = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0 or "usage" not in out.lower():
            failed[name] = out[-2000:]
    assert not failed, failed


def test_pytest_benchmark_bodies_run_once():
    files = [str(p) for p in SCRIPTS if _is_pytest_benchmark(p)]
    assert files
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *files, "-o", "python_files=bench_*.py", "--benchmark-disable",
         "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts="],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=BENCHMARKS.parent, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout


def test_idle_connections_over_several_nodes_on_one_port():
    """``bench_endpoint_scale.py idle --nodes K``, the way to 100,000
    connections where one process may not open that many files: K endpoint
    processes share one port and every device ends up on one of them."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_endpoint_scale.py"), "idle", "--devices", "60", "--nodes", "2",
         "--processes", "1", "--idle-seconds", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=BENCHMARKS.parent, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "idle: 60 connections on 2 nodes sharing port" in result.stdout, result.stdout
    per_node = [int(line.split()[2]) for line in result.stdout.splitlines() if line.startswith("  node ")]
    assert len(per_node) == 2 and sum(per_node) == 60, result.stdout
