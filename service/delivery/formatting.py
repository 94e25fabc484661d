"""How a billing notice writes money, months and deadlines, in Korean and English.

These are the Jinja2 filters the email templates use (`templates/email/*.j2`); each takes the
value and the notice's language (`ko` or `en`). Times are shown in Korea Standard Time whatever
the server's zone: the customer reads "2026-11-30 (월) 22:00 KST".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tollgate.workflows import calendar

__all__ = [
    "FILTERS",
    "KST",
    "LANGUAGES",
    "billing_month",
    "deadline",
    "kst",
    "kst_date",
    "money",
    "month_name",
    "to_instant",
]

LANGUAGES = ("ko", "en")
KST = ZoneInfo("Asia/Seoul")
_WEEKDAYS = {"ko": "월화수목금토일", "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")}
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")


def _language(lang: str) -> str:
    if lang not in LANGUAGES:
        raise ValueError(f"The language '{lang}' is not one of {', '.join(LANGUAGES)}.")
    return lang


def money(amount: Any, lang: str) -> str:
    """Whole KRW with thousands separators: `1,234,500원` in Korean, `₩1,234,500` in English."""
    if isinstance(amount, bool) or not isinstance(amount, (int, str)):
        raise TypeError(f"An amount in KRW must be a whole number, not {amount!r}.")
    value = int(amount)
    sign = "-" if value < 0 else ""
    return f"{sign}{abs(value):,}원" if _language(lang) == "ko" else f"{sign}₩{abs(value):,}"


def month_name(month: str, lang: str) -> str:
    """A month "YYYY-MM" as `2026년 10월` or `October 2026`."""
    year, number = calendar.parse_month(str(month))
    return f"{year}년 {number}월" if _language(lang) == "ko" else f"{_MONTHS[number - 1]} {year}"


def billing_month(usage_month: str, lang: str) -> str:
    """The usage month an invoice bills: `2026년 10월 이용분` or `October 2026 usage`."""
    name = month_name(usage_month, lang)
    return f"{name} 이용분" if lang == "ko" else f"{name} usage"


def to_instant(value: Any) -> datetime:
    """An aware datetime from a datetime or an RFC 3339 text (what contexts and payloads hold)."""
    if isinstance(value, datetime):
        instant = value
    elif isinstance(value, str):
        instant = calendar.parse_instant(value)
    else:
        raise TypeError(f"A time must be an RFC 3339 text or a datetime, not {value!r}.")
    if instant.tzinfo is None:
        raise ValueError(f"The time {instant.isoformat()} has no time zone.")
    return instant


def kst(value: Any, lang: str) -> str:
    """An instant in KST with its weekday: `2026-11-25 (수) 23:59 KST` / `2026-11-25 (Wed) 23:59 KST`."""
    local = to_instant(value).astimezone(KST)
    day = _WEEKDAYS[_language(lang)][local.weekday()]
    return f"{local:%Y-%m-%d} ({day}) {local:%H:%M} KST"


def kst_date(value: Any, lang: str) -> str:
    """The KST calendar day of an instant with its weekday: `2026-11-10 (화)` / `2026-11-10 (Tue)`."""
    local = to_instant(value).astimezone(KST)
    return f"{local:%Y-%m-%d} ({_WEEKDAYS[_language(lang)][local.weekday()]})"


def deadline(value: Any, lang: str) -> str:
    """A deadline in KST as the customer reads it: one that falls at local midnight is shown as
    23:59 of the day before (the policy's "until the end of the 30th" is stored as 00:00 of the 1st)."""
    local = to_instant(value).astimezone(KST)
    if (local.hour, local.minute, local.second, local.microsecond) == (0, 0, 0, 0):
        local = local - timedelta(minutes=1)
    return kst(local, lang)


#: The filters the templates may use: `{{ payload.amount_due | money(lang) }}`.
FILTERS = {"money": money, "month_name": month_name, "billing_month": billing_month, "kst": kst,
           "kst_date": kst_date, "deadline": deadline}
