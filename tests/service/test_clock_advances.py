"""Concurrent advances of one test clock, and concurrent real-time sweepers (issue 11, item 1).

Every due timer fires exactly once, at its due instant, in time order, and a clock never goes
back, whatever runs at once: several advances of one clock (threads of one server, as gunicorn's),
the SQLite worker-process pool, several real-time sweepers. Each test counts the history rows
against the ones a lone advance writes. SQLite runs with the worker pool (instants of 20 timers
or more go to 2 worker processes); PostgreSQL with its row locks (skipped when it is down).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update

from tests.helpers.kst import KST
from tests.helpers.paths import RULES_PATH
from tests.service.test_sweep import START, Month
from tollgate.service.application.parallel import Workers
from tollgate.service.application.runtime import Runtime
from tollgate.service.application.times import rfc3339
from tollgate.service.exceptions import ClockBusy, ClockError
from tollgate.service.storage.bulk import BulkWriter
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import clocks
from tollgate.service.storage.unit_of_work import INSTANCE_COLUMNS

END = datetime(2026, 11, 15, tzinfo=KST)
#: Four advances at once, to different targets: the clock must end at the latest.
TARGETS = [END, datetime(2026, 11, 12, tzinfo=KST), END, datetime(2026, 11, 13, 12, tzinfo=KST)]
INVOICES = 120
#: A card payer's month up to END: issued, five autopay days, overdue, grace.
TIMELINE = ["issue"] + ["start_autopay"] * 5 + ["mark_overdue", "begin_grace"]


@pytest.fixture(params=["sqlite", "postgresql"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    if request.param == "sqlite":
        monkeypatch.setattr(Workers, "PARALLEL_MIN_TIMERS", 20)
        runtime = Runtime(Database(f"sqlite:///{tmp_path / 'advances.db'}"), workers=2)
    else:
        runtime = Runtime(Database(str(request.getfixturevalue("postgres_database"))))
    runtime.bootstrap(RULES_PATH)
    yield runtime
    runtime.close()


def together(count: int, job: Callable[[int], Any]) -> list[Any]:
    """`job(0..count-1)` on `count` threads released at once; results in order, errors raised."""
    start = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            start.wait(timeout=60)
            results[index] = job(index)
        except BaseException as error:  # raised in the test's thread below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    if errors:
        raise errors[0]
    return results


def written(runtime: Runtime, prefix: str) -> list[tuple[str, str, str, datetime]]:
    """(instance, event, outcome, at) of every history row of instances named `prefix…`, in
    the order they were written."""
    with runtime.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT instance, event, outcome, at FROM history WHERE instance LIKE :p "
                                 "ORDER BY id"), {"p": prefix + "%"}).all()
    return [(r[0], r[1], r[2], r[3] if isinstance(r[3], datetime) else datetime.fromisoformat(r[3]))
            for r in rows]


def lone_timeline(runtime: Runtime) -> list[tuple[str, str, datetime]]:
    """What one card payer's invoice records when its clock is advanced to END alone."""
    month = Month(runtime)
    invoice = month.invoice(0, card=True)
    runtime.advance_clock(month.clock, END, collect=False)
    timeline = [(event, outcome, at) for _, event, outcome, at in written(runtime, invoice)]
    assert [event for event, _, _ in timeline] == TIMELINE
    return timeline


