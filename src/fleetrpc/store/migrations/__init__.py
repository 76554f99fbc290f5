"""Versioned schema migrations, one folder per backend.

``<backend>/NNNN_name.sql`` is migration number NNNN.  Numbers are distinct
and applied in rising order; a gap is allowed (each part of the server owns a
range of numbers, so parts developed side by side never collide), and a
store applies every known migration it has not recorded yet.  A migration is a list
of statements, each ending with ``;`` at the end of a line (no ``;`` at a
line end inside a statement); ``--`` comments are allowed.  The stores apply
each pending migration in its own transaction together with its row in the
``schema_version`` table, so a migration is applied entirely or not at all.
Never edit a released migration: add the next number.
"""

from __future__ import annotations

import re
from importlib import resources

import msgspec

__all__ = ["Migration", "load"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_END = re.compile(r";[ \t]*(?:\r?\n|$)")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    statements: tuple[str, ...]


def _split(sql: str) -> tuple[str, ...]:
    out = []
    for chunk in _END.split(sql):
        body = "\n".join(
            line for line in chunk.splitlines() if line.strip() and not line.strip().startswith("--")
        )
        if body.strip():
            out.append(body.strip())
    return tuple(out)


def load(backend: str) -> list[Migration]:
    """Every migration of ``backend`` ("sqlite" or "postgresql"), in order."""
    found = []
    for entry in resources.files(__name__).joinpath(backend).iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), _split(entry.read_text("utf-8"))))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"{backend} migrations must have distinct numbers: {versions}")
    return found

#: Which part of fleetrpc owns which migration numbers (the rule of the
#: module docstring): the persistent-RPC table 1-99, entities (tenants,
#: customers, users, devices) 100-199, fleet jobs 200-299, Elves 300-399,
#: cluster leases 400-499.
OWNERS = {range(1, 100): "rpc", range(100, 200): "entities", range(200, 300): "jobs",
          range(300, 400): "elves", range(400, 500): "cluster"}
