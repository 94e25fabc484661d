"""`/clocks`: test clocks (like Stripe's); advancing one fires every due timer in time order.

An advance answers the counts of what it fired per event and outcome and the first page of the
fired timers; `next_cursor` reads the rest from `GET /clocks/{id}/fired`, a page at a time out
of the history (a month of a million invoices would otherwise answer ~150 MB, built in memory).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from typing import Any

from flask import Blueprint, Response, request

from tollgate.service.api.routes import bind
from tollgate.service.api.support import json_body, parse_timestamp, reply, runtime
from tollgate.workflows.exceptions import BadRequest, Problem

bp = Blueprint("clocks", __name__)

#: Fired timers per page: in the advance's reply (its `limit`) and of `GET /clocks/{id}/fired`.
DEFAULT_FIRED_LIMIT = 500
_CURSOR = re.compile(r"fired:(\d{1,18}):(\d{1,18}):(\d{1,18})")


@bind(bp)
def create_clock() -> Response:
    body = json_body("create_clock")
    clock = runtime().create_clock(parse_timestamp(body["now"], "now"), body.get("id"))
    return reply(clock, 201, {"Location": f"/clocks/{clock['id']}"})


@bind(bp)
def get_clock(id: str) -> Response:
    return reply(runtime().get_clock(id))


def _cursor(first: int, last: int, after: int) -> str:
    return base64.urlsafe_b64encode(f"fired:{first}:{last}:{after}".encode()).decode().rstrip("=")


def _page(clock_id: str, first: int, last: int, after: int | None, limit: int) -> dict[str, Any]:
    items, next_after = runtime().fired_page(clock_id, first, last, after=after, limit=limit)
    return {"fired": items, "next_cursor": None if next_after is None else _cursor(first, last, next_after)}


@bind(bp)
def advance_clock(id: str) -> Response:
    body = json_body("advance_clock")
    # Timers fire as themselves ("timer"), whoever moved the clock, as the scheduler's do.
    advanced = runtime().advance_clock(id, parse_timestamp(body["to"], "to"), collect="counts")
    first, last = advanced["history"]
    # int(): JSON Schema counts 191.0 as an integer
    page = _page(id, first, last, None, int(body.get("limit", DEFAULT_FIRED_LIMIT)))
    return reply({"id": advanced["id"], "now": advanced["now"], **page, "counts": advanced["counts"]})


def _refused(parameter: str, detail: str) -> BadRequest:
    return BadRequest(detail, [Problem(parameter, detail.rstrip("."), file="query")])


@bind(bp)
def list_fired(id: str) -> Response:
    """The next page of an advance's fired timers, after the `next_cursor` it (or a page) gave."""
    runtime().get_clock(id)  # 404 for an unknown clock
    text = request.args.get("cursor")
    if not text:
        raise _refused("cursor", "The query parameter cursor is required: give the next_cursor of the "
                       "advance or of the previous page.")
    raw = ""
    if len(text) < 120:
        with contextlib.suppress(ValueError, binascii.Error):
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    match = _CURSOR.fullmatch(raw)
    if match is None:
        raise _refused("cursor", "The cursor is not one this server issued; send the next_cursor of the "
                       "advance or of the previous page unchanged.")
    limit_text = request.args.get("limit", str(DEFAULT_FIRED_LIMIT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 500:
        raise _refused("limit", f"The query parameter limit='{limit_text}' is not a whole number from 1 "
                       "to 500.")
    first, last, after = (int(g) for g in match.groups())
    return reply({"id": id, **_page(id, first, last, after, int(limit_text))})
