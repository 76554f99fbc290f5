"""Quartz rules: the CronTrigger tutorial's examples, the refusals, and
hypothesis against croniter (on the syntax both share) and against a
brute-force search over the rule's own definition (matches)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from croniter import croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetrpc.services.elves.quartz import QuartzError, parse


def fires(rule: str, start: datetime, n: int) -> list[datetime]:
    r, out, t = parse(rule), [], start
    for _ in range(n):
        t = r.next_after(t)
        if t is None:
            break
        out.append(t)
    return out


D = datetime
JAN1 = D(2024, 1, 1)  # a Monday; 2024 is a leap year


# The CronTrigger tutorial's table (quartz-scheduler.org), each with the
# fire times it describes, from 2024-01-01 00:00:00.
@pytest.mark.parametrize(
    "rule, start, expected",
    [
        ("0 0 12 * * ?", JAN1, [D(2024, 1, 1, 12), D(2024, 1, 2, 12), D(2024, 1, 3, 12)]),
        ("0 15 10 ? * *", JAN1, [D(2024, 1, 1, 10, 15), D(2024, 1, 2, 10, 15)]),
        ("0 15 10 * * ?", JAN1, [D(2024, 1, 1, 10, 15), D(2024, 1, 2, 10, 15)]),
        ("0 15 10 * * ? *", JAN1, [D(2024, 1, 1, 10, 15), D(2024, 1, 2, 10, 15)]),
        ("0 15 10 * * ? 2005", D(2004, 6, 1), [D(2005, 1, 1, 10, 15), D(2005, 1, 2, 10, 15)]),
        ("0 15 10 * * ? 2005", D(2005, 12, 31, 10, 15), []),
        ("0 * 14 * * ?", JAN1, [D(2024, 1, 1, 14, 0), D(2024, 1, 1, 14, 1), D(2024, 1, 1, 14, 2)]),
        ("0 * 14 * * ?", D(2024, 1, 1, 14, 59), [D(2024, 1, 2, 14, 0)]),
        ("0 0/5 14 * * ?", D(2024, 1, 1, 14, 50), [D(2024, 1, 1, 14, 55), D(2024, 1, 2, 14, 0)]),
        ("0 0/5 14,18 * * ?", D(2024, 1, 1, 14, 55), [D(2024, 1, 1, 18, 0), D(2024, 1, 1, 18, 5)]),
        ("0 0-5 14 * * ?", D(2024, 1, 1, 14, 4), [D(2024, 1, 1, 14, 5), D(2024, 1, 2, 14, 0)]),
        ("0 10,44 14 ? 3 WED", JAN1, [D(2024, 3, 6, 14, 10), D(2024, 3, 6, 14, 44), D(2024, 3, 13, 14, 10)]),
        ("0 15 10 ? * MON-FRI", D(2024, 1, 5, 11), [D(2024, 1, 8, 10, 15), D(2024, 1, 9, 10, 15)]),
        ("0 15 10 15 * ?", JAN1, [D(2024, 1, 15, 10, 15), D(2024, 2, 15, 10, 15)]),
        ("0 15 10 L * ?", JAN1, [D(2024, 1, 31, 10, 15), D(2024, 2, 29, 10, 15), D(2024, 3, 31, 10, 15), D(2024, 4, 30, 10, 15)]),
        ("0 15 10 L-2 * ?", JAN1, [D(2024, 1, 29, 10, 15), D(2024, 2, 27, 10, 15)]),
        ("0 15 10 ? * 6L", JAN1, [D(2024, 1, 26, 10, 15), D(2024, 2, 23, 10, 15), D(2024, 3, 29, 10, 15)]),
        ("0 15 10 ? * 6L 2002-2005", JAN1, []),
        ("0 15 10 ? * 6L 2002-2005", D(2005, 12, 1), [D(2005, 12, 30, 10, 15)]),
        ("0 15 10 ? * 6#3", JAN1, [D(2024, 1, 19, 10, 15), D(2024, 2, 16, 10, 15), D(2024, 3, 15, 10, 15)]),
        ("0 0 12 1/5 * ?", D(2024, 1, 26, 13), [D(2024, 1, 31, 12), D(2024, 2, 1, 12), D(2024, 2, 6, 12)]),
        ("0 11 11 11 11 ?", JAN1, [D(2024, 11, 11, 11, 11), D(2025, 11, 11, 11, 11)]),
        ("0 0 12 ? * WED", JAN1, [D(2024, 1, 3, 12), D(2024, 1, 10, 12)]),
        # Last weekday: Mar 31 2024 is a Sunday, Aug 31 a Saturday.
        ("0 0 12 LW * ?", D(2024, 3, 1), [D(2024, 3, 29, 12), D(2024, 4, 30, 12), D(2024, 5, 31, 12), D(2024, 6, 28, 12)]),
        ("0 0 12 LW * ?", D(2024, 8, 1), [D(2024, 8, 30, 12)]),
        # Nearest weekday: Jun 15 2024 is a Saturday (-> Fri 14th), Jun 1 too
        # (-> Mon 3rd, never into May), Sep 15 a Sunday (-> Mon 16th).
        ("0 0 9 15W * ?", D(2024, 6, 1), [D(2024, 6, 14, 9), D(2024, 7, 15, 9), D(2024, 8, 15, 9), D(2024, 9, 16, 9)]),
        ("0 0 9 1W * ?", D(2024, 5, 31), [D(2024, 6, 3, 9)]),
        # Mar 31 2024 is a Sunday: 31W is Friday the 29th, not April 1st.
        ("0 0 9 31W * ?", D(2024, 3, 1), [D(2024, 3, 29, 9), D(2024, 5, 31, 9)]),
        # The seed's example: every ten seconds.
        ("0/10 * * * * ?", D(2024, 1, 1, 0, 0, 5), [D(2024, 1, 1, 0, 0, 10), D(2024, 1, 1, 0, 0, 20)]),
        # Overflowing range (Quartz): 22-2 o'clock.
        ("0 0 22-2 * * ?", D(2024, 1, 1, 21), [D(2024, 1, 1, 22), D(2024, 1, 1, 23), D(2024, 1, 2, 0), D(2024, 1, 2, 1), D(2024, 1, 2, 2), D(2024, 1, 2, 22)]),
        ("0 0 0 ? * L", JAN1, [D(2024, 1, 6), D(2024, 1, 13)]),
        ("0 0 0 29 2 ?", JAN1, [D(2024, 2, 29), D(2028, 2, 29)]),
        ("0 0 0 31 * ?", D(2024, 4, 1), [D(2024, 5, 31), D(2024, 7, 31)]),
        ("0 0 0 ? * 2#5", JAN1, [D(2024, 1, 29), D(2024, 4, 29), D(2024, 7, 29)]),
        ("0 0 12 ? jan,jul mon#1", JAN1, [D(2024, 1, 1, 12), D(2024, 7, 1, 12), D(2025, 1, 6, 12)]),
    ],
)
def test_tutorial_examples(rule, start, expected):
    assert fires(rule, start, len(expected) or 1) == expected
    r = parse(rule)
    assert all(r.matches(t) for t in expected)


@pytest.mark.parametrize(
    "rule, field",
    [
        ("* * * * *", "6 or 7 fields"),
        ("* * * * * ? * *", "6 or 7 fields"),
        ("0 0 12 * * *", "exactly one"),
        ("0 0 12 ? * ?", "exactly one"),
        ("60 0 12 * * ?", "second"),
        ("0 60 12 * * ?", "minute"),
        ("0 0 24 * * ?", "hour"),
        ("0 0 12 32 * ?", "day-of-month"),
        ("0 0 12 0 * ?", "day-of-month"),
        ("0 0 12 * 13 ?", "month"),
        ("0 0 12 * FOO ?", "month"),
        ("0 0 12 ? * 8", "day-of-week"),
        ("0 0 12 ? * 6#6", "day-of-week"),
        ("0 0 12 ? * 1-3L", "day-of-week"),
        ("0 0 12 ? * 6#3,2", "day-of-week"),
        ("0 0 12 1,LW * ?", "day-of-month"),
        ("0 0 12 1-5W * ?", "day-of-month"),
        ("0 0 12 L-31 * ?", "day-of-month"),
        ("0 0 12 * * ? 1969", "year"),
        ("0 0 12 * * ? 2100", "year"),
        ("0 0 12 * * ? 2010-2005", "year"),
        ("0 0/0 12 * * ?", "minute"),
        ("0 0/61 12 * * ?", "minute"),
        ("0 ,5 12 * * ?", "minute"),
        ("? 0 12 * * ?", "second"),
        ("0 0 12 * * ? x", "year"),
        ("0 0 12 ? * 99999999", "day-of-week"),
    ],
)
def test_bad_rules_name_the_field(rule, field):
    with pytest.raises(QuartzError, match=field):
        parse(rule)


def test_not_a_string_and_too_long():
    with pytest.raises(QuartzError):
        parse(None)  # type: ignore[arg-type]
    with pytest.raises(QuartzError, match="longer"):
        parse("0 " * 300 + "?")


def test_names_and_case():
    assert fires("0 0 12 ? * wed", JAN1, 1) == fires("0 0 12 ? * 4", JAN1, 1)
    assert fires("0 0 12 1 jan-mar ?", JAN1, 3) == [D(2024, 1, 1, 12), D(2024, 2, 1, 12), D(2024, 3, 1, 12)]


# -- hypothesis -------------------------------------------------------------------


def _plain(lo: int, hi: int):
    """A plain field both Quartz and croniter read the same way."""
    value = st.integers(lo, hi)
    # a < b: croniter reads the degenerate range "0-0" of seconds as "*".
    rng = st.tuples(value, value).filter(lambda ab: ab[0] != ab[1]).map(lambda ab: f"{min(ab)}-{max(ab)}")
    step = st.tuples(value, st.integers(1, hi - lo + 1)).map(lambda a: f"{a[0]}/{a[1]}")
    rstep = st.tuples(value, value, st.integers(1, hi - lo + 1)).filter(lambda a: a[0] != a[1]).map(lambda a: f"{min(a[:2])}-{max(a[:2])}/{a[2]}")
    item = st.one_of(value.map(str), rng, step, rstep)
    return st.one_of(st.just("*"), st.lists(item, min_size=1, max_size=3).map(",".join))


@st.composite
def shared_rules(draw):
    """(quartz rule, croniter rule) pairs meaning the same."""
    sec, mi, hr = draw(_plain(0, 59)), draw(_plain(0, 59)), draw(_plain(0, 23))
    mon = draw(_plain(1, 12))
    kind = draw(st.sampled_from(["dom", "dow", "L", "nth", "last", "W"]))
    if kind == "dom":
        dom = draw(_plain(1, 31))
        q, c = (dom, "?"), (dom, "*")
    elif kind == "L":
        q, c = ("L", "?"), ("L", "*")
    elif kind == "W":
        # Up to 28: croniter moves 29W-31W into a shorter month's last
        # weekday; here (and in Quartz's words, "W never jumps over the
        # month's days") such a month does not fire.
        d = draw(st.integers(1, 28))
        q, c = (f"{d}W", "?"), (f"{d}W", "*")
    else:
        wd = draw(st.integers(1, 7))
        if kind == "dow":
            days = draw(st.lists(st.integers(1, 7), min_size=1, max_size=3))
            q, c = ("?", ",".join(map(str, days))), ("*", ",".join(str(d - 1) for d in days))
        elif kind == "nth":
            n = draw(st.integers(1, 5))
            q, c = ("?", f"{wd}#{n}"), ("*", f"{wd - 1}#{n}")
        else:
            q, c = ("?", f"{wd}L"), ("*", f"L{wd - 1}")
    quartz = f"{sec} {mi} {hr} {q[0]} {mon} {q[1]}"
    cron = f"{sec} {mi} {hr} {c[0]} {mon} {c[1]}"
    return quartz, cron


starts = st.datetimes(min_value=D(2000, 1, 1), max_value=D(2090, 1, 1)).map(lambda t: t.replace(microsecond=0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shared_rules(), starts)
def test_agrees_with_croniter(rules, start):
    quartz, cron = rules
    it = croniter(cron, start, second_at_beginning=True, max_years_between_matches=30)
    r, t = parse(quartz), start
    for _ in range(4):
        t = r.next_after(t)
        try:
            expected = it.get_next(datetime)
        except Exception:  # croniter gave up (nothing within its window)
            return
        if t is None or expected.year > 2099:
            return
        assert t == expected, (quartz, cron, start)


def _fields():
    sec = _plain(0, 59)
    dom = st.one_of(_plain(1, 31), st.just("L"), st.just("LW"), st.integers(0, 30).map(lambda n: f"L-{n}"),
                    st.integers(1, 31).map(lambda d: f"{d}W"))
    dow = st.one_of(_plain(1, 7), st.just("L"), st.integers(1, 7).map(lambda d: f"{d}L"),
                    st.tuples(st.integers(1, 7), st.integers(1, 5)).map(lambda a: f"{a[0]}#{a[1]}"))
    day = st.one_of(dom.map(lambda d: (d, "?")), dow.map(lambda d: ("?", d)))
    year = st.one_of(st.just(""), st.just(" *"), _plain(2000, 2099).filter(lambda y: y != "*").map(lambda y: " " + y))
    return st.tuples(sec, sec, _plain(0, 23), day, _plain(1, 12), year).map(
        lambda f: f"{f[0]} {f[1]} {f[2]} {f[3][0]} {f[4]} {f[3][1]}{f[5]}")


def _brute_next(rule, t: datetime, limit: datetime) -> datetime | None:
    """The first matching second after t, searched day by day (a day with a
    fire time is scanned second by second only over its firing hours and
    minutes)."""
    day = datetime(t.year, t.month, t.day)
    while day <= limit:
        if (rule.years is None or day.year in rule.years) and day.month in rule.months \
                and day.day in rule.day.of_month(day.year, day.month):
            for h in rule.hours:
                for m in rule.minutes:
                    for s in rule.seconds:
                        c = day.replace(hour=h, minute=m, second=s)
                        if c > t:
                            assert rule.matches(c)
                            return c
        day += timedelta(days=1)
    return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fields(), starts)
def test_next_after_is_the_first_match(text, start):
    rule = parse(text)
    got = rule.next_after(start)
    limit = start + timedelta(days=366 * 3)
    expected = _brute_next(rule, start, limit if got is None else min(got, limit))
    if got is None or got > limit:
        assert expected is None
    else:
        assert got == expected and rule.matches(got)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_raises_quartz_error(text):
    try:
        rule = parse(text)
    except QuartzError:
        return
    rule.next_after(JAN1)
