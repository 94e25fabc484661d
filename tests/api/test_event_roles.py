"""Who may fire which event over the API (SPEC §6), on both backends.

Support actions need admin; the payment gateway reports only charges and deposits; timer events
are the scheduler's (an admin may fire one by hand, recorded as `admin`); and a dry run answers
403 exactly where the real call would.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.client import Client
from tests.helpers.kst import kst_instant
from tests.helpers.paths import RULES_PATH
from tollgate.service.application.policy_files import definitions, load_policy_file

#: (workflow, event) of every timer event: marked `timed` in its definition or fired by a timer.
TIMER_EVENTS = sorted({(wf, name) for wf, d in definitions().items() for name, e in d.events.items()
                       if e.timed}
                      | {(t.workflow, t.event) for t in load_policy_file(RULES_PATH).timers.values()})


def test_the_timer_events_are_those_the_rules_schedule() -> None:
    assert {event for _, event in TIMER_EVENTS} == {"expire", "issue", "start_autopay", "mark_overdue",
                                                    "begin_grace", "suspend"}


def _instance_of(api: Client, workflow: str) -> str:
    if workflow == "signup":
        return str(api.create("signup")["id"])
    account = api.signup()
    api.register_card(account)
    context = {"account": account, **({"usage_month": "2025-02"} if workflow == "invoice" else {})}
    return str(api.create(workflow, context)["id"])


def _history(api: Client, instance: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"/instances/{instance}/history").get_json()["items"]
    return items


@pytest.mark.parametrize(("workflow", "event"), TIMER_EVENTS, ids=[f"{w}.{e}" for w, e in TIMER_EVENTS])
def test_an_operator_may_not_fire_a_timer_event(api: Client, workflow: str, event: str) -> None:
    instance = _instance_of(api, workflow)
    before = _history(api, instance)
    for dry_run in ("", "?dry_run=true"):
        response = api.post(f"/instances/{instance}/events{dry_run}", json={"event": event, "data": {}},
                            role="operator")
        assert response.status_code == 403, response.get_json()
        detail = response.get_json()["detail"]
        assert f"'{event}'" in detail and "scheduler" in detail and "operator" in detail
    assert _history(api, instance) == before, "a refused call records nothing"


def test_an_admin_may_fire_a_timer_event_and_is_recorded_as_admin(api: Client) -> None:
    clock = api.clock(kst_instant(2025, 3, 5, 12))
    by_hand = api.create("signup", clock=clock)["id"]
    left = api.create("signup", clock=clock)["id"]
    assert api.fire(by_hand, "expire", role="admin")["state"] == "expired"
    assert _history(api, by_hand)[-1]["actor"] == "admin"
    api.post(f"/clocks/{clock}/advance", json={"to": kst_instant(2025, 3, 12).isoformat()})
    last = _history(api, left)[-1]
    assert (last["event"], last["actor"]) == ("expire", "timer")


def test_a_dry_run_applies_the_same_role_checks_as_the_real_call(api: Client) -> None:
    account = api.signup()
    api.register_card(account)
    body = {"event": "set_partner", "data": {"partner": True}}
    real = api.post(f"/instances/{account}/events", json=body, role="operator")
    dry = api.post(f"/instances/{account}/events?dry_run=true", json=body, role="operator")
    assert real.status_code == dry.status_code == 403
    assert dry.get_json()["detail"] == real.get_json()["detail"]
    allowed = api.post(f"/instances/{account}/events?dry_run=true", json=body, role="admin")
    assert allowed.status_code == 200 and allowed.get_json()["allowed"] is True


@pytest.mark.parametrize(("event", "data", "status"), [
    ("deposit", {"amount": 1000, "deposited_at": "2025-03-05T11:00:00+09:00"}, 200),
    # charge results count only in autopay: refused by the workflow (409), not by the role
    ("charge_failed", {"reason": "card declined"}, 409),
    ("charge_succeeded", {"payment_ref": "pg-1"}, 409),
])
def test_the_gateway_may_report_charges_and_deposits(api: Client, event: str, data: dict[str, Any],
                                                     status: int) -> None:
    invoice = _instance_of(api, "invoice")
    api.fire(invoice, "add_usage", {"amount": 5000})
    api.fire(invoice, "issue", role="admin")
    dry = api.post(f"/instances/{invoice}/events?dry_run=true", json={"event": event, "data": data},
                   role="gateway")
    assert dry.status_code == status, dry.get_json()
    real = api.post(f"/instances/{invoice}/events", json={"event": event, "data": data}, role="gateway")
    assert real.status_code == status, real.get_json()
    if status == 200:
        last = _history(api, invoice)[-1]
        assert (last["event"], last["actor"]) == (event, "gateway")


@pytest.mark.parametrize(("event", "data"), [
    ("pay_now", {"amount": 5000}), ("add_usage", {"amount": 1}), ("issue", {}),
])
def test_the_gateway_may_fire_nothing_else(api: Client, event: str, data: dict[str, Any]) -> None:
    invoice = _instance_of(api, "invoice")
    before = _history(api, invoice)
    for dry_run in ("", "?dry_run=true"):
        response = api.post(f"/instances/{invoice}/events{dry_run}", json={"event": event, "data": data},
                            role="gateway")
        assert response.status_code == 403, response.get_json()
        assert "gateway" in response.get_json()["detail"] and f"'{event}'" in response.get_json()["detail"]
    assert _history(api, invoice) == before


def test_the_gateway_reads_nothing_and_creates_nothing(api: Client) -> None:
    invoice = _instance_of(api, "invoice")
    assert api.get(f"/instances/{invoice}", role="gateway").status_code == 403
    assert api.get("/notifications", role="gateway").status_code == 403
    assert api.post("/workflows/signup/instances", json={"context": {}}, role="gateway").status_code == 403
