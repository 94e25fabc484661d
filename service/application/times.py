"""Instants as the API writes them (RFC 3339 in UTC), and real time for the application's default clock."""

from __future__ import annotations

from datetime import UTC, datetime


def system_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()
