"""RFC 9457 problem documents for every `TollgateError` — the one place errors become JSON."""

from __future__ import annotations

from typing import Any

from tollgate.workflows.exceptions import TollgateError

TYPE_BASE = "https://tollgate.dev/problems/"


def problem(error: TollgateError) -> dict[str, Any]:
    body: dict[str, Any] = {"type": TYPE_BASE + error.type_slug, "title": error.title,
                            "status": error.status, "detail": error.message}
    body.update(error.extra())
    return body
