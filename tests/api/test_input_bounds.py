"""Bad input never yields a 500, and nothing is accepted that can only fail later (issue 11, items 2
and 7): amounts, years and nesting are bounded where they enter (workflows/limits.py), every
refusal is a 400 naming the field, and cursors are decoded defensively."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.client import Client
from tests.helpers.kst import kst_instant
from tollgate.service.api.support import API_SCHEMAS
from tollgate.service.application.policy_files import definitions
from tollgate.workflows import limits

DEFINITIONS = Path(__file__).resolve().parents[2] / "workflows" / "definitions"


def refused(response: Any, path: str, file: str | None = None) -> dict[str, Any]:
    """A 400 problem+json whose errors name `path` (in `file`: body, context, <event>.data, query)."""
    assert response.status_code == 400, response.get_json()
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["detail"][0].isupper() and body["detail"].endswith("."), body
    named = [(e["path"], e.get("file")) for e in body.get("errors", [])]
    assert any(p == path and (file is None or f == file) for p, f in named), named
    return body


def signed_up(api: Client, now: str) -> tuple[str, str]:
    """A clock at `now` and an account on it driven to payment_method_required."""
    clock = api.post("/clocks", json={"now": now})
    assert clock.status_code == 201, clock.get_json()
    clock_id = clock.get_json()["id"]
    return clock_id, api.signup(clock=clock_id, member_type="business")  # no age check


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def cursor_of(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# ── amounts ───────────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("amount", [2**64, 2**64 + 1, 10**30])
def test_an_amount_of_2_to_the_64_or_more_is_400_naming_the_amount(api: Client, amount: int) -> None:
    account = api.signup()
    invoice = api.create("invoice", {"account": account, "usage_month": "2025-02"})["id"]
    response = api.post(f"/instances/{invoice}/events", data=f'{{"event": "add_usage", "data": '
                        f'{{"amount": {amount}}}}}', content_type="application/json")
    body = refused(response, response.get_json().get("errors", [{}])[0].get("path", "?"))
    assert "amount" in body["errors"][0]["path"]


@pytest.mark.parametrize("amount", [2**63 - 1, 2**63, 2**64 - 1, limits.MAX_AMOUNT + 1])
def test_a_huge_amount_is_refused_when_it_enters_not_accepted_and_then_unpayable(
        api: Client, amount: int) -> None:
    account = api.signup()
    invoice = api.create("invoice", {"account": account, "usage_month": "2025-02"})["id"]
    response = api.post(f"/instances/{invoice}/events", data=f'{{"event": "add_usage", "data": '
                        f'{{"amount": {amount}}}}}', content_type="application/json")
    refused(response, "$.amount", "add_usage.data") if amount <= limits.MAX_JSON_INTEGER else \
        refused(response, "$.data.amount", "body")
    assert api.get(f"/instances/{invoice}").get_json()["context"].get("usage", 0) == 0


def test_an_invoice_at_the_maximum_amount_is_issued_and_paid_and_its_usage_cannot_exceed_it(
        api: Client) -> None:
    clock, account = signed_up(api, "2026-10-15T10:00:00+09:00")
    invoice = api.create("invoice", {"account": account, "usage_month": "2026-10"})["id"]
    api.fire(invoice, "add_usage", {"amount": limits.MAX_AMOUNT - 1})
    refused(api.post(f"/instances/{invoice}/events", json={"event": "add_usage", "data": {"amount": 2}}),
            "$.amount", "add_usage.data")
    api.fire(invoice, "add_usage", {"amount": 1})
    advanced = api.post(f"/clocks/{clock}/advance", json={"to": "2026-11-03T15:00:00+09:00"})
    assert advanced.status_code == 200, advanced.get_json()
    issued = api.get(f"/instances/{invoice}").get_json()
    assert issued["state"] == "issued" and issued["context"]["amount_due"] == limits.MAX_AMOUNT
    paid = api.fire(invoice, "pay_now", {"amount": limits.MAX_AMOUNT})
    assert paid["state"] == "paid"


@pytest.mark.parametrize("value", [2**53, -(2**53), 2**63, 2**64 - 1, -(2**63)])
def test_an_integer_beyond_2_to_the_53_anywhere_in_a_body_is_400_naming_it(api: Client, value: int) -> None:
    account = api.create("signup")["id"]
    data = {"country": "KR", "member_type": "business", "note": {"n": [value]}}
    response = api.post(f"/instances/{account}/events", content_type="application/json",
                        data=json.dumps({"event": "select_type", "data": data}))
    refused(response, "$.data.note.n[0]", "body")
    assert api.get(f"/instances/{account}").get_json()["state"] == "type_selection"


# ── years ─────────────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("now", ["0001-01-01T00:00:00+09:00", "9999-12-31T23:59:59-14:00",
                                 "9999-12-31T00:00:00Z", "1999-12-31T23:59:59+09:00", "2200-01-01T00:00:00Z"])
def test_a_clock_outside_the_supported_years_is_400_naming_now(api: Client, now: str) -> None:
    body = refused(api.post("/clocks", json={"now": now}), "$.now", "body")
    assert "2000-2199" in body["detail"]


def test_a_clock_at_the_first_supported_instant_runs_its_timers(api: Client) -> None:
    clock, account = signed_up(api, "2000-01-01T00:00:00+14:00")
    fresh = api.create("signup", clock=clock)["id"]
    invoice = api.create("invoice", {"account": account, "usage_month": "2000-01"})["id"]
    advanced = api.post(f"/clocks/{clock}/advance", json={"to": "2000-02-10T12:00:00+09:00"})
    assert advanced.status_code == 200, advanced.get_json()
    assert api.get(f"/instances/{fresh}").get_json()["state"] == "expired"
    assert api.get(f"/instances/{invoice}").get_json()["state"] == "paid"  # nothing due


def test_a_clock_at_the_last_supported_instant_arms_timers_and_cannot_leave_the_range(api: Client) -> None:
    clock, account = signed_up(api, "2199-12-31T23:59:59-14:00")
    fresh = api.create("signup", clock=clock)
    assert [t["event"] for t in fresh["timers"]] == ["expire"]
    assert fresh["timers"][0]["at"].startswith("2200-01-")
    invoice = api.create("invoice", {"account": account, "usage_month": "2199-12"})
    assert invoice["timers"][0]["at"].startswith("2200-01-")
    refused(api.post(f"/clocks/{clock}/advance", json={"to": "2200-01-01T00:00:00Z"}), "$.to", "body")
    assert api.post(f"/clocks/{clock}/advance", json={"to": "2199-12-31T23:59:59-14:00"}).status_code == 200


@pytest.mark.parametrize("month", ["9999-11", "9999-12", "0000-01", "1999-12", "2200-01"])
def test_an_invoice_for_a_usage_month_outside_the_supported_years_is_400_naming_context_usage_month(
        api: Client, month: str) -> None:
    account = api.signup()
    response = api.post("/workflows/invoice/instances",
                        json={"context": {"account": account, "usage_month": month}})
    body = refused(response, "$.usage_month", "context")
    assert "usage_month" in body["detail"] and "2000-2199" in body["detail"]


def test_a_deposit_dated_outside_the_supported_years_is_400_naming_deposited_at(api: Client) -> None:
    clock, account = signed_up(api, "2026-10-15T10:00:00+09:00")
    invoice = api.create("invoice", {"account": account, "usage_month": "2026-10"})["id"]
    api.fire(invoice, "add_usage", {"amount": 5000})
    api.post(f"/clocks/{clock}/advance", json={"to": "2026-11-03T12:00:00+09:00"})
    for when in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z", "1999-12-31T23:59:59Z"):
        response = api.post(f"/instances/{invoice}/events",
                            json={"event": "deposit", "data": {"amount": 5000, "deposited_at": when}})
        refused(response, "$.deposited_at", "deposit.data")
    assert len(api.get(f"/instances/{invoice}/history").get_json()["items"]) == 3  # no denial recorded


@pytest.mark.parametrize("born", ["0001-01-01", "9999-12-31", "1899-12-31", "2200-01-01"])
def test_a_birth_date_outside_the_supported_years_is_400_naming_birth_date(api: Client, born: str) -> None:
    account = api.create("signup")["id"]
    response = api.post(f"/instances/{account}/events", json={
        "event": "select_type", "data": {"country": "KR", "member_type": "individual", "birth_date": born}})
    refused(response, "$.birth_date", "select_type.data")


def test_a_birth_date_at_the_edges_of_the_supported_years_is_accepted(api: Client) -> None:
    for born in ("1900-01-01", "2199-12-31"):
        account = api.create("signup")["id"]
        api.fire(account, "select_type", {"country": "KR", "member_type": "business", "birth_date": born})


# ── nesting and cursors ───────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("depth", [30, 31, 255, 300, 1000, 1022, 1100])
def test_event_data_nested_deeper_than_the_limit_is_400_naming_where(api: Client, depth: int) -> None:
    account = api.create("signup")["id"]
    raw = ('{"event": "select_type", "data": {"country": "KR", "member_type": "business", "x": '
           + nested_json(depth) + "}}")
    response = api.post(f"/instances/{account}/events", data=raw, content_type="application/json")
    if depth + 2 <= limits.MAX_JSON_DEPTH:  # body, data, then the arrays
        assert response.status_code == 200, response.get_json()
        return
    body = response.get_json()
    assert response.status_code == 400, body
    assert f"nested deeper than {limits.MAX_JSON_DEPTH} levels" in body["detail"]
    if depth < 1022:  # orjson itself stops at 1,024 levels and says where (line, column)
        refused(response, "$.data.x" + "[0]" * (limits.MAX_JSON_DEPTH - 2), "body")  # level 33
    assert api.get(f"/instances/{account}").get_json()["state"] == "type_selection"


@pytest.mark.parametrize("cursor", [
    cursor_of(json.dumps(["2026-01-01T00:00:00", "acct_x"])),     # a naive timestamp
    cursor_of(nested_json(1500)),                                 # 1,500 nested arrays
    cursor_of(json.dumps(["9999-12-31T23:59:59-14:00", "x"])),
    cursor_of(json.dumps([1, 2])), cursor_of(json.dumps({"a": 1})), cursor_of("\xff"), "%%%", "a" * 5000,
], ids=["naive", "nested_1500", "year_9999", "numbers", "object", "not_ascii", "not_base64", "long"])
def test_a_cursor_this_server_did_not_issue_is_400(api: Client, cursor: str) -> None:
    response = api.get("/instances", query_string={"cursor": cursor})
    body = refused(response, "cursor", "query")
    assert body["detail"].startswith("The cursor is not one this server issued")


def test_the_cursors_the_server_issues_still_page_through_every_instance(api: Client) -> None:
    created = {api.create("signup")["id"] for _ in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        page = api.get("/instances", query_string={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.get_json()
        seen += [item["id"] for item in page.get_json()["items"]]
        cursor = page.get_json()["next_cursor"]
        if cursor is None:
            break
    assert set(seen) == created and len(seen) == len(created)


# ── the schemas repeat workflows/limits.py ──────────────────────────────────────────────────────

def _properties(schema: Any) -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(schema, dict):
        for name, sub in schema.get("properties", {}).items():
            found.append((name, sub))
            found += _properties(sub)
    return found


def test_every_amount_and_date_field_of_the_schemas_carries_the_bounds_of_workflows_limits() -> None:
    patterns = {"usage_month": limits.MONTH_PATTERN, "deposited_at": limits.TIMESTAMP_PATTERN,
                "birth_date": limits.DATE_PATTERN, "now": limits.TIMESTAMP_PATTERN,
                "to": limits.TIMESTAMP_PATTERN}
    schemas = [d.context_schema for d in definitions().values()]
    schemas += [e.data_schema for d in definitions().values() for e in d.events.values()]
    schemas += [json.loads((API_SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
                for name in ("create_clock", "advance_clock")]
    seen = set()
    for schema in schemas:
        for name, sub in _properties(schema):
            if name == "amount":
                assert sub.get("type") == "integer" and sub.get("maximum") == limits.MAX_AMOUNT, sub
                seen.add(name)
            if name in patterns:
                assert sub.get("pattern") == patterns[name], (name, sub)
                assert str(limits.FIRST_YEAR if name != "birth_date" else limits.FIRST_BIRTH_YEAR) in \
                    sub["description"], sub
                seen.add(name)
    assert seen == {"amount", *patterns}
    assert re.fullmatch(limits.TIMESTAMP_PATTERN, "2199-12-31T23:59:59.123-14:00")
    assert not re.fullmatch(limits.TIMESTAMP_PATTERN, "2200-01-01T00:00:00Z")
    for path in DEFINITIONS.glob("*.yaml"):  # the YAML text itself, as an editor sees it
        yaml.safe_load(path.read_text(encoding="utf-8"))


def test_every_timer_a_clock_in_range_can_arm_is_representable(api: Client) -> None:
    """The last instant of the supported years, plus a signup, an invoice for its month and a
    credit: every armed timer lies within a year after it."""
    _, account = signed_up(api, "2199-12-31T23:59:59-14:00")
    instances = [api.create("invoice", {"account": account, "usage_month": "2199-12"}),
                 api.create("credit", {"account": account}), api.get(f"/instances/{account}").get_json()]
    last = kst_instant(2199, 12, 31, 23, 59, 59)
    for instance in instances:
        for timer in instance["timers"]:
            assert timer["at"] < f"{last.year + 2}", timer
