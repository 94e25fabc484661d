"""`GET /notifications`: pages by cursor and filters (instance, account, channel, template,
delivery state, since) like `GET /instances`, with a 400 naming each bad parameter; both backends."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from tests.helpers.client import Client
from tests.helpers.kst import kst_instant
from tests.helpers.schemas import assert_conforms
from tollgate.service.storage.tables import notifications


def _all_pages(api: Client, query: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Every item of the listing `query`, read `limit` at a time; (items, pages read)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        page_query = f"{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        body = api.ok("GET", f"/notifications?{page_query}")
        assert_conforms(body, "notification_list")
        assert len(body["items"]) <= limit
        items.extend(body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages


@pytest.fixture
def outbox(api: Client) -> dict[str, Any]:
    """Two accounts on a clock (each a verification mail), one with a billed invoice (a charge
    request to the gateway on the first autopay day)."""
    clock = api.clock(kst_instant(2025, 3, 5, 12))
    billed = api.signup(clock=clock)
    api.register_card(billed)
    other = api.signup(clock=clock)
    invoice = str(api.create("invoice", {"account": billed, "usage_month": "2025-03"})["id"])
    api.fire(invoice, "add_usage", {"amount": 42_000})
    api.ok("POST", f"/clocks/{clock}/advance", json={"to": kst_instant(2025, 4, 10, 12).isoformat()})
    return {"clock": clock, "billed": billed, "other": other, "invoice": invoice}


def test_pages_follow_the_cursor_oldest_first_without_gaps(api: Client, outbox: dict[str, Any]) -> None:
    everything = api.ok("GET", "/notifications?limit=500")
    assert everything["next_cursor"] is None
    ids = [n["id"] for n in everything["items"]]
    assert ids == sorted(ids) and len(ids) >= 4
    paged, pages = _all_pages(api, "", 1)
    assert [n["id"] for n in paged] == ids and pages == len(ids)
    paged, _ = _all_pages(api, "", 3)
    assert paged == everything["items"]


def test_filters_by_instance_account_channel_and_template(api: Client, outbox: dict[str, Any]) -> None:
    every = api.ok("GET", "/notifications?limit=500")["items"]
    invoice, billed = outbox["invoice"], outbox["billed"]
    by_instance, _ = _all_pages(api, f"instance={invoice}", 1)
    assert by_instance == [n for n in every if n["instance"] == invoice]
    assert {n["template"] for n in by_instance} >= {"charge_request"}
    by_account, _ = _all_pages(api, f"account={billed}", 2)
    mine = {billed, invoice} | {n["instance"] for n in every if n["instance"].startswith("pm_")}
    assert by_account and {n["instance"] for n in by_account} <= mine
    assert outbox["other"] not in {n["instance"] for n in by_account}
    assert invoice in {n["instance"] for n in by_account}, "the account's invoices are its own"
    gateway, _ = _all_pages(api, "channel=gateway", 1)
    assert gateway == [n for n in every if n["channel"] == "gateway"] and gateway
    charges, _ = _all_pages(api, "template=charge_request&channel=gateway", 1)
    assert charges == [n for n in every if n["template"] == "charge_request"]
    assert api.ok("GET", "/notifications?template=no_such_template") == {"items": [], "next_cursor": None}


def test_since_and_delivery_state(app: Flask, api: Client, outbox: dict[str, Any]) -> None:
    every = api.ok("GET", "/notifications?limit=500")["items"]
    since = "2025-04-01T00:00:00+09:00"
    later, _ = _all_pages(api, f"since={since.replace('+', '%2B')}", 1)
    assert later == [n for n in every if n["created_at"] >= "2025-03-31T15:00:00+00:00"]
    assert later and len(later) < len(every)
    # No relay runs here: every notification is pending until the relay's states are set below.
    assert {n["delivery"]["state"] for n in every} == {"pending"}
    assert _all_pages(api, "state=pending", 2)[0] == every
    ids = [n["id"] for n in every]
    chosen = {"delivered": ids[0], "retrying": ids[1], "dead": ids[2]}
    with app.extensions["tollgate"].db.engine.begin() as conn:
        for state, notification in chosen.items():
            conn.execute(update(notifications).where(notifications.c.id == notification)
                         .values(delivery_state=state))
    for state, notification in chosen.items():
        assert [n["id"] for n in _all_pages(api, f"state={state}", 2)[0]] == [notification]
    assert [n["id"] for n in _all_pages(api, "state=pending", 2)[0]] == ids[3:]


@pytest.mark.parametrize(("query", "parameter"), [
    ("limit=0", "limit"), ("limit=501", "limit"), ("limit=ten", "limit"), ("cursor=bm9wZQ", "cursor"),
    ("cursor=" + "A" * 60, "cursor"), ("since=yesterday", "since"), ("since=2025-03-05T12:00:00", "since"),
    ("state=sent", "state"), ("instance=inv_nobody", "instance"), ("account=acct_nobody", "account"),
])
def test_a_bad_parameter_is_400_naming_it(api: Client, query: str, parameter: str) -> None:
    response = api.get(f"/notifications?{query}")
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert parameter in body["detail"]
    assert [p["path"] for p in body["errors"]] == [parameter]
