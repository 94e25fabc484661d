"""The batch timer sweep: many timers claimed, fired and committed per transaction.

Each test seeds invoices straight into the tables (as the billing benchmark does) on its own test
clock, then sweeps; it runs on SQLite and on PostgreSQL (skipped when PostgreSQL is down).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, inspect, select, text

from tests.helpers.kst import KST
from tests.helpers.paths import RULES_PATH
from tollgate.service.application.runtime import Runtime
from tollgate.service.storage.bulk import BulkWriter
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import timers
from tollgate.service.storage.unit_of_work import INSTANCE_COLUMNS

START = datetime(2026, 11, 1, tzinfo=KST)
ISSUE_AT = datetime(2026, 11, 3, tzinfo=KST)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sweep.db'}"
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture
def runtime(database_url: str) -> Iterator[Runtime]:
    runtime = Runtime(Database(database_url))
    runtime.bootstrap(RULES_PATH)
    yield runtime
    runtime.bootstrap(RULES_PATH)  # a test may have activated other rules on the shared database
    runtime.db.dispose()


class Month:
    """Invoices of usage month 2026-10 on a fresh test clock, seeded with bulk inserts."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tag = secrets.token_hex(4)
        self.clock = f"sweep_{self.tag}"
        runtime.create_clock(START, self.clock)

    def invoice(self, n: int, *, card: bool = False, usage: int = 1_000, credit: int = 0,
                usage_month: str = "2026-10") -> str:
        """Account n (with an active card, and a credit of `credit` KRW if given) and its open
        invoice with the issue timer; returns the invoice id."""
        with self.runtime.db.transaction() as conn:
            return self._seed(BulkWriter(conn), n, card=card, usage=usage, credit=credit,
                              usage_month=usage_month)

    def card_payers(self, count: int) -> list[str]:
        """`invoice(n, card=True)` for n in 0..count-1, in one transaction."""
        with self.runtime.db.transaction() as conn:
            bulk = BulkWriter(conn)
            return [self._seed(bulk, n, card=True) for n in range(count)]

    def _seed(self, bulk: BulkWriter, n: int, *, card: bool = False, usage: int = 1_000, credit: int = 0,
              usage_month: str = "2026-10") -> str:
        account, invoice = f"acct_{self.tag}_{n}", f"inv_{self.tag}_{n}"
        js, t0 = bulk.js, bulk.ts(START)

        def row(id_: str, workflow: str, state: str, context: dict[str, Any], ref: str | None,
                month: str | None = None) -> tuple[Any, ...]:
            return (id_, workflow, state, js(context), js({}), 1, 0, self.clock, ref, t0, t0)

        rows = [row(account, "signup", "active", {"country": "KR", "member_type": "business",
                                                   "email": f"{account}@example.com"}, None),
                row(invoice, "invoice", "open", {"account": account, "usage_month": usage_month,
                                                 "usage": usage}, account, usage_month)]
        if card:
            rows.append(row(f"pm_{self.tag}_{n}", "payment_method", "active",
                            {"account": account, "channel": "web", "method": "credit_card"}, account))
        if credit:
            rows.append(row(f"cr_{self.tag}_{n}", "credit", "active",
                            {"account": account, "amount": credit, "balance": credit,
                             "expires_at": "2027-06-30T15:00:00+00:00"}, account))
        bulk.insert("instances", INSTANCE_COLUMNS, rows)
        bulk.insert("timers", ("instance", "name", "event", "due_at", "clock"),
                    [(invoice, "invoice_issue", "issue", bulk.ts(ISSUE_AT), self.clock)])
        return invoice

    def state(self, instance: str) -> str:
        return str(self.runtime.get_instance(instance)["state"])

    def events(self, instance: str) -> list[tuple[str, str, str]]:
        return [(h["event"], h["outcome"], h["to"]) for h in self.runtime.history(instance)]

    def timers_left_due(self, until: datetime) -> int:
        with self.runtime.db.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(timers).where(
                timers.c.clock == self.clock, timers.c.due_at <= until)).scalar_one())


