"""Unit tests of workflows/calendar.py: the one module that does time-zone arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from tollgate.workflows import calendar

KST = ZoneInfo("Asia/Seoul")


def k(*args):
    return datetime(*args, tzinfo=KST)


# ── parsing ──────────────────────────────────────────────────────────────────────────────────


def test_as_utc_keeps_the_instant():
    moment = k(2026, 12, 1, 9)
    assert calendar.as_utc(moment) == moment
    assert calendar.as_utc(moment).tzinfo is UTC
    assert calendar.as_utc(moment).hour == 0


def test_as_utc_refuses_naive_times():
    with pytest.raises(ValueError, match="no time zone"):
        calendar.as_utc(datetime(2026, 12, 1, 9))


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-01T00:00:00Z",
        "2026-12-01T00:00:00z",
        "2026-12-01T09:00:00+09:00",
        "2026-12-01T00:00:00+00:00",
    ],
)
def test_parse_instant(text):
    assert calendar.parse_instant(text) == datetime(2026, 12, 1, tzinfo=UTC)


def test_parse_instant_refuses_a_missing_offset():
    with pytest.raises(ValueError, match="no offset"):
        calendar.parse_instant("2026-12-01T09:00:00")


@pytest.mark.parametrize(
    ("text", "hms"),
    [("00:00", (0, 0, 0)), ("09:00", (9, 0, 0)), ("23:59", (23, 59, 0)), ("22:59:59", (22, 59, 59))],
)
def test_parse_clock_time(text, hms):
    parsed = calendar.parse_clock_time(text)
    assert (parsed.hour, parsed.minute, parsed.second) == hms


@pytest.mark.parametrize(
    "text", ["24:00", "25:61", "9:00", "09:60", "09", "09:00:60", "ab:cd", "09:00:00:00", ""]
)
def test_parse_clock_time_refuses(text):
    with pytest.raises(ValueError, match="not a time HH:MM"):
        calendar.parse_clock_time(text)


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "2026-1", "26-01", "2026/01", "2026-011"])
def test_parse_month_refuses(text):
    with pytest.raises(ValueError, match="not a month"):
        calendar.parse_month(text)


# ── months ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("month", "count", "expected"),
    [
        ("2026-11", 1, "2026-12"),
        ("2026-12", 1, "2027-01"),
        ("2026-01", -1, "2025-12"),
        ("2026-05", 0, "2026-05"),
        ("2026-11", 14, "2028-01"),
        ("2026-03", -27, "2023-12"),
    ],
)
def test_add_months(month, count, expected):
    assert calendar.add_months(month, count) == expected


@pytest.mark.parametrize(
    ("month", "days"),
    [
        ("2026-02", 28),
        ("2028-02", 29),
        ("2100-02", 28),
        ("2000-02", 29),
        ("2026-04", 30),
        ("2026-06", 30),
        ("2026-12", 31),
        ("2027-01", 31),
    ],
)
def test_last_day(month, days):
    assert calendar.last_day(month) == days


def test_month_of_and_local_date_are_in_the_zone():
    instant = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)  # 1 Dec 00:00 KST
    assert calendar.month_of(instant, KST) == "2026-12"
    assert calendar.local_date(instant, KST) == "2026-12-01"
    assert calendar.month_of(instant - timedelta(seconds=1), KST) == "2026-11"
    assert calendar.local_date(instant - timedelta(seconds=1), KST) == "2026-11-30"


@pytest.mark.parametrize(
    ("month", "day", "clock", "expected"),
    [
        ("2026-12", 3, "00:00", k(2026, 12, 3)),
        ("2026-12", 3, "14:00", k(2026, 12, 3, 14)),
        ("2026-02", 31, "22:00", k(2026, 2, 28, 22)),  # past the end: the last day
        ("2028-02", 30, "22:00", k(2028, 2, 29, 22)),
        ("2026-04", 31, "22:00", k(2026, 4, 30, 22)),
        ("2026-04", 0, "00:00", k(2026, 4, 1)),
    ],
)
def test_at_local(month, day, clock, expected):
    result = calendar.at_local(month, day, clock, KST)
    assert result == expected and result.tzinfo is UTC


def test_at_local_the_3rd_0000_kst_is_the_2nd_in_utc():
    assert calendar.at_local("2027-01", 3, "00:00", KST) == datetime(2027, 1, 2, 15, tzinfo=UTC)


def test_start_of_local_day():
    assert calendar.start_of_local_day(datetime(2026, 12, 10, 14, 59, tzinfo=UTC), KST) == k(2026, 12, 10)
    assert calendar.start_of_local_day(datetime(2026, 12, 10, 15, 0, tzinfo=UTC), KST) == k(2026, 12, 11)


# ── daily windows ────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("hms", "inside"),
    [
        ((22, 59, 59), False),
        ((23, 0, 0), True),
        ((0, 0, 0), True),
        ((3, 0, 0), True),
        ((8, 59, 59), True),
        ((9, 0, 0), False),
        ((12, 0, 0), False),
    ],
)
def test_in_daily_window_crossing_midnight(hms, inside):
    assert calendar.in_daily_window(k(2026, 12, 1, *hms), "23:00", "09:00", KST) is inside


@pytest.mark.parametrize(
    ("hms", "inside"),
    [
        ((8, 59, 59), False),
        ((9, 0, 0), True),
        ((17, 59, 59), True),
        ((18, 0, 0), False),
    ],
)
def test_in_daily_window_within_a_day(hms, inside):
    assert calendar.in_daily_window(k(2026, 12, 1, *hms), "09:00", "18:00", KST) is inside


def test_in_daily_window_equal_ends_is_empty():
    for hour in range(24):
        assert not calendar.in_daily_window(k(2026, 12, 1, hour), "09:00", "09:00", KST)


def test_in_daily_window_reads_local_time_of_any_offset():
    at_2300_kst = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    also = datetime(2026, 12, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert calendar.in_daily_window(at_2300_kst, "23:00", "09:00", KST)
    assert calendar.in_daily_window(also, "23:00", "09:00", KST)


# ── ages ─────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("birth", "on", "age"),
    [
        ("2007-12-01", k(2026, 11, 30, 23, 59, 59), 18),
        ("2007-12-01", k(2026, 12, 1), 19),
        ("2007-12-01", datetime(2026, 11, 30, 15, 0, tzinfo=UTC), 19),  # already 1 Dec in KST
        ("2008-02-29", k(2027, 2, 28), 18),  # common year: the new age on 1 March
        ("2008-02-29", k(2027, 3, 1), 19),
        ("2008-02-29", k(2028, 2, 28), 19),
        ("2008-02-29", k(2028, 2, 29), 20),  # leap year: on the day itself
        ("2026-12-01", k(2026, 12, 1), 0),
        ("2000-01-01", k(2026, 12, 31, 23, 59), 26),
    ],
)
def test_age_on(birth, on, age):
    assert calendar.age_on(birth, on, KST) == age


# ── calendar months, days, hours ─────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("start", "count", "expected"),
    [
        (k(2026, 11, 30, 10), 3, k(2027, 2, 28, 10)),
        (k(2027, 11, 30, 10), 3, k(2028, 2, 29, 10)),
        (k(2026, 1, 31, 8), 1, k(2026, 2, 28, 8)),
        (k(2026, 3, 31, 8), -1, k(2026, 2, 28, 8)),
        (k(2026, 12, 15, 23, 59, 59), 3, k(2027, 3, 15, 23, 59, 59)),
        (k(2026, 11, 30, 0, 30), 3, k(2027, 2, 28, 0, 30)),  # counted in KST, not UTC
        (k(2026, 5, 31), 0, k(2026, 5, 31)),
    ],
)
def test_add_calendar_months(start, count, expected):
    result = calendar.add_calendar_months(start, count, KST)
    assert result == expected and result.tzinfo is UTC


def test_add_days_keeps_the_local_wall_clock():
    assert calendar.add_days(k(2026, 12, 31, 22), 1, KST) == k(2027, 1, 1, 22)
    assert calendar.add_days(k(2028, 2, 28, 0), 1, KST) == k(2028, 2, 29)
    assert calendar.add_days(k(2026, 2, 28, 0), 1, KST) == k(2026, 3, 1)
    assert calendar.add_days(k(2026, 3, 1), -1, KST) == k(2026, 2, 28)


def test_add_days_in_a_zone_with_daylight_saving():
    """Across a DST change a day is 23 or 25 hours, and the wall clock stays put."""
    berlin = ZoneInfo("Europe/Berlin")
    before = datetime(2026, 3, 28, 12, tzinfo=berlin)
    after = calendar.add_days(before, 1, berlin)
    assert after == datetime(2026, 3, 29, 12, tzinfo=berlin)
    assert after - before == timedelta(hours=23)


def test_add_hours():
    assert calendar.add_hours(k(2026, 12, 31, 22), 3) == k(2027, 1, 1, 1)
    assert calendar.add_hours(k(2026, 12, 1), 10 / 60) == k(2026, 12, 1, 0, 10)
