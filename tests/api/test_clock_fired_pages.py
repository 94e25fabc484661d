"""`POST /clocks/{id}/advance` answers counts per event and outcome and the first page of the
fired timers; `GET /clocks/{id}/fired?cursor=` reads the rest from the history (both backends).

A month of a million invoices must not be answered as one ~150 MB body built in memory: the
advance tallies what it fires per batch (`collect="counts"`) and pages come out of the database.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from flask import Flask

from tests.helpers.client import Client
from tests.helpers.schemas import assert_conforms
from tests.service.test_clock_advances import END, TIMELINE, written
from tests.service.test_sweep import Month
from tollgate.service.application.runtime import Runtime

INVOICES = 40


def _month(app: Flask) -> tuple[Month, list[str]]:
    runtime: Runtime = app.extensions["tollgate"]
    month = Month(runtime)
    return month, month.card_payers(INVOICES)


def _rest(api: Client, clock: str, cursor: str | None, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while cursor is not None:
        page = api.ok("GET", f"/clocks/{clock}/fired?cursor={cursor}&limit={limit}", role="viewer")
        assert_conforms(page, "fired_page")
        assert page["id"] == clock and len(page["fired"]) <= limit
        items.extend(page["fired"])
        cursor = page["next_cursor"]
    return items


def test_an_advance_answers_counts_and_pages_through_every_fired_timer(app: Flask, api: Client) -> None:
    month, invoices = _month(app)
    body = api.ok("POST", f"/clocks/{month.clock}/advance", json={"to": END.isoformat(), "limit": 7},
                  role="operator")
    assert_conforms(body, "clock")
    assert len(body["fired"]) == 7 and body["next_cursor"]
    fired = body["fired"] + _rest(api, month.clock, body["next_cursor"], 25)
    rows = written(app.extensions["tollgate"], f"inv_{month.tag}_")
    assert len(fired) == len(rows) == INVOICES * len(TIMELINE)
    assert [(f["instance"], f["event"], f["outcome"]) for f in fired] == [(i, e, o) for i, e, o, _ in rows]
    stored = [at if at.tzinfo else at.replace(tzinfo=UTC) for _, _, _, at in rows]
    assert [datetime.fromisoformat(f["at"]) for f in fired] == stored
    assert [f["at"] for f in fired] == sorted(f["at"] for f in fired), "in time order"
    by_event = Counter(f["event"] for f in fired)
    assert body["counts"] == {event: {"applied": n} for event, n in by_event.items()}
    assert by_event == Counter(TIMELINE * INVOICES)
    assert set(invoices) == {f["instance"] for f in fired}


def test_a_cursor_reads_only_its_own_advance(app: Flask, api: Client) -> None:
    month, _ = _month(app)
    first = api.ok("POST", f"/clocks/{month.clock}/advance", json={"to": "2026-11-11T00:00:00+09:00",
                                                                   "limit": 1})
    second = api.ok("POST", f"/clocks/{month.clock}/advance", json={"to": END.isoformat(), "limit": 1})
    first_all = first["fired"] + _rest(api, month.clock, first["next_cursor"], 500)
    second_all = second["fired"] + _rest(api, month.clock, second["next_cursor"], 500)
    assert sum(n for c in first["counts"].values() for n in c.values()) == len(first_all)
    assert sum(n for c in second["counts"].values() for n in c.values()) == len(second_all)
    assert max(f["at"] for f in first_all) < min(f["at"] for f in second_all)
    assert len(first_all) + len(second_all) == INVOICES * len(TIMELINE)
    nothing = api.ok("POST", f"/clocks/{month.clock}/advance", json={"to": END.isoformat()})
    assert (nothing["fired"], nothing["counts"], nothing["next_cursor"]) == ([], {}, None)


def test_denied_timers_are_counted_and_listed_with_their_reasons(api: Client) -> None:
    """A partner's card is not payable until support enables it: autopay is denied each day."""
    clock = api.clock("2025-03-05T12:00:00+09:00")
    account = api.signup(clock=clock)
    api.fire(account, "set_partner", {"partner": True}, role="admin")
    api.register_card(account)
    invoice = api.create("invoice", {"account": account, "usage_month": "2025-03"})["id"]
    api.fire(invoice, "add_usage", {"amount": 42_000})
    body = api.ok("POST", f"/clocks/{clock}/advance", json={"to": "2025-04-11T12:00:00+09:00"})
    autopay = [f for f in body["fired"] if f["event"] == "start_autopay"]
    assert autopay and all(f["outcome"] == "denied" and f["reasons"] for f in autopay)
    assert body["counts"]["start_autopay"] == {"denied": len(autopay)}
    assert body["counts"]["issue"] == {"applied": 1}


def test_bad_fired_queries_are_400_naming_the_parameter(app: Flask, api: Client) -> None:
    month, _ = _month(app)
    body = api.ok("POST", f"/clocks/{month.clock}/advance", json={"to": END.isoformat(), "limit": 1})
    cursor = body["next_cursor"]
    for query, parameter in [("", "cursor"), ("cursor=abc", "cursor"), ("cursor=" + "A" * 200, "cursor"),
                             (f"cursor={cursor}&limit=0", "limit"), (f"cursor={cursor}&limit=x", "limit")]:
        response = api.get(f"/clocks/{month.clock}/fired?{query}")
        assert response.status_code == 400, (query, response.get_json())
        assert [p["path"] for p in response.get_json()["errors"]] == [parameter]
    assert api.get(f"/clocks/clk_nosuch/fired?cursor={cursor}").status_code == 404
    whole = api.post(f"/clocks/{month.clock}/advance", json={"to": END.isoformat(), "limit": 2.0})
    assert whole.status_code == 200, "2.0 is an integer to JSON Schema: a limit, not a server error"
    refused = api.post(f"/clocks/{month.clock}/advance", json={"to": END.isoformat(), "limit": 0})
    assert refused.status_code == 400 and "$.limit" in refused.get_json()["detail"]


def test_the_advance_holds_counts_not_an_entry_per_timer(app: Flask) -> None:
    """In the application: `collect="counts"` returns tallies per batch, never the fired list."""
    runtime: Runtime = app.extensions["tollgate"]
    month = Month(runtime)
    month.card_payers(INVOICES)
    result = runtime.advance_clock(month.clock, END, collect="counts", batch=8)
    assert "fired" not in result
    assert result["counts"] == {e: {"applied": INVOICES * n} for e, n in Counter(TIMELINE).items()}
    first, last = result["history"]
    assert last > first
