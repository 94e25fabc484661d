"""A broken timer over HTTP: firing the failing event is a 422 problem that changes nothing,
`GET /timers/failed` lists every parked timer, and creating an instance whose timer the rules fail
on is refused (the runtime side is tests/service/test_timer_failures.py)."""

from __future__ import annotations

from typing import Any

import yaml

from tests.helpers.client import Client
from tests.helpers.kst import kst_instant
from tests.helpers.schemas import assert_conforms
from tests.service.test_timer_failures import BROKEN_USAGE, broken_rules


def test_the_same_failure_fired_over_the_api_is_a_422_problem_and_changes_nothing(api: Client) -> None:
    clock = api.clock(kst_instant(2026, 10, 15, 10))
    account = api.signup(clock=clock, member_type="business")
    invoice = api.create("invoice", {"account": account, "usage_month": "2026-10"})
    api.fire(invoice["id"], "add_usage", {"amount": BROKEN_USAGE})
    response = api.put("/rules", data=broken_rules(), headers={"Content-Type": "application/yaml"},
                       role="policy_editor")
    assert response.status_code == 200, response.get_json()
    api.post(f"/clocks/{clock}/advance", json={"to": "2026-11-03T00:00:00+09:00"})
    before = api.get(f"/instances/{invoice['id']}").get_json()
    history = api.get(f"/instances/{invoice['id']}/history").get_json()["items"]
    assert [(h["event"], h["outcome"]) for h in history] == [
        ("create", "applied"), ("add_usage", "applied"), ("issue", "failed")]
    assert [t.get("status") for t in before["timers"]] == ["failed"]
    fired = api.post(f"/instances/{invoice['id']}/events", json={"event": "issue", "data": {}})
    assert fired.status_code == 422
    problem = fired.get_json()
    assert problem["type"].endswith("/rules_failed") and problem["event"] == "issue"
    assert invoice["id"] in problem["detail"] and "PUT /rules" in problem["detail"]
    assert api.get(f"/instances/{invoice['id']}").get_json() == before  # nothing half-applied
    assert len(api.get(f"/instances/{invoice['id']}/history").get_json()["items"]) == 3


def test_operators_list_every_parked_timer_with_its_instance_and_error(api: Client) -> None:
    """`GET /timers/failed`: the parked timers of every instance in one place (oldest failure
    first), readable by every reading role, narrowed by `instance` or `clock`."""
    clock = api.clock(kst_instant(2026, 10, 15, 10))
    account = api.signup(clock=clock, member_type="business")
    broken = api.create("invoice", {"account": account, "usage_month": "2026-10"})["id"]
    healthy = api.create("invoice", {"account": account, "usage_month": "2026-09"})["id"]
    api.fire(broken, "add_usage", {"amount": BROKEN_USAGE})
    assert api.get("/timers/failed").get_json() == {"items": []}
    response = api.put("/rules", data=broken_rules(), headers={"Content-Type": "application/yaml"},
                       role="policy_editor")
    assert response.status_code == 200, response.get_json()
    api.post(f"/clocks/{clock}/advance", json={"to": "2026-11-03T00:00:00+09:00"})
    listed = api.get("/timers/failed", role="viewer")
    assert listed.status_code == 200
    body = listed.get_json()
    assert_conforms(body, "failed_timer_list")
    assert [(t["instance"], t["workflow"], t["event"], t["clock"]) for t in body["items"]] == [
        (broken, "invoice", "issue", clock)]
    parked = body["items"][0]
    assert "ts" in parked["error"] and parked["at"] == "2026-11-02T15:00:00+00:00"
    assert parked["rules_version"] == api.get("/rules").get_json()["version"]
    assert api.get(f"/timers/failed?instance={broken}").get_json() == body
    assert api.get(f"/timers/failed?clock={clock}").get_json() == body
    assert api.get(f"/timers/failed?instance={healthy}").get_json() == {"items": []}
    assert api.get("/timers/failed?clock=another").get_json() == {"items": []}
    assert api.get("/timers/failed", role=None).status_code == 401


def test_creating_an_instance_whose_timer_the_rules_fail_on_is_a_422_problem(
        api: Client, rules_data: Any) -> None:
    account = api.signup(clock=api.clock(kst_instant(2026, 10, 15, 10)), member_type="business")
    data = rules_data()
    data["timers"]["invoice_issue"]["at"] = "ts(context.nosuch_field)"
    response = api.put("/rules", data=yaml.safe_dump(data, allow_unicode=True, sort_keys=False),
                       headers={"Content-Type": "application/yaml"}, role="policy_editor")
    assert response.status_code == 200, response.get_json()
    created = api.post("/workflows/invoice/instances",
                       json={"context": {"account": account, "usage_month": "2026-10"}})
    assert created.status_code == 422
    assert created.get_json()["type"].endswith("/rules_failed")
    assert created.get_json()["event"] == "create"
    invoices = api.get(f"/instances?workflow=invoice&account={account}").get_json()["items"]
    assert invoices == []  # nothing half-created