def test_timers_due_at_one_instant_fire_in_one_batch(runtime: Runtime) -> None:
    month = Month(runtime)
    invoices = [month.invoice(n, card=n % 2 == 0) for n in range(12)]
    handled, entries = runtime.sweep(month.clock, ISSUE_AT, batch=100)
    assert handled == 12
    assert sorted(e["instance"] for e in entries) == sorted(invoices)
    assert {(e["event"], e["outcome"], e["to"]) for e in entries} == {("issue", "applied", "issued")}
    assert all(month.events(i) == [("issue", "applied", "issued")] for i in invoices)
    assert runtime.sweep(month.clock, ISSUE_AT, batch=100) == (0, [])
    # a batch smaller than the instant's timers: the rest go in the next batches, each once
    more = Month(runtime)
    others = [more.invoice(n) for n in range(7)]
    assert [runtime.sweep(more.clock, ISSUE_AT, batch=3)[0] for _ in range(4)] == [3, 3, 1, 0]
    assert all(more.events(i) == [("issue", "applied", "issued")] for i in others)


def test_begin_grace_armed_at_the_instant_fires_in_the_same_advance(runtime: Runtime) -> None:
    month = Month(runtime)
    invoice = month.invoice(1, card=True)
    runtime.advance_clock(month.clock, datetime(2026, 11, 15, 0, 0, tzinfo=KST), collect=False)
    assert month.state(invoice) == "grace"
    events = [e for e, _, _ in month.events(invoice)]
    assert events == ["issue"] + ["start_autopay"] * 5 + ["mark_overdue", "begin_grace"]
    grace = runtime.history(invoice)[-2:]
    assert grace[0]["at"] == grace[1]["at"]  # the same instant, the same advance


def test_denied_timer_is_dropped_and_recorded(runtime: Runtime) -> None:
    month = Month(runtime)
    invoice = month.invoice(1, card=False)  # a virtual-account payer: autopay is denied
    result = runtime.advance_clock(month.clock, datetime(2026, 11, 12, tzinfo=KST))
    autopay = [e for e in result["fired"] if e["event"] == "start_autopay"]
    assert len(autopay) == 1 and autopay[0]["outcome"] == "denied"
    assert [r["rule"] for r in autopay[0]["reasons"]] == ["autopay_method_available"]
    assert month.events(invoice) == [("issue", "applied", "issued"), ("start_autopay", "denied", "issued")]
    timers = {t["name"] for t in runtime.get_instance(invoice)["timers"]}
    assert timers == {"overdue_after_autopay"}  # the denied autopay timer is gone, not retried


def test_send_failure_rolls_back_only_that_timers_effects(runtime: Runtime, tmp_path: Path) -> None:
    rules = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    rules["rules"]["small_consumption_only"] = {
        "workflow": "credit", "events": ["consume"], "guard": "data.amount < 5000",
        "message": {"ko": "테스트: 5,000원 미만만 차감합니다.",
                    "en": "Test: only amounts under 5,000 are consumed."}}
    modified = tmp_path / "rules.yaml"
    modified.write_text(yaml.safe_dump(rules, allow_unicode=True, sort_keys=False), encoding="utf-8")
    runtime.bootstrap(modified)
    month = Month(runtime)
    small = month.invoice(1, usage=3_000, credit=10_000)
    big = month.invoice(2, usage=8_000, credit=10_000)
    plain = month.invoice(3, usage=8_000)
    handled, entries = runtime.sweep(month.clock, ISSUE_AT, batch=100)
    assert handled == 3
    outcome = {e["instance"]: e["outcome"] for e in entries}
    assert outcome == {small: "applied", big: "denied", plain: "applied"}
    assert month.state(small) == "paid"  # the credit covered it
    assert month.state(plain) == "issued"
    assert month.state(big) == "open"
    assert month.events(big) == [("issue", "denied", "open")]
    assert runtime.get_instance(f"cr_{month.tag}_2")["context"]["balance"] == 10_000  # consume rolled back
    assert runtime.get_instance(f"cr_{month.tag}_1")["context"]["balance"] == 7_000
    assert runtime.notifications(big) == []
    assert len(runtime.notifications(small)) == 2
    assert runtime.get_instance(big)["timers"] == []  # the failed timer is dropped with its attempt


