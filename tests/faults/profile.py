"""How big each probe is: ``short`` in the normal test suite, ``long`` for
``tools/faults`` (the issue's figures), optionally scaled down.

``FLEETRPC_FAULTS_PROFILE`` = ``short`` (default) | ``long``;
``FLEETRPC_FAULTS_SCALE`` (long only, default 1) multiplies every size of
the long profile (but the number of broker outages), never below the short one.
"""

from __future__ import annotations

import os

import msgspec


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    #: messages the hostile publisher sends in the fuzz probe
    fuzz_messages: int
    #: persistent calls submitted around a kill -9 of the server
    crash_calls: int
    #: broker outages (kill -9 then start) under persistent load
    broker_outages: int
    #: persistent calls submitted across the broker outages
    outage_calls: int
    #: persistent calls across a PostgreSQL crash
    pg_calls: int
    #: calls to the device that never answers
    silent_calls: int
    #: new device ids in the heartbeat and presence flood
    flood_ids: int
    #: seconds of mixed load in the soak
    soak_s: float
    #: calls per strategy in the slow-device probe
    slow_calls: int


SHORT = Profile(name="short", fuzz_messages=20_000, crash_calls=600, broker_outages=2, outage_calls=300,
                pg_calls=300, silent_calls=300, flood_ids=30_000, soak_s=20.0, slow_calls=60)
LONG = Profile(name="long", fuzz_messages=1_000_000, crash_calls=10_000, broker_outages=5, outage_calls=5_000,
               pg_calls=3_000, silent_calls=20_000, flood_ids=1_000_000, soak_s=600.0, slow_calls=600)


def scaled(scale: float) -> Profile:
    values = {}
    for field in msgspec.structs.fields(Profile):
        if field.name == "name":
            continue
        big, small = getattr(LONG, field.name), getattr(SHORT, field.name)
        # Outages are few and cheap: the long run always has all of them.
        values[field.name] = big if field.name == "broker_outages" else type(big)(max(small, big * scale))
    return Profile(name=f"long x{scale:g}" if scale != 1 else "long", **values)


def current() -> Profile:
    name = os.environ.get("FLEETRPC_FAULTS_PROFILE", "short")
    if name == "short":
        return SHORT
    if name != "long":
        raise ValueError(f"FLEETRPC_FAULTS_PROFILE must be short or long, not {name!r}")
    return scaled(float(os.environ.get("FLEETRPC_FAULTS_SCALE", "1")))
