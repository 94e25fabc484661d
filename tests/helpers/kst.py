"""Korea Standard Time, the zone the policy is written in, and aware instants given in it."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

KST = ZoneInfo("Asia/Seoul")


def kst_instant(y: int, m: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    """An aware instant given as Korea Standard Time wall-clock time."""
    return datetime(y, m, d, h, mi, s, tzinfo=KST)