def test_two_sweepers_never_fire_a_timer_twice(runtime: Runtime, database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("concurrent sweepers with separate connections are a PostgreSQL scenario")
    month = Month(runtime)
    invoices = [month.invoice(n, card=n % 3 != 0) for n in range(120)]
    until = datetime(2026, 11, 10, 12, tzinfo=KST)
    handled: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def sweeper() -> None:
        worker = Runtime(Database(database_url))
        try:
            start.wait()
            while True:
                count, _ = worker.sweep(month.clock, until, batch=15, collect=False)
                if not count and not month.timers_left_due(until):
                    break
                handled.append(count)
        except BaseException as error:  # reported by the test thread
            errors.append(error)
        finally:
            worker.db.dispose()

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sum(handled) == 240  # 120 issues + 120 first autopay days
    with runtime.db.engine.connect() as conn:
        twice = conn.execute(text(
            "SELECT count(*) FROM (SELECT instance, event FROM history WHERE instance LIKE :p "
            "GROUP BY instance, event HAVING count(*) > 1) AS t"), {"p": f"inv_{month.tag}_%"}).scalar_one()
    assert twice == 0
    for n, invoice in enumerate(invoices):
        want = "autopay" if n % 3 != 0 else "issued"
        assert month.state(invoice) == want


def test_the_sweep_order_is_indexed(runtime: Runtime) -> None:
    """Migration 0003: the claim's ORDER BY due_at, instance, name LIMIT n reads the index in
    order instead of sorting every timer of the instant (quadratic in a million-timer month)."""
    indexes = {i["name"]: i["column_names"] for i in inspect(runtime.db.engine).get_indexes("timers")}
    assert indexes["ix_timers_due"] == ["clock", "due_at", "instance", "name"]


def test_bulk_history_and_notifications_read_back_exactly(runtime: Runtime) -> None:
    """History and notification rows go through COPY on PostgreSQL and multi-row INSERTs on
    SQLite: awkward JSON (Korean, quotes, backslashes, tabs, newlines, nesting) reads back as written."""
    from sqlalchemy import insert, select

    from tollgate.service.storage.tables import history, instances, notifications
    from tollgate.service.storage.unit_of_work import HISTORY_COLUMNS, NOTIFICATION_COLUMNS

    tag = secrets.token_hex(4)
    awkward = {"ko": "즉시납부는 \"전액\"만", "path": "C:\\tmp\\x", "lines": "a\tb\nc",
               "nested": [{"n": 1}, None]}
    with runtime.db.transaction() as conn:
        conn.execute(insert(instances).values(
            id=f"bulk_{tag}", workflow="invoice", state="open", context={}, secrets={}, version=1,
            history_seq=0, created_at=START, updated_at=START))
        bulk = BulkWriter(conn)
        rows = [(f"bulk_{tag}", seq, "issue", "open", "issued", "applied", bulk.js([awkward]), bulk.js([]),
                 bulk.js(awkward if seq % 2 else {}), bulk.ts(START), 1, "timer",
                 bulk.js({"context": awkward}) if seq % 3 else None) for seq in range(1, 251)]
        bulk.insert("history", HISTORY_COLUMNS, rows)
        bulk.insert("notifications", NOTIFICATION_COLUMNS,
                    [(f"bulk_{tag}", "invoice_issued", "email", "멤버@example.com", bulk.js(awkward),
                      bulk.ts(START))] * 3)
    with runtime.db.read() as conn:
        stored = conn.execute(select(history.c.seq, history.c.reasons, history.c.data, history.c.at,
                                     history.c.inputs)
                              .where(history.c.instance == f"bulk_{tag}").order_by(history.c.seq)).all()
        sent = conn.execute(select(notifications.c.recipient, notifications.c.payload)
                            .where(notifications.c.instance == f"bulk_{tag}")).all()
    assert [s.seq for s in stored] == list(range(1, 251))
    assert all(s.reasons == [awkward] and s.data == (awkward if s.seq % 2 else {}) for s in stored)
    assert all(s.at == START for s in stored)
    assert all(s.inputs == ({"context": awkward} if s.seq % 3 else None) for s in stored)  # NULL stays NULL
    assert sent == [("멤버@example.com", awkward)] * 3
