"""The persistent-RPC state machine: the guard against an explicit table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetrpc.errors import InvalidTransitionError
from fleetrpc.rpc.status import (
    RPC_DELETED,
    TERMINAL,
    TO_SERVER_RPC_REQUEST,
    UNFINISHED,
    RpcStatus,
    allowed_targets,
    check_transition,
    event_type,
    is_allowed,
    is_terminal,
)

# The lifecycle written out by hand, independently of status.py:
# (old, new) -> "both" | "twoway" (legal for two-way calls only).
# Every pair not listed is illegal.
Q, S, D, OK, T, E, F, X = (
    "QUEUED",
    "SENT",
    "DELIVERED",
    "SUCCESSFUL",
    "TIMEOUT",
    "EXPIRED",
    "FAILED",
    "DELETED",
)
TABLE = {
    (Q, S): "both",
    (Q, E): "both",
    (Q, X): "both",
    (Q, F): "both",
    (S, D): "both",
    (S, OK): "twoway",  # a reply without an ack
    (S, T): "both",
    (S, E): "both",
    (S, F): "both",
    (S, X): "both",
    (D, OK): "twoway",  # a one-way call ends at DELIVERED
    (D, T): "twoway",
    (D, E): "twoway",
    (D, F): "twoway",
    (D, X): "both",
    (T, S): "both",  # retry
    (T, Q): "both",  # retry while the device is offline
    (T, F): "both",
    (T, E): "both",
    (T, X): "both",
    (OK, X): "both",
    (E, X): "both",
    (F, X): "both",
}
ALL = [s.value for s in RpcStatus]


def expected_legal(old: str, new: str, oneway: bool) -> bool:
    kind = TABLE.get((old, new))
    return kind == "both" or (kind == "twoway" and not oneway)


def test_status_values_are_thingsboards_names():
    assert ALL == [Q, S, D, OK, T, E, F, X]
    assert RpcStatus("SENT") is RpcStatus.SENT
    assert str(RpcStatus.SENT) == "SENT"
    assert isinstance(RpcStatus.SENT, str) and RpcStatus.SENT == "SENT"


@pytest.mark.parametrize("oneway", [False, True], ids=["twoway", "oneway"])
@pytest.mark.parametrize("new", ALL)
@pytest.mark.parametrize("old", ALL)
def test_every_pair_against_the_table(old, new, oneway):
    legal = expected_legal(old, new, oneway)
    assert is_allowed(old, new, oneway=oneway) is legal
    assert is_allowed(RpcStatus(old), RpcStatus(new), oneway=oneway) is legal
    assert (RpcStatus(new) in allowed_targets(RpcStatus(old), oneway=oneway)) is legal
    if legal:
        check_transition(old, new, oneway=oneway)
    else:
        with pytest.raises(InvalidTransitionError, match=f"illegal transition {old} -> {new}"):
            check_transition(RpcStatus(old), RpcStatus(new), oneway=oneway)


@settings(max_examples=300, deadline=None)
@given(
    old=st.sampled_from(ALL),
    new=st.sampled_from(ALL),
    oneway=st.booleans(),
    as_enum=st.booleans(),
    rpc_id=st.none() | st.uuids().map(str),
)
def test_guard_matches_table_hypothesis(old, new, oneway, as_enum, rpc_id):
    a, b = (RpcStatus(old), RpcStatus(new)) if as_enum else (old, new)
    if expected_legal(old, new, oneway):
        check_transition(a, b, oneway=oneway, rpc_id=rpc_id)
    else:
        with pytest.raises(InvalidTransitionError) as info:
            check_transition(a, b, oneway=oneway, rpc_id=rpc_id)
        msg = str(info.value)
        assert f"illegal transition {old} -> {new}" in msg
        assert msg.startswith(f"RPC {rpc_id}: ") == (rpc_id is not None)


@settings(max_examples=200, deadline=None)
@given(oneway=st.booleans(), choices=st.lists(st.integers(0, 1000), max_size=40))
def test_random_walks_stay_in_the_lifecycle(oneway, choices):
    """Walk the machine by legal moves only: it never leaves the table, every
    state on the way is consistent with is_terminal, and DELETED ends it."""
    state = RpcStatus.QUEUED
    for c in choices:
        targets = sorted(allowed_targets(state, oneway=oneway))
        if not targets:
            assert state is RpcStatus.DELETED
            break
        if is_terminal(state, oneway=oneway):
            assert targets == [RpcStatus.DELETED]
        new = targets[c % len(targets)]
        assert expected_legal(state.value, new.value, oneway)
        check_transition(state, new, oneway=oneway)
        state = new
        if oneway:
            assert state is not RpcStatus.SUCCESSFUL


def test_message_names_the_call():
    with pytest.raises(InvalidTransitionError) as info:
        check_transition(RpcStatus.SENT, RpcStatus.QUEUED, oneway=False, rpc_id="b10bb1a0")
    assert str(info.value) == "RPC b10bb1a0: illegal transition SENT -> QUEUED"
    with pytest.raises(InvalidTransitionError) as info:
        check_transition("DELIVERED", "SUCCESSFUL", oneway=True)
    assert str(info.value) == "illegal transition DELIVERED -> SUCCESSFUL (one-way call)"


@pytest.mark.parametrize("old,new", [("BOGUS", "SENT"), ("SENT", "sent"), ("", "QUEUED")])
def test_unknown_status_is_an_illegal_transition(old, new):
    with pytest.raises(InvalidTransitionError, match="illegal transition"):
        check_transition(old, new, oneway=False)
    assert not is_allowed(old, new, oneway=False)


def test_terminal_sets():
    assert TERMINAL == {RpcStatus.SUCCESSFUL, RpcStatus.EXPIRED, RpcStatus.FAILED, RpcStatus.DELETED}
    assert UNFINISHED == {RpcStatus.QUEUED, RpcStatus.SENT, RpcStatus.DELIVERED, RpcStatus.TIMEOUT}
    for s in RpcStatus:
        assert is_terminal(s) is (s in TERMINAL)
        assert is_terminal(s, oneway=True) is (s in TERMINAL or s is RpcStatus.DELIVERED)
        if s is not RpcStatus.DELETED:  # DELETED is reachable from every other state
            assert is_allowed(s, RpcStatus.DELETED, oneway=False)
            assert is_allowed(s, RpcStatus.DELETED, oneway=True)
        assert not is_allowed(s, s, oneway=False)  # no self-loops


def test_event_types():
    assert [event_type(s) for s in RpcStatus] == [
        "RPC_QUEUED",
        "RPC_SENT",
        "RPC_DELIVERED",
        "RPC_SUCCESSFUL",
        "RPC_TIMEOUT",
        "RPC_EXPIRED",
        "RPC_FAILED",
        "RPC_DELETED",
    ]
    assert event_type("SENT") == "RPC_SENT"
    assert RPC_DELETED == event_type(RpcStatus.DELETED) == "RPC_DELETED"
    assert TO_SERVER_RPC_REQUEST == "TO_SERVER_RPC_REQUEST"
    with pytest.raises(ValueError):
        event_type("NOPE")