def test_concurrent_advances_fire_every_timer_once_in_time_order(runtime: Runtime) -> None:
    want = lone_timeline(runtime)
    month = Month(runtime)
    invoices = [month.invoice(n, card=True) for n in range(INVOICES)]
    results = together(len(TARGETS), lambda i: runtime.advance_clock(month.clock, TARGETS[i], batch=25,
                                                                      collect=False))
    rows = written(runtime, f"inv_{month.tag}_")
    # expected against recorded firings: INVOICES x 8, each once, at its instant
    assert Counter(event for _, event, _, _ in rows) == Counter(TIMELINE * INVOICES)
    per_invoice: dict[str, list[tuple[str, str, datetime]]] = {i: [] for i in invoices}
    for instance, event, outcome, at in rows:
        per_invoice[instance].append((event, outcome, at))
    wrong = [i for i, timeline in per_invoice.items() if timeline != want]
    assert not wrong, (f"{len(wrong)} of {INVOICES} invoices differ from a lone advance, "
                       f"e.g. {per_invoice[wrong[0]]}")
    instants = [at for _, _, _, at in rows]
    assert instants == sorted(instants)  # written in time order across the invoices too
    assert sum(r["fired_count"] for r in results) == len(rows)
    assert runtime.get_clock(month.clock)["now"] == rfc3339(END)
    assert {r["now"] for r in results} <= {rfc3339(t) for t in TARGETS}


