"""A plain model of the lease table's semantics (fleetrpc/cluster/table.py),
written as directly as possible, and the random operations the
property-based tests run against it and an implementation."""

from __future__ import annotations

from collections import Counter

from hypothesis import strategies as st

from fleetrpc.errors import StoreError

SESSIONS = ["a.x.1", "b.y.1", "c.z.1", "d.w.1"]
NAMES = ["job:1", "job:2"]
TTL_MS = 1000


class ModelTable:
    def __init__(self, partitions: int) -> None:
        self.now = 0
        self.sessions: dict[str, int] = {}
        self.owner: list[str | None] = [None] * partitions
        self.epoch = [0] * partitions
        self.named: dict[str, tuple[str | None, int]] = {}

    def live(self, s: str) -> bool:
        return s in self.sessions and self.sessions[s] >= self.now

    def register(self, s: str) -> None:
        if s in self.sessions:
            raise StoreError("exists")
        self.sessions[s] = self.now + TTL_MS

    def heartbeat(self, s: str) -> bool:
        if not self.live(s):
            return False
        self.sessions[s] = self.now + TTL_MS
        return True

    def reap(self) -> list[str]:
        dead = sorted(s for s, e in self.sessions.items() if e < self.now)
        for s in dead:
            del self.sessions[s]
        return dead

    def live_sessions(self) -> list[str]:
        return sorted(s for s in self.sessions if self.live(s))

    def owner_counts(self) -> dict:
        return dict(Counter(self.owner))

    def owned_by(self, s: str) -> dict[int, int]:
        return {p: self.epoch[p] for p, o in enumerate(self.owner) if o == s}

    def claimable(self) -> set[tuple[int, int]]:
        return {(p, self.epoch[p]) for p, o in enumerate(self.owner) if o is None or o not in self.sessions}

    def claim(self, s: str, cands) -> dict[int, int]:
        if not self.live(s):
            return {}
        won = {}
        for p, e in cands:
            # at most once per call (found by the PostgreSQL model test:
            # [(0, 0), (0, 1)] took partition 0 twice here, once there)
            if 0 <= p < len(self.owner) and self.epoch[p] == e and p not in won:
                self.owner[p] = s
                self.epoch[p] += 1
                won[p] = self.epoch[p]
        return won

    def release(self, s: str, parts) -> list[int]:
        done = []
        for p in parts:
            if 0 <= p < len(self.owner) and self.owner[p] == s and p not in done:
                self.owner[p] = None
                self.epoch[p] += 1
                done.append(p)
        return sorted(done)

    def acquire_named(self, s: str, name: str):
        if not self.live(s):
            return None
        owner, epoch = self.named.get(name, (None, 0))
        if owner == s:
            return epoch
        if owner is not None and owner in self.sessions:
            return None
        self.named[name] = (s, epoch + 1)
        return epoch + 1

    def release_named(self, s: str, name: str) -> bool:
        owner, epoch = self.named.get(name, (None, 0))
        if owner != s:
            return False
        self.named[name] = (None, epoch + 1)
        return True

    def named_held_by(self, s: str) -> dict[str, int]:
        return {n: e for n, (o, e) in self.named.items() if o == s}

    def unregister(self, s: str) -> None:
        self.release(s, range(len(self.owner)))
        for n, (o, e) in list(self.named.items()):
            if o == s:
                self.named[n] = (None, e + 1)
        self.sessions.pop(s, None)


session = st.sampled_from(SESSIONS)


def operations(partitions: int):
    part = st.integers(-1, partitions)
    return st.one_of(
        # around the lease time (1000 ms), where expiry is decided
        st.tuples(st.just("advance"), st.sampled_from([0, 1, 300, 600, 999, 1000, 1001, 1500])),
        st.tuples(st.just("register"), session),
        st.tuples(st.just("heartbeat"), session),
        st.tuples(st.just("reap")),
        st.tuples(st.just("live_sessions")),
        st.tuples(st.just("owner_counts")),
        st.tuples(st.just("owned_by"), session),
        st.tuples(st.just("claim_claimable"), session, st.integers(0, partitions + 1)),
        st.tuples(st.just("claim_stale"), session, st.lists(st.tuples(part, st.integers(0, 5)), max_size=4)),
        st.tuples(st.just("release"), session, st.lists(part, max_size=4)),
        st.tuples(st.just("acquire_named"), session, st.sampled_from(NAMES)),
        st.tuples(st.just("release_named"), session, st.sampled_from(NAMES)),
        st.tuples(st.just("named_held_by"), session),
        st.tuples(st.just("unregister"), session),
    )


async def apply(op: tuple, table, model: ModelTable, clock: list[int]) -> None:
    """Run ``op`` on the implementation and the model; assert they agree."""
    kind, *args = op
    if kind == "advance":
        model.now += args[0]
        clock[0] = model.now
        return
    if kind == "register":
        try:
            await table.register(args[0], args[0][0], "boot", TTL_MS)
            got = "ok"
        except StoreError:
            got = "exists"
        try:
            model.register(args[0])
            want = "ok"
        except StoreError:
            want = "exists"
        assert got == want, op
        return
    if kind == "heartbeat":
        got, want = await table.heartbeat(args[0], TTL_MS), model.heartbeat(args[0])
    elif kind == "reap":
        got, want = await table.reap(), model.reap()
    elif kind == "live_sessions":
        got, want = await table.live_sessions(), model.live_sessions()
    elif kind == "owner_counts":
        got, want = await table.owner_counts(), model.owner_counts()
    elif kind == "owned_by":
        got, want = await table.owned_by(args[0]), model.owned_by(args[0])
    elif kind == "claim_claimable":
        candidates = await table.claimable(args[1])
        claimable = model.claimable()
        assert set(candidates) <= claimable and len(candidates) == min(args[1], len(claimable)), op
        got, want = await table.claim(args[0], candidates), model.claim(args[0], candidates)
    elif kind == "claim_stale":
        got, want = await table.claim(args[0], args[1]), model.claim(args[0], args[1])
    elif kind == "release":
        got, want = sorted(await table.release(args[0], args[1])), model.release(args[0], args[1])
    elif kind == "acquire_named":
        got, want = await table.acquire_named(*args), model.acquire_named(*args)
    elif kind == "release_named":
        got, want = await table.release_named(*args), model.release_named(*args)
    elif kind == "named_held_by":
        got, want = await table.named_held_by(args[0]), model.named_held_by(args[0])
    elif kind == "unregister":
        await table.unregister(args[0])
        model.unregister(args[0])
        got = want = None
    else:  # pragma: no cover
        raise AssertionError(kind)
    assert got == want, (op, got, want)
