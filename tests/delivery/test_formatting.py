"""The filters a billing notice writes with: KRW with separators, billing months, KST dates and
deadlines, in Korean and English (service/delivery/formatting.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tollgate.service.delivery.formatting import billing_month, deadline, kst, kst_date, money, month_name


@pytest.mark.parametrize(("amount", "ko", "en"), [
    (0, "0원", "₩0"),
    (999, "999원", "₩999"),
    (1000, "1,000원", "₩1,000"),
    (1_234_500, "1,234,500원", "₩1,234,500"),
    (1_000_000_000_000, "1,000,000,000,000원", "₩1,000,000,000,000"),
    (-100_000, "-100,000원", "-₩100,000"),
])
def test_money_writes_whole_krw_with_thousands_separators(amount: int, ko: str, en: str) -> None:
    assert money(amount, "ko") == ko
    assert money(amount, "en") == en


@pytest.mark.parametrize("bad", [1.5, None, True, [1]])
def test_money_refuses_what_is_not_a_whole_amount(bad: object) -> None:
    with pytest.raises(TypeError, match="whole number"):
        money(bad, "ko")


def test_an_unknown_language_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="'fr' is not one of ko, en"):
        money(1, "fr")


@pytest.mark.parametrize(("month", "ko", "en"), [
    ("2026-10", "2026년 10월 이용분", "October 2026 usage"),
    ("2026-01", "2026년 1월 이용분", "January 2026 usage"),
    ("2026-12", "2026년 12월 이용분", "December 2026 usage"),
])
def test_billing_month_names_the_usage_month(month: str, ko: str, en: str) -> None:
    assert billing_month(month, "ko") == ko
    assert billing_month(month, "en") == en
    assert month_name(month, "en") == en.removesuffix(" usage")


def test_kst_shows_korean_time_and_weekday_whatever_the_offset_given() -> None:
    # 2026-11-25 14:59 UTC is 23:59 on Wednesday 25 November in Seoul
    for value in ("2026-11-25T14:59:00Z", "2026-11-25T23:59:00+09:00",
                  datetime(2026, 11, 25, 14, 59, tzinfo=UTC),
                  datetime(2026, 11, 25, 9, 59, tzinfo=timezone(timedelta(hours=-5)))):
        assert kst(value, "ko") == "2026-11-25 (수) 23:59 KST"
        assert kst(value, "en") == "2026-11-25 (Wed) 23:59 KST"


def test_kst_date_crosses_the_utc_day_boundary() -> None:
    # 15:30 UTC on the 9th is already the 10th in Seoul
    assert kst_date("2026-11-09T15:30:00Z", "ko") == "2026-11-10 (화)"
    assert kst_date("2026-11-09T15:30:00Z", "en") == "2026-11-10 (Tue)"
    assert kst_date("2026-11-09T14:30:00Z", "en") == "2026-11-09 (Mon)"


def test_a_deadline_at_midnight_reads_as_the_end_of_the_day_before() -> None:
    assert deadline("2026-12-01T00:00:00+09:00", "ko") == "2026-11-30 (월) 23:59 KST"
    assert deadline("2026-12-01T00:00:00+09:00", "en") == "2026-11-30 (Mon) 23:59 KST"


def test_a_deadline_not_at_midnight_is_shown_as_it_is() -> None:
    assert deadline("2026-11-30T22:00:00+09:00", "ko") == "2026-11-30 (월) 22:00 KST"
    assert deadline("2026-12-01T00:00:01+09:00", "en") == "2026-12-01 (Tue) 00:00 KST"


@pytest.mark.parametrize("bad", ["2026-11-25T23:59:00", 20261125, datetime(2026, 11, 25)])
def test_a_time_without_offset_is_refused(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        kst(bad, "ko")
