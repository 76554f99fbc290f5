"""Who this process is in a cluster: a node id and a boot nonce.

The **node id** names a node across restarts (``fleetrpc serve --node-id``,
or generated once and kept in the data directory), so that logs, metrics
and ``/readyz`` speak of the same node before and after a restart.

The **boot nonce** is new at every process start.  Two processes never
share an :attr:`NodeIdentity.instance` even when they share a node id (a
copied data directory, a restart while the old process is still draining):
the dispatcher's request ids and reply topics, and the lease sessions of
:mod:`fleetrpc.cluster.leases`, are per instance, so a reply or a lease of
one process can never be taken for another's.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

import msgspec

from ..errors import ValidationError

__all__ = ["NodeIdentity", "NODE_ID_FILE", "generate_node_id", "load_node_identity", "new_boot_nonce",
           "validate_node_id"]

#: The file in the data directory that keeps a generated node id.
NODE_ID_FILE = "node-id"

# One MQTT topic level that also reads well in logs and SQL: letters,
# digits, '_', '-', '.', at most 64 characters (an instance adds 13), so
# that "<node>.<boot>" stays far below the 128-byte id limit of the wire.
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BOOT_BYTES = 6  # 48 random bits: 12 hex digits


def validate_node_id(value: object) -> str:
    """Check a node id (1-64 of ``A-Z a-z 0-9 _ . -``, starting with a letter
    or digit); return it, or raise :class:`ValidationError` saying why."""
    if not isinstance(value, str):
        raise ValidationError(f"node id must be a string, not {type(value).__name__}")
    if not _NODE_ID.match(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ValidationError(
            f"node id {shown!r} is not 1-64 characters of letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )
    return value


def new_boot_nonce() -> str:
    """A fresh random nonce for one process start (12 hex digits)."""
    return secrets.token_hex(_BOOT_BYTES)


def generate_node_id() -> str:
    """A new node id: the short host name and 6 random hex digits."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:40].strip("-_") or "node"
    if not host[0].isalnum():
        host = "node-" + host
    return f"{host}-{secrets.token_hex(3)}"


class NodeIdentity(msgspec.Struct, frozen=True, gc=False):
    """A node id and the boot nonce of this process start."""

    node_id: str
    boot: str

    @property
    def instance(self) -> str:
        """``<node_id>.<boot>``: unique to this process, one topic level."""
        return f"{self.node_id}.{self.boot}"

    @classmethod
    def new(cls, node_id: str) -> NodeIdentity:
        """``node_id`` (checked) with a fresh boot nonce."""
        return cls(validate_node_id(node_id), new_boot_nonce())


def load_node_identity(data_dir: str | os.PathLike[str] | None, node_id: str | None = None) -> NodeIdentity:
    """This process's identity.

    ``node_id`` when given (a setting, ``--node-id``); otherwise the id kept
    in ``<data_dir>/node-id``, generated and written there on the first
    start.  Several processes starting at once on one fresh data directory
    agree on one id (the file is created with a hard link, which fails when
    it exists).  With neither ``node_id`` nor ``data_dir`` the id is
    generated for this process only.  The boot nonce is always new.
    """
    if node_id is not None:
        return NodeIdentity.new(node_id)
    if data_dir is None:
        return NodeIdentity.new(generate_node_id())
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / NODE_ID_FILE
    if not path.exists():
        candidate = generate_node_id()
        tmp = directory / f".{NODE_ID_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(candidate + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic, and never replaces another process's id
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    text = path.read_text(encoding="utf-8").strip()
    try:
        return NodeIdentity.new(text)
    except ValidationError as e:
        raise ValidationError(f"{path}: {e}") from None
