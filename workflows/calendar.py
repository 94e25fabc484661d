"""Time-zone arithmetic for the policy: local wall-clock windows, ages, billing months.

Every function takes the instant and the policy's time zone explicitly; nothing here reads the
wall clock. Instants are timezone-aware `datetime`s; months are "YYYY-MM" strings; local dates are
"YYYY-MM-DD" strings and local times "HH:MM" (or "HH:MM:SS").
"""

from __future__ import annotations

import calendar as _stdlib_calendar
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache, wraps
from typing import Any

__all__ = [
    "add_calendar_months",
    "add_months",
    "age_on",
    "as_utc",
    "at_local",
    "in_daily_window",
    "last_day",
    "local_date",
    "month_of",
    "parse_clock_time",
    "parse_instant",
    "parse_month",
    "remembered",
    "start_of_local_day",
]


def as_utc(instant: datetime) -> datetime:
    """The same instant with a UTC tzinfo (CEL cannot carry `ZoneInfo` datetimes)."""
    if instant.tzinfo is None:
        raise ValueError(f"The time {instant.isoformat()} has no time zone; give an offset.")
    return instant.astimezone(UTC)


def parse_instant(text: str) -> datetime:
    """An RFC 3339 timestamp with an offset (a trailing Z is accepted) as an aware datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"The timestamp '{text}' has no offset; write it like 2026-11-03T14:00:00+09:00.")
    return value


def parse_clock_time(text: str) -> time:
    """'HH:MM' or 'HH:MM:SS' on a 24-hour clock; '24:00' is refused (use 00:00 of the next day)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() and len(p) == 2 for p in parts):
        raise ValueError(f"'{text}' is not a time HH:MM")
    numbers = [int(p) for p in parts]
    hour, minute = numbers[0], numbers[1]
    second = numbers[2] if len(numbers) == 3 else 0
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"'{text}' is not a time HH:MM")
    return time(hour, minute, second)


def remembered(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (pure) remembered by its arguments; unhashable arguments bypass the memo, so errors
    read exactly as without it. Months, days and clock times take few distinct values."""
    cached = lru_cache(maxsize=4096)(fn)

    @wraps(fn)
    def call(*args: Any) -> Any:
        try:
            return cached(*args)
        except TypeError:
            try:
                hash(args)
            except TypeError:
                return fn(*args)
            raise

    return call


def parse_month(text: str) -> tuple[int, int]:
    """'YYYY-MM' as (year, month)."""
    if len(text) != 7 or text[4] != "-" or not (text[:4].isdigit() and text[5:].isdigit()):
        raise ValueError(f"'{text}' is not a month YYYY-MM")
    year, month = int(text[:4]), int(text[5:])
    if not 1 <= month <= 12:
        raise ValueError(f"'{text}' is not a month YYYY-MM")
    return year, month


def _format_month(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


@remembered
def add_months(month: str, count: int) -> str:
    """The month `count` months after `month` ("2026-12" + 1 → "2027-01")."""
    year, mon = parse_month(month)
    index = year * 12 + (mon - 1) + count
    return _format_month(index // 12, index % 12 + 1)


@remembered
def last_day(month: str) -> int:
    """The number of the month's last day (28, 29, 30 or 31)."""
    year, mon = parse_month(month)
    return _stdlib_calendar.monthrange(year, mon)[1]


def local(instant: datetime, zone: tzinfo) -> datetime:
    return instant.astimezone(zone)


def local_date(instant: datetime, zone: tzinfo) -> str:
    return instant.astimezone(zone).date().isoformat()


def month_of(instant: datetime, zone: tzinfo) -> str:
    moment = instant.astimezone(zone)
    return _format_month(moment.year, moment.month)


@remembered
def at_local(month: str, day: int, clock: str, zone: tzinfo) -> datetime:
    """The instant (in UTC) of local wall-clock `clock` on `day` of `month` in `zone`.

    A day past the month's end is clamped to the last day, so `day=31` means "the last day".
    """
    year, mon = parse_month(month)
    day = max(1, min(day, last_day(month)))
    moment = datetime.combine(date(year, mon, day), parse_clock_time(clock), tzinfo=zone)
    return moment.astimezone(UTC)


def start_of_local_day(instant: datetime, zone: tzinfo) -> datetime:
    moment = instant.astimezone(zone)
    return datetime.combine(moment.date(), time(0), tzinfo=zone).astimezone(UTC)


def in_daily_window(instant: datetime, start: str, end: str, zone: tzinfo) -> bool:
    """Whether the local time of `instant` is in [start, end); the window may cross midnight.

    With start 23:00 and end 09:00, 22:59:59 and 09:00:00 are outside, 23:00:00 and 08:59:59 inside.
    A window whose start equals its end is empty.
    """
    now = instant.astimezone(zone).time().replace(microsecond=0, tzinfo=None)
    begin, finish = parse_clock_time(start), parse_clock_time(end)
    if begin <= finish:
        return begin <= now < finish
    return now >= begin or now < finish


def age_on(birth_date: str, instant: datetime, zone: tzinfo) -> int:
    """Completed years of age on the local date of `instant` (Korean 만 나이).

    Someone born on 29 February reaches each new age on 1 March of a common year, as under the
    Korean Civil Act's rule for periods that end in a month without the corresponding day.
    """
    born = date.fromisoformat(birth_date)
    today = instant.astimezone(zone).date()
    years = today.year - born.year
    try:
        anniversary = born.replace(year=today.year)
    except ValueError:  # 29 February in a common year
        anniversary = date(today.year, 3, 1)
    if today < anniversary:
        years -= 1
    return years


def add_calendar_months(instant: datetime, count: int, zone: tzinfo) -> datetime:
    """`instant` moved `count` calendar months in local time, clamped to the month's last day.

    2026-11-30 10:00 KST + 3 months → 2027-02-28 10:00 KST.
    """
    moment = instant.astimezone(zone)
    target = add_months(_format_month(moment.year, moment.month), count)
    year, mon = parse_month(target)
    day = min(moment.day, last_day(target))
    return moment.replace(year=year, month=mon, day=day).astimezone(UTC)


def add_hours(instant: datetime, hours: float) -> datetime:
    return as_utc(instant) + timedelta(hours=hours)


def add_days(instant: datetime, days: int, zone: tzinfo) -> datetime:
    """The same local wall-clock time `days` later (DST-safe; Asia/Seoul has none today)."""
    moment = instant.astimezone(zone)
    shifted = datetime.combine(moment.date() + timedelta(days=days), moment.timetz().replace(tzinfo=None),
                               tzinfo=zone)
    return shifted.astimezone(UTC)
