"""Per-device message rate limits in ThingsBoard's format.

ThingsBoard writes a rate limit as comma-separated ``capacity:seconds``
pairs, e.g. ``"200:1,6000:60,14000:3600"``: at most 200 messages in any
second, 6000 in a minute and 14000 in an hour.  Each pair is a token bucket
that refills greedily (``capacity / seconds`` tokens per second, as
bucket4j's greedy refill does); a message needs one token from every bucket.
``"0:0"`` and the empty string mean no limit, as in ThingsBoard.
"""

from __future__ import annotations

from ...errors import ValidationError


def parse_rate_limits(spec: str | None) -> list[tuple[int, float]]:
    """``"200:1,6000:60"`` -> ``[(200, 1.0), (6000, 60.0)]``; ``None``, ``""``
    and ``"0:0"`` pairs mean no limit.  Raises ValidationError naming the bad
    pair."""
    if not spec:
        return []
    out: list[tuple[int, float]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue  # ThingsBoard writes "0:0," with a trailing comma
        cap_s, sep, period_s = part.partition(":")
        try:
            cap = int(cap_s)
            period = float(period_s)
        except ValueError:
            raise ValidationError(f"rate limit {part!r} is not capacity:seconds (e.g. 200:1)") from None
        if not sep or cap < 0 or period < 0 or period != period:
            raise ValidationError(f"rate limit {part!r} is not capacity:seconds (e.g. 200:1)")
        if cap == 0 and period == 0:
            continue
        if cap == 0 or period == 0:
            raise ValidationError(f"rate limit {part!r}: capacity and seconds must both be positive")
        out.append((cap, period))
    return out


class RateLimit:
    """The token buckets of one device."""

    __slots__ = ("_caps", "_rates", "_tokens", "_stamp")

    def __init__(self, buckets: list[tuple[int, float]], now: float) -> None:
        self._caps = [float(c) for c, _ in buckets]
        self._rates = [c / p for c, p in buckets]
        self._tokens = list(self._caps)
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one token from every bucket; False (nothing spent) when any
        bucket is empty."""
        elapsed = now - self._stamp
        self._stamp = now
        tokens, caps, rates = self._tokens, self._caps, self._rates
        ok = True
        for i in range(len(tokens)):
            t = tokens[i] + elapsed * rates[i]
            if t > caps[i]:
                t = caps[i]
            tokens[i] = t
            if t < 1.0:
                ok = False
        if ok:
            for i in range(len(tokens)):
                tokens[i] -= 1.0
        return ok

    def full(self, now: float) -> bool:
        """Every bucket has refilled: forgetting this limiter changes nothing."""
        elapsed = now - self._stamp
        return all(t + elapsed * r >= c for t, r, c in zip(self._tokens, self._rates, self._caps))
