"""What NotifyLink makes of a notification on the cluster channel that no
fleetrpc node wrote (anyone who may NOTIFY on the database can): items it
cannot read are skipped, and nothing escapes to the listener (which logs an
ERROR with a traceback for each)."""

from __future__ import annotations

import types

from fleetrpc.rpc.cluster import NotifyLink


def _link():
    got = []
    link = NotifyLink(types.SimpleNamespace(schema=None), lambda kind, items: got.append((kind, items)),
                      lambda: None)
    return link, got


def test_a_partition_number_too_long_for_int_is_skipped():
    link, got = _link()
    # int() refuses more than 4300 digits (ValueError) since Python 3.11.
    link._received("n" + "9" * 5000 + ":x,n3:abc,d" + "1" * 20 + ":y,d4:z")
    assert got == [("n", [(3, "abc")]), ("d", [(4, "z")])]


def test_unreadable_items_are_skipped():
    link, got = _link()
    link._received("x1:a,n:b,n1,n-1:c,,n2:ok")
    assert got == [("n", [(2, "ok")])]
