"""Quartz cron rules: parse them and find their next fire time.

Elves' center crons are Quartz ``CronTrigger`` rules (the CronTrigger
tutorial is the reference)::

    sec  min  hour  day-of-month  month  day-of-week  [year]
    0    15   10    ?             *      6L           2024-2026

- ``*`` every value, ``,`` lists, ``a-b`` ranges (``22-2`` wraps around, as
  in Quartz), ``a/n`` / ``a-b/n`` / ``*/n`` steps;
- months ``1-12`` or ``JAN``-``DEC``; days of week ``1-7`` = ``SUN``-``SAT``;
- exactly one of day-of-month and day-of-week is ``?`` (Quartz refuses
  both and neither);
- day-of-month: ``L`` (last day), ``L-3`` (third to last), ``15W`` (the
  weekday nearest the 15th, never crossing the month), ``LW`` (last weekday);
- day-of-week: ``6L`` (the last Friday), ``6#3`` (the third Friday), ``L``
  alone (7, Saturday);
- year: optional, 1970-2099.

Why not a library: croniter (the well-kept Python one) reads seconds first
and ``W``, ``#``, ``L5`` but numbers weekdays from 0 = Sunday and refuses
``LW``, ``L-n`` and ``6L``; cronsim has no seconds or years.  The tests
check this module against croniter on the syntax both share, and against a
brute-force search over the rule's own :meth:`QuartzRule.matches`.

Times are naive wall-clock datetimes (the caller picks the time zone); the
resolution is one second.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["QuartzRule", "QuartzError", "parse", "MAX_YEAR", "MIN_YEAR"]

MIN_YEAR = 1970
MAX_YEAR = 2099

_MONTHS = {m: i + 1 for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"))}
_DAYS = {d: i + 1 for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_FIELD_NAMES = ("second", "minute", "hour", "day-of-month", "month", "day-of-week", "year")
#: Longest rule accepted (Quartz has no limit; a rule from the network has one here).
MAX_RULE_LENGTH = 512


class QuartzError(ValueError):
    """A rule that is not valid Quartz; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class _DaySpec:
    """The day part of a rule: which days of a given month fire."""

    # day-of-month
    days: frozenset[int] = frozenset()     # plain values 1-31
    last_offset: int | None = None         # L (0) or L-n (n)
    nearest_weekday: int | None = None     # nW
    last_weekday: bool = False             # LW
    # day-of-week (1 = Sunday)
    weekdays: frozenset[int] = frozenset()
    last_of_weekday: int | None = None     # nL
    nth_weekday: tuple[int, int] | None = None  # (weekday, n) of n#k
    by_week: bool = False                  # day-of-month is "?"

    def of_month(self, year: int, month: int) -> list[int]:
        """The days of ``year-month`` that fire, sorted."""
        first_wd, last = calendar.monthrange(year, month)  # Monday = 0
        # Quartz weekday (1 = Sunday) of day d: (first_wd + d - 1 + 1) % 7 + 1
        def qwd(d: int) -> int:
            return (first_wd + d) % 7 + 1

        if self.by_week:
            if self.last_of_weekday is not None:
                d = last
                while qwd(d) != self.last_of_weekday:
                    d -= 1
                return [d]
            if self.nth_weekday is not None:
                wd, n = self.nth_weekday
                d = 1
                while qwd(d) != wd:
                    d += 1
                d += 7 * (n - 1)
                return [d] if d <= last else []
            return [d for d in range(1, last + 1) if qwd(d) in self.weekdays]
        if self.last_weekday:
            d = last
            while qwd(d) in (1, 7):
                d -= 1
            return [d]
        if self.last_offset is not None:
            d = last - self.last_offset
            return [d] if d >= 1 else []
        if self.nearest_weekday is not None:
            d = self.nearest_weekday
            if d > last:
                return []
            wd = qwd(d)
            if wd == 7:  # Saturday: the Friday before, or Monday after the 1st
                d = d - 1 if d > 1 else d + 2
            elif wd == 1:  # Sunday: the Monday after, or Friday before the last
                d = d + 1 if d < last else d - 2
            return [d]
        return sorted(d for d in self.days if d <= last)