def test_a_clock_never_goes_back_under_concurrent_advances(runtime: Runtime) -> None:
    month = Month(runtime)
    for n in range(40):
        month.invoice(n, card=True)
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(runtime.get_clock(month.clock)["now"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # the later target starts first; the earlier one must not pull the clock back when it ends
        together(2, lambda i: runtime.advance_clock(month.clock, [END, TARGETS[1]][i], batch=10,
                                                    collect=False))
    finally:
        done.set()
        watcher.join()
    seen.append(runtime.get_clock(month.clock)["now"])
    moments = [datetime.fromisoformat(s) for s in seen]
    assert moments == sorted(moments)
    assert moments[-1] == END
    with pytest.raises(ClockError):  # asked for explicitly, going back is still refused
        runtime.advance_clock(month.clock, TARGETS[1])


def test_an_advance_waits_for_the_one_holding_the_clock_then_answers_409(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    month = Month(runtime)
    invoice = month.invoice(1, card=True)
    lease = runtime.leases.take(month.clock)  # another advance holds the clock
    monkeypatch.setattr(runtime.leases, "ADVANCE_WAIT_SECONDS", 0.3)
    with pytest.raises(ClockBusy, match="being advanced by another request"):
        runtime.advance_clock(month.clock, END)
    assert month.events(invoice) == []  # it fired nothing meanwhile
    # the holder dies: its lease lapses, and the next advance takes the clock over
    with runtime.db.transaction() as conn:
        conn.execute(update(clocks).where(clocks.c.id == month.clock)
                     .values(lease_expires=datetime.now(KST) - timedelta(seconds=1)))
    runtime.advance_clock(month.clock, END, collect=False)
    assert [e for e, _, _ in month.events(invoice)] == TIMELINE
    # the dead holder, back, finds its lease gone and writes nothing
    with pytest.raises(ClockBusy, match="lost its lease"), runtime.db.transaction() as conn:
        runtime.leases.hold(conn, month.clock, lease)


def _real_time_invoices(runtime: Runtime, tag: str, count: int) -> list[str]:
    """`count` card payers' open invoices on real time, their issue timers due long ago."""
    ids = []
    with runtime.db.transaction() as conn:
        bulk = BulkWriter(conn)
        js, t0 = bulk.js, bulk.ts(START)
        rows, timer_rows = [], []
        for n in range(count):
            account, invoice, card = f"acct_{tag}_{n}", f"inv_{tag}_{n}", f"pm_{tag}_{n}"
            rows += [(account, "signup", "active", js({"country": "KR", "member_type": "business",
                                                       "email": f"{account}@example.com"}),
                      js({}), 1, 0, None, None, t0, t0),
                     (invoice, "invoice", "open", js({"account": account, "usage_month": "2026-10",
                                                      "usage": 1_000}), js({}), 1, 0, None, account, t0, t0),
                     (card, "payment_method", "active", js({"account": account, "channel": "web",
                                                            "method": "credit_card"}),
                      js({}), 1, 0, None, account, t0, t0)]
            timer_rows.append((invoice, "invoice_issue", "issue", bulk.ts(START + timedelta(days=2)), None))
            ids.append(invoice)
        bulk.insert("instances", INSTANCE_COLUMNS, rows)
        bulk.insert("timers", ("instance", "name", "event", "due_at", "clock"), timer_rows)
    return ids


def test_real_time_sweepers_fire_each_timer_once_in_due_order(runtime: Runtime) -> None:
    """Three sweepers (scheduler threads or `tollgate worker` processes, each its own runtime)
    on real-time timers that fell due long ago: each invoice's first autopay day, overdue and
    grace fire once, in that order, whoever sweeps them — even when the sweeper holding an
    invoice's earlier timer is slow (here: its first batch pauses between claiming and firing)."""
    tag = Month(runtime).tag
    invoices = _real_time_invoices(runtime, tag, 60)
    moment = [datetime(2026, 11, 5, 10, tzinfo=KST)]
    sweepers = [Runtime(Database(runtime.db.url), now=lambda: moment[0]) for _ in range(3)]
    try:
        while sweepers[0].run_due_timers(limit=100):  # 11-05: every invoice issued
            pass
        moment[0] = datetime(2026, 11, 20, 10, tzinfo=KST)  # its autopay days and due date passed
        prefetch = sweepers[0].sweeps.prefetch_for
        slow = threading.Event()

        def slow_first_batch(uow: Any, claimed: list[Any]) -> None:
            if not slow.is_set():
                slow.set()
                time.sleep(1.0)
            prefetch(uow, claimed)

        sweepers[0].sweeps.prefetch_for = slow_first_batch  # type: ignore[method-assign]

        def sweep(index: int) -> int:
            if index:
                slow.wait(10)
            total = idle = 0
            while idle < 3:
                handled = len(sweepers[index].run_due_timers(limit=7))
                total += handled
                idle = 0 if handled else idle + 1
            return total

        together(len(sweepers), sweep)
    finally:
        for sweeper in sweepers:
            sweeper.close()
    rows = written(runtime, f"inv_{tag}_")
    per_invoice: dict[str, list[tuple[str, str]]] = {i: [] for i in invoices}
    for instance, event, outcome, _ in rows:
        per_invoice[instance].append((event, outcome))
    # (the first autopay day is long past at 11-20: that attempt is denied, then the invoice is overdue)
    want = [("issue", "applied"), ("start_autopay", "denied"), ("mark_overdue", "applied"),
            ("begin_grace", "applied")]
    wrong = {i: t for i, t in per_invoice.items() if t != want}
    assert not wrong, f"{len(wrong)} of {len(invoices)} invoices differ, e.g. {next(iter(wrong.values()))}"


def test_a_real_time_sweep_leaves_alone_the_accounts_another_sweep_holds(runtime: Runtime) -> None:
    """PostgreSQL: a sweep fires only timers of accounts whose row it can lock; the timers of an
    account another sweep (or request) holds stay due and fire once it lets go."""
    if runtime.db.is_sqlite:
        pytest.skip("SQLite sweeps take turns on the write lock")
    tag = Month(runtime).tag
    invoices = _real_time_invoices(runtime, tag, 4)
    # (a sweep that waited for the held account instead would fail after 10 s rather than hang)
    sweeper = Runtime(Database(runtime.db.url + "?options=-c%20lock_timeout%3D10000"),
                      now=lambda: datetime(2026, 11, 5, 10, tzinfo=KST))
    try:
        with runtime.db.transaction() as conn:  # another sweep, firing the first account's events
            conn.execute(text("SELECT id FROM instances WHERE id = :account FOR UPDATE"),
                         {"account": f"acct_{tag}_0"})
            assert sorted(e["instance"] for e in sweeper.run_due_timers(limit=100)) == sorted(invoices[1:])
        assert [e["instance"] for e in sweeper.run_due_timers(limit=100)] == invoices[:1]
    finally:
        sweeper.close()
