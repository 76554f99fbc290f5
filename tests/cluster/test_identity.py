"""Node identity, partitions and the cluster settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetrpc.cluster import ClusterSettings, NodeIdentity, fair_share, load_node_identity, partition_of
from fleetrpc.cluster.identity import NODE_ID_FILE, validate_node_id
from fleetrpc.errors import ValidationError


def test_generated_node_id_is_stable_and_every_start_has_its_own_boot(tmp_path):
    a = load_node_identity(tmp_path)
    b = load_node_identity(tmp_path)
    assert a.node_id == b.node_id == (tmp_path / NODE_ID_FILE).read_text().strip()
    assert a.boot != b.boot and a.instance != b.instance
    validate_node_id(a.instance)  # one topic level, and a valid node id itself


def test_configured_node_id_wins_and_is_checked(tmp_path):
    assert load_node_identity(tmp_path, "edge-7").node_id == "edge-7"
    assert not (tmp_path / NODE_ID_FILE).exists()
    for bad in ("", "a/b", "+", "#", "-x", "x" * 65, "a b", "é"):
        with pytest.raises(ValidationError, match="node id"):
            load_node_identity(tmp_path, bad)


def test_processes_starting_together_agree_on_one_generated_id(tmp_path):
    code = "import sys; from fleetrpc.cluster import load_node_identity; print(load_node_identity(sys.argv[1]).node_id)"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(ids) == 1 and ids == {(tmp_path / NODE_ID_FILE).read_text().strip()}
    assert [f for f in os.listdir(tmp_path) if f != NODE_ID_FILE] == []  # no temporary files left


def test_a_corrupt_node_id_file_is_a_clear_error(tmp_path):
    (tmp_path / NODE_ID_FILE).write_text("no/slashes\n")
    with pytest.raises(ValidationError, match=NODE_ID_FILE):
        load_node_identity(tmp_path)


@given(st.text(max_size=60), st.integers(1, 5000))
def test_partition_of_is_in_range_and_deterministic(device, partitions):
    p = partition_of(device, partitions)
    assert 0 <= p < partitions and p == partition_of(device, partitions)


def test_partition_of_is_stable_across_releases_and_even():
    # pinned: a change of hash would move every device's queue
    assert partition_of("13814000-1dd2-11b2-8080-808080808080") == 770
    counts = Counter(partition_of(f"device-{i}", 64) for i in range(64_000))
    assert min(counts.values()) > 850 and max(counts.values()) < 1150
    with pytest.raises(ValidationError):
        partition_of("x", 0)


@given(st.integers(1, 10_000), st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=20, unique=True))
def test_fair_shares_add_up_and_differ_by_at_most_one(partitions, sessions):
    live = sorted(sessions)
    shares = [fair_share(partitions, live, s) for s in live]
    assert sum(shares) == partitions and max(shares) - min(shares) <= 1


def test_settings_refuse_a_margin_that_cannot_hold():
    s = ClusterSettings()
    assert (s.lease_ttl_s, s.renew_interval, s.margin, s.claim_interval) == (5.0, 1.25, 1.0, 0.25)
    with pytest.raises(ValidationError, match="shorter than lease_ttl_s"):
        ClusterSettings(lease_ttl_s=2.0, renew_interval_s=1.5, margin_s=0.6)
    with pytest.raises(ValidationError, match="claim_interval_s"):
        ClusterSettings(claim_interval_s=2.0)


def test_identity_new_checks_the_id():
    assert NodeIdentity.new("n1").node_id == "n1"
    with pytest.raises(ValidationError):
        NodeIdentity.new("a/b")