class QuartzRule:
    """A parsed rule.  :meth:`next_after` is the next fire time strictly
    after a moment; :meth:`matches` whether a moment is a fire time."""

    __slots__ = ("text", "seconds", "minutes", "hours", "months", "years", "day")

    def __init__(self, text, seconds, minutes, hours, months, years, day) -> None:
        self.text: str = text
        self.seconds: list[int] = seconds
        self.minutes: list[int] = minutes
        self.hours: list[int] = hours
        self.months: list[int] = months
        self.years: list[int] | None = years  # None: every year
        self.day: _DaySpec = day

    def __repr__(self) -> str:
        return f"QuartzRule({self.text!r})"

    def matches(self, t: datetime) -> bool:
        """Whether ``t`` (to the second) is a fire time: the definition the
        search in :meth:`next_after` must agree with."""
        return (
            t.microsecond == 0
            and t.second in self.seconds
            and t.minute in self.minutes
            and t.hour in self.hours
            and t.month in self.months
            and (self.years is None or t.year in self.years)
            and t.day in self.day.of_month(t.year, t.month)
        )

    def next_after(self, t: datetime) -> datetime | None:
        """The first fire time strictly after ``t``, or None if the rule
        never fires again (its years are past, or nothing until 2099)."""
        t = t.replace(microsecond=0) + timedelta(seconds=1)
        year, month, day, hour, minute, second = t.year, t.month, t.day, t.hour, t.minute, t.second
        while year <= MAX_YEAR:
            if self.years is not None and year not in self.years:
                i = bisect_left(self.years, year)
                if i == len(self.years):
                    return None
                year, month, day, hour, minute, second = self.years[i], 1, 1, 0, 0, 0
                continue
            i = bisect_left(self.months, month)
            if i == len(self.months):
                year, month, day, hour, minute, second = year + 1, 1, 1, 0, 0, 0
                continue
            if self.months[i] != month:
                month, day, hour, minute, second = self.months[i], 1, 0, 0, 0
            days = self.day.of_month(year, month)
            i = bisect_left(days, day)
            if i == len(days):
                year, month = (year + 1, 1) if month == 12 else (year, month + 1)
                day, hour, minute, second = 1, 0, 0, 0
                continue
            if days[i] != day:
                day, hour, minute, second = days[i], 0, 0, 0
            i = bisect_left(self.hours, hour)
            if i == len(self.hours):
                year, month, day = _next_day(year, month, day)
                hour, minute, second = 0, 0, 0
                continue
            if self.hours[i] != hour:
                hour, minute, second = self.hours[i], 0, 0
            i = bisect_left(self.minutes, minute)
            if i == len(self.minutes):
                year, month, day, hour = _next_hour(year, month, day, hour)
                minute, second = 0, 0
                continue
            if self.minutes[i] != minute:
                minute, second = self.minutes[i], 0
            i = bisect_left(self.seconds, second)
            if i == len(self.seconds):
                year, month, day, hour, minute = _next_minute(year, month, day, hour, minute)
                second = 0
                continue
            return datetime(year, month, day, hour, minute, self.seconds[i])
        return None


def _next_day(y: int, m: int, d: int) -> tuple[int, int, int]:
    n = datetime(y, m, d) + timedelta(days=1)
    return n.year, n.month, n.day


def _next_hour(y: int, m: int, d: int, h: int) -> tuple[int, int, int, int]:
    if h < 23:
        return y, m, d, h + 1
    return (*_next_day(y, m, d), 0)


def _next_minute(y: int, m: int, d: int, h: int, mi: int) -> tuple[int, int, int, int, int]:
    if mi < 59:
        return y, m, d, h, mi + 1
    return (*_next_hour(y, m, d, h), 0)


# -- parsing -------------------------------------------------------------------


def parse(text: str) -> QuartzRule:
    """Parse a Quartz rule; raises :class:`QuartzError` naming the bad field."""
    if not isinstance(text, str):
        raise QuartzError(f"a cron rule is a string, not {type(text).__name__}")
    if len(text) > MAX_RULE_LENGTH:
        raise QuartzError(f"cron rule longer than {MAX_RULE_LENGTH} characters")
    fields = text.upper().split()
    if len(fields) not in (6, 7):
        raise QuartzError(f"a Quartz rule has 6 or 7 fields (seconds first), not {len(fields)}: {text!r}")
    sec, mins, hours, dom, month, dow = fields[:6]
    year = fields[6] if len(fields) == 7 else None
    if (dom == "?") == (dow == "?"):
        raise QuartzError(
            "exactly one of day-of-month and day-of-week must be '?' "
            f"(Quartz supports neither both nor none): {text!r}"
        )
    seconds = _values(sec, 0, 59, 0)
    minutes = _values(mins, 0, 59, 1)
    hrs = _values(hours, 0, 23, 2)
    months = _values(month, 1, 12, 4, _MONTHS)
    years = None
    if year is not None and year != "*":
        years = _values(year, MIN_YEAR, MAX_YEAR, 6, wrap=False)
    day = _week_spec(dow) if dom == "?" else _month_spec(dom)
    return QuartzRule(text, seconds, minutes, hrs, months, years, day)


