"""One broken timer never stops the others (issue 11, item 2).

The rules get one more invoice timer whose `at` reads a field no invoice has, armed only for
the invoice whose usage is 4,242 (`BROKEN_USAGE`): issuing that invoice fails at run time. That
attempt is recorded in its history as `failed` with the error, its timer is parked in
`failed_timers` (shown by `GET /instances/{id}`, logged on `tollgate.timers`), and every other
invoice's timers fire exactly as without it — on SQLite alone, SQLite with its worker pool, and
PostgreSQL. Fired over the API, the same failure answers a 422 problem and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Api, assert_conforms, kst_instant
from sqlalchemy import update

from tests.conftest import KST, RULES_PATH
from tests.service.test_sweep import ISSUE_AT, Month
from tollgate.service.db import Database
from tollgate.service.runtime import Runtime
from tollgate.service.scheduler import MAX_BACKOFF, Scheduler
from tollgate.service.sweeps import Sweeps
from tollgate.service.tables import clocks, timers

BROKEN_USAGE = 4_242
END = datetime(2026, 11, 15, tzinfo=KST)
TIMELINE = ["issue"] + ["start_autopay"] * 5 + ["mark_overdue", "begin_grace"]


def broken_rules() -> str:
    """The bundled rules plus a timer whose schedule fails for the invoice of usage 4,242."""
    rules = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    rules["timers"]["broken_probe"] = {
        "workflow": "invoice", "event": "mark_overdue", "states": ["issued"],
        "when": f"context.usage == {BROKEN_USAGE}", "at": "ts(context.nosuch_field)"}
    return yaml.safe_dump(rules, allow_unicode=True, sort_keys=False)


@pytest.fixture(params=["sqlite", "sqlite-pool", "postgresql"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    if request.param == "postgresql":
        runtime = Runtime(Database(str(request.getfixturevalue("postgres_database"))))
    elif request.param == "sqlite-pool":  # instants of 20 timers or more go to 2 worker processes
        monkeypatch.setattr(Sweeps, "PARALLEL_MIN_TIMERS", 20)
        runtime = Runtime(Database(f"sqlite:///{tmp_path / 'failures.db'}"), workers=2)
    else:
        runtime = Runtime(Database(f"sqlite:///{tmp_path / 'failures.db'}"))
    runtime.bootstrap(RULES_PATH)
    runtime.activate_rules(broken_rules(), source="broken.yaml")
    yield runtime
    runtime.bootstrap(RULES_PATH)  # the PostgreSQL database is shared by the session
    runtime.close()


def test_a_broken_timer_is_parked_and_every_other_timer_fires(
        runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    month = Month(runtime)
    healthy = [month.invoice(n, card=True) for n in range(30)]
    broken = month.invoice(30, card=True, usage=BROKEN_USAGE)
    with caplog.at_level(logging.ERROR, logger="tollgate.timers"):
        result = runtime.advance_clock(month.clock, END, batch=10)
    wrong = [i for i in healthy if [e for e, _, _ in month.events(i)] != TIMELINE]
    assert not wrong, f"{len(wrong)} healthy invoices did not fire every timer"
    # the broken invoice: one failed attempt, nothing applied, its timer parked
    history = runtime.history(broken)
    assert [(h["event"], h["outcome"], h["from"], h["to"], h["actor"]) for h in history] == [
        ("issue", "failed", "open", "open", "timer")]
    reason = history[0]["reasons"][0]
    assert reason["rule"] == "rules_failed" and "ts" in reason["detail"] and broken in reason["detail"]
    instance = runtime.get_instance(broken)
    assert instance["state"] == "open" and instance["version"] == 1
    assert_conforms(instance, "instance")
    [parked] = instance["timers"]
    assert (parked["name"], parked["event"], parked["status"]) == ("invoice_issue", "issue", "failed")
    assert "ts" in parked["error"] and parked["at"] == "2026-11-02T15:00:00+00:00"
    assert [e["outcome"] for e in result["fired"] if e["instance"] == broken] == ["failed"]
    if not runtime._has_workers:  # the worker processes log in their own process
        logged = [r.getMessage() for r in caplog.records if r.name == "tollgate.timers"]
        assert len(logged) == 1
        assert broken in logged[0] and "invoice_issue" in logged[0] and "issue" in logged[0]
        assert "nosuch_field" in logged[0] or "ts" in logged[0]
    # parked, not due: later advances leave it alone, the others go on
    runtime.advance_clock(month.clock, datetime(2026, 12, 31, tzinfo=KST), collect=False)
    assert len(runtime.history(broken)) == 1


def test_a_failing_event_in_a_batch_of_events_is_recorded_and_the_rest_commit(runtime: Runtime) -> None:
    """`fire_many` (e.g. a gateway's report): the event the rules fail on is recorded as
    `failed` and counted so; the other events of its batch commit."""
    month = Month(runtime)
    invoices = [month.invoice(n, card=True, usage=BROKEN_USAGE if n == 3 else 1_000) for n in range(6)]
    with runtime.db.transaction() as conn:  # issue day, with no timer: fire_many alone issues them
        conn.execute(update(timers).where(timers.c.clock == month.clock).values(clock="elsewhere"))
        conn.execute(update(clocks).where(clocks.c.id == month.clock).values(now=ISSUE_AT))
    counts = runtime.fire_many([(i, "issue", {}) for i in invoices], batch=4)
    assert counts == {"applied": 5, "denied": 0, "dropped": 0, "failed": 1}
    assert [month.state(i) for i in invoices] == ["issued"] * 3 + ["open"] + ["issued"] * 2
    assert month.events(invoices[3]) == [("issue", "failed", "open")]
    # no timer fired it: nothing parked (its own issue timer, moved out of the way above, stays armed)
    assert [t.get("status") for t in runtime.get_instance(invoices[3])["timers"]] == [None]


def test_the_same_failure_fired_over_the_api_is_a_422_problem_and_changes_nothing(api: Api) -> None:
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


def test_operators_list_every_parked_timer_with_its_instance_and_error(api: Api) -> None:
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


def test_the_scheduler_backs_off_while_its_sweep_keeps_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    class Down:
        def run_due_timers(self, **_: Any) -> list[dict[str, Any]]:
            raise OSError("the database is down")

    scheduler = Scheduler(Down(), interval=1.0)  # type: ignore[arg-type]
    pauses: list[float] = []

    def wait(pause: float) -> bool:
        pauses.append(pause)
        if len(pauses) == 8:
            scheduler._stop.set()
        return scheduler._stop.is_set()

    monkeypatch.setattr(scheduler._stop, "wait", wait)
    scheduler.run_forever()
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, MAX_BACKOFF, MAX_BACKOFF]


def test_creating_an_instance_whose_timer_the_rules_fail_on_is_a_422_problem(
        api: Api, rules_data: Any) -> None:
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
