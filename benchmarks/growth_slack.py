"""Allocated bytes per pending call of the compiled core's arrays, by growth policy.

The wheel's pool (32-byte entries), the pending table's slab (40-byte slots)
and its index (4-byte cells, a power of two kept at most ``--load`` full) are
allocated with PyMem, so what ``tracemalloc`` counts for them is exactly
their capacity times their record size: this computes it for n pending calls
under each growth policy, with no process to run (checked against
``benchmarks/memory_call.py``: the paged policy's 86.9 B at 20,000 is its
``table.add`` line to 0.1 B).  ``worst`` is the largest figure for any n in
[10,000, 1,000,000] (found just past a growth step of an array).

    python benchmarks/growth_slack.py [--load 2/3]
"""

from __future__ import annotations

import argparse
from fractions import Fraction

FIRST = 64  # first size of the pool and of the slab
PAGE = 1024  # records per page (paged.pxd)
SIZES = (1_000, 5_000, 20_000, 100_000, 1_000_000)


def doubling(n: int) -> int:
    cap = FIRST
    while cap < n:
        cap *= 2
    return cap


def times_1_5(n: int) -> int:
    cap = FIRST
    while cap < n:
        cap += cap // 2
    return cap


def chunks(n: int) -> int:
    # realloc by a fixed 1,024 records each time (copies O(n**2 / chunk) bytes)
    return max(FIRST, -(-n // PAGE) * PAGE)


def paged(n: int) -> int:
    # page 0 doubles up to a page, then whole pages (+ an 8-byte pointer each)
    cap = FIRST
    while cap < n and cap < PAGE:
        cap *= 2
    return cap if cap >= n else -(-n // PAGE) * PAGE


def directory(n: int) -> int:
    pages = max(1, -(-n // PAGE))
    cap = 8
    while cap < pages:
        cap *= 2
    return cap * 8


def index_bytes(n: int, load: Fraction) -> int:
    icap = 128
    while (n) > icap * load:
        icap *= 2
    return icap * 4


def steps(policy, load: Fraction) -> set[int]:
    # Every n in [10,000, 1,000,000] just past a growth of one of the arrays.
    out = {10_000}
    n = 10_000
    while n <= 1_000_000:
        out.add(n)
        n = min(policy(n), index_bytes(n, load) // 4 * load) + 1
        n = int(n)
    return {n for n in out if n <= 1_000_000}


def per_call(policy, n: int, load: Fraction, warm: bool) -> float:
    total = policy(n) * 40 + index_bytes(n, load)
    if not warm:
        total += policy(n) * 32
    if policy is paged:
        total += directory(n) * (1 if warm else 2)
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--load", default="1/2", help="the index's largest load (default 1/2)")
    a = ap.parse_args()
    load = Fraction(a.load)
    policies = (("doubling", doubling), ("1.5x", times_1_5), ("chunks of 1024", chunks), ("paged", paged))
    head = "".join(f"{n:>11,}" for n in SIZES) + "      worst"
    for warm in (False, True):
        print(f"B/call, wheel pool {'already grown (warm)' if warm else 'grown with the calls (cold)'}, "
              f"index load <= {load}:")
        print(f"  {'':16}{head}")
        for name, policy in policies:
            row = "".join(f"{per_call(policy, n, load, warm):11.1f}" for n in SIZES)
            worst = max(per_call(policy, n, load, warm) for n in steps(policy, load))
            print(f"  {name:16}{row}{worst:11.1f}")


if __name__ == "__main__":
    main()