def _fail(index: int, part: str, why: str) -> QuartzError:
    return QuartzError(f"{_FIELD_NAMES[index]} field {part!r}: {why}")


def _number(token: str, lo: int, hi: int, index: int, names: dict[str, int] | None) -> int:
    if names is not None and token in names:
        return names[token]
    if not token.isdigit() or len(token) > 4:
        raise _fail(index, token, "not a number" + (" or a name" if names else ""))
    n = int(token)
    if not lo <= n <= hi:
        raise _fail(index, token, f"out of range {lo}-{hi}")
    return n


def _values(field: str, lo: int, hi: int, index: int, names: dict[str, int] | None = None, *, wrap: bool = True) -> list[int]:
    """The values of a plain field (``* , - /``)."""
    out: set[int] = set()
    for part in field.split(","):
        if not part:
            raise _fail(index, field, "empty list item")
        step = 1
        if "/" in part:
            base, _, step_text = part.partition("/")
            if not step_text.isdigit() or not 0 < int(step_text) <= hi - lo + 1:
                raise _fail(index, part, f"step must be 1-{hi - lo + 1}")
            step = int(step_text)
        else:
            base = part
        if base in ("*", "?"):
            if base == "?" and index not in (3, 5):
                raise _fail(index, part, "'?' only in day-of-month or day-of-week")
            start, end = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _number(a, lo, hi, index, names), _number(b, lo, hi, index, names)
            if end < start and not wrap:
                raise _fail(index, part, "range goes backwards")
        else:
            start = _number(base, lo, hi, index, names)
            # "a/n" runs from a to the end of the range (Quartz); "a" alone is a.
            end = hi if "/" in part else start
        if end >= start:
            out.update(range(start, end + 1, step))
        else:  # overflowing range, e.g. hours 22-2
            span = list(range(start, hi + 1)) + list(range(lo, end + 1))
            out.update(span[::step])
    return sorted(out)


def _month_spec(field: str) -> _DaySpec:
    if field == "L":
        return _DaySpec(last_offset=0)
    if field == "LW":
        return _DaySpec(last_weekday=True)
    if field.startswith("L-"):
        n = field[2:]
        if not n.isdigit() or not 0 <= int(n) <= 30:
            raise _fail(3, field, "L-n needs an offset 0-30")
        return _DaySpec(last_offset=int(n))
    if field.endswith("W"):
        n = field[:-1]
        if not n.isdigit() or not 1 <= int(n) <= 31:
            raise _fail(3, field, "nW needs a single day 1-31")
        return _DaySpec(nearest_weekday=int(n))
    if "L" in field or "W" in field or "#" in field:
        raise _fail(3, field, "L and W stand alone (L, L-n, nW, LW), never in a list or range")
    return _DaySpec(days=frozenset(_values(field, 1, 31, 3)))


def _week_spec(field: str) -> _DaySpec:
    if field == "L":
        return _DaySpec(weekdays=frozenset({7}), by_week=True)
    if "#" in field:
        wd, _, n = field.partition("#")
        if "," in field or "-" in wd or "/" in wd:
            raise _fail(5, field, "'#' takes one day and stands alone")
        if not n.isdigit() or not 1 <= int(n) <= 5:
            raise _fail(5, field, "n#k needs k 1-5")
        return _DaySpec(nth_weekday=(_number(wd, 1, 7, 5, _DAYS), int(n)), by_week=True)
    if field.endswith("L"):
        wd = field[:-1]
        if "," in wd or "-" in wd or "/" in wd:
            raise _fail(5, field, "nL takes one day and stands alone")
        return _DaySpec(last_of_weekday=_number(wd, 1, 7, 5, _DAYS), by_week=True)
    if "L" in field.replace("SUN", "").replace("SAT", "") or "W" in field.replace("WED", ""):
        raise _fail(5, field, "L stands alone (L or nL); W is for day-of-month")
    return _DaySpec(weekdays=frozenset(_values(field, 1, 7, 5, _DAYS)), by_week=True)
