"""One broken timer never stops the others (issue 11, item 2).

The rules get one more invoice timer whose `at` reads a field no invoice has, armed only for
the invoice whose usage is 4,242 (`BROKEN_USAGE`): issuing that invoice fails at run time. That
attempt is recorded in its history as `failed` with the error, its timer is parked in
`failed_timers` (shown by `GET /instances/{id}`, logged on `tollgate.timers`), and every other
invoice's timers fire exactly as without it — on SQLite alone, SQLite with its worker pool, and
PostgreSQL. Over the API (tests/api/test_api_timer_failures.py), the same failure answers a 422
problem and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import update

from tests.helpers.kst import KST
from tests.helpers.paths import RULES_PATH
from tests.helpers.schemas import assert_conforms
from tests.service.test_sweep import ISSUE_AT, Month
from tollgate.service.application.parallel import Workers
from tollgate.service.application.runtime import Runtime
from tollgate.service.scheduler import MAX_BACKOFF, Scheduler
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import clocks, timers

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
        monkeypatch.setattr(Workers, "PARALLEL_MIN_TIMERS", 20)
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
    if not runtime.parallel.active:  # the worker processes log in their own process
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
