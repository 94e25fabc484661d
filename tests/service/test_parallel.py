"""Judging outside the write lock, and worker processes sharing one SQLite file.

`Sweeps.judge_then_write` judges a batch on plain reads, then writes it only if every read gives
the same rows inside the write transaction; otherwise it judges the batch again there. The tests
change what a batch read between its judging and its writing — a row it read, and a row that
appears under one of its queries — and check that it is judged again and ends exactly as a batch
judged after the change. A month on two worker processes must end exactly as on one.
"""

from __future__ import annotations

import json
import os
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bench.billing import run_month, seed_month
from tests.helpers.paths import RULES_PATH
from tests.service.test_sweep import ISSUE_AT, START, Month
from tollgate.service.application.batches import Batches
from tollgate.service.application.parallel import MAX_AUTO_WORKERS, WINDOW_BATCHES, Workers, auto_workers
from tollgate.service.application.runtime import Runtime
from tollgate.service.application.sweeps import Span, _Event
from tollgate.service.storage.bulk import BulkWriter
from tollgate.service.storage.db import Database
from tollgate.service.storage.unit_of_work import INSTANCE_COLUMNS, UnitOfWork


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime(Database(f"sqlite:///{tmp_path / 'optimistic.db'}"))
    runtime.bootstrap(RULES_PATH)
    yield runtime
    runtime.close()


@pytest.fixture
def pooled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """A runtime with 2 worker processes that get every instant or batch of 20 or more."""
    monkeypatch.setattr(Workers, "PARALLEL_MIN_TIMERS", 20)
    runtime = Runtime(Database(f"sqlite:///{tmp_path / 'pooled.db'}"), workers=2)
    runtime.bootstrap(RULES_PATH)
    yield runtime
    runtime.close()


def _between_judging_and_writing(runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
                                 change: Callable[[], None]) -> None:
    """Run `change` (in its own transaction) right after the optimistic judging of a batch."""
    judge = runtime.sweeps.fire_due

    def judge_then_change(uow: UnitOfWork, *args: Any) -> tuple[int, list[dict[str, Any]]]:
        result = judge(uow, *args)
        if uow.reads is not None:  # the optimistic pass, outside the write lock
            change()
        return result

    monkeypatch.setattr(runtime.sweeps, "fire_due", judge_then_change)


def _set_balance(runtime: Runtime, credit: str, balance: int) -> None:
    with runtime.db.transaction() as conn:
        conn.execute(text("UPDATE instances SET context = json_set(context, '$.balance', :balance), "
                          "version = version + 1 WHERE id = :id"), {"balance": balance, "id": credit})


def _add_credit(month: Month, n: int, amount: int) -> str:
    account, credit = f"acct_{month.tag}_{n}", f"cr_{month.tag}_{n}_late"
    with month.runtime.db.transaction() as conn:
        bulk = BulkWriter(conn)
        t0 = bulk.ts(START)
        context = {"account": account, "amount": amount, "balance": amount,
                   "expires_at": "2027-06-30T15:00:00+00:00"}
        bulk.insert("instances", INSTANCE_COLUMNS, [
            (credit, "credit", "active", bulk.js(context), bulk.js({}), 1, 0, month.clock, account,
             t0, t0)])
    return credit


def _outcome(month: Month, instances: list[str]) -> str:
    """States, contexts and histories of `instances`, with the month's tag taken out of ids."""
    runtime = month.runtime
    seen = [(runtime.get_instance(i)["state"], runtime.get_instance(i)["context"], month.events(i))
            for i in instances]
    return json.dumps(seen, sort_keys=True).replace(month.tag, "TAG")


def test_a_batch_nobody_interfered_with_is_written_as_judged(runtime: Runtime) -> None:
    month = Month(runtime)
    invoices = [month.invoice(n, card=n % 2 == 0, usage=3_000, credit=10_000 if n % 3 == 0 else 0)
                for n in range(9)]
    handled, entries = runtime.sweeps.sweep_span(month.clock, Span(ISSUE_AT, None, None), batch=100)
    assert handled == 9 and len(entries) == 9
    assert runtime.sweeps.optimistic_counts == {"written": 1}
    assert {month.state(i) for i in invoices[::3]} == {"paid"}  # the credit covered them
    assert {month.state(i) for n, i in enumerate(invoices) if n % 3} == {"issued"}
    assert runtime.get_instance(f"cr_{month.tag}_0")["context"]["balance"] == 7_000
    assert runtime.sweeps.sweep_span(month.clock, Span(ISSUE_AT, None, None), batch=100) == (0, [])
    assert month.timers_left_due(ISSUE_AT) == 0


def test_a_row_changed_after_judging_makes_the_batch_judged_again(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    # The control: the credit already holds 2,000 when the batch is judged.
    control = Month(runtime)
    expected_invoices = [control.invoice(n, usage=3_000, credit=10_000) for n in range(3)]
    _set_balance(runtime, f"cr_{control.tag}_1", 2_000)
    runtime.sweep(control.clock, ISSUE_AT, batch=100)
    # The race: the credit drops to 2,000 after the batch judged it at 10,000.
    month = Month(runtime)
    invoices = [month.invoice(n, usage=3_000, credit=10_000) for n in range(3)]
    credit = f"cr_{month.tag}_1"
    _between_judging_and_writing(runtime, monkeypatch, lambda: _set_balance(runtime, credit, 2_000))
    runtime.sweeps.sweep_span(month.clock, Span(ISSUE_AT, None, None), batch=100)
    assert runtime.sweeps.optimistic_counts == {"judged_again": 1}
    # no lost update: the credit was not written back as 10,000 - 3,000
    credits = [runtime.get_instance(f"cr_{m.tag}_1")["context"]["balance"] for m in (month, control)]
    assert credits[0] == credits[1] != 7_000
    assert _outcome(month, invoices) == _outcome(control, expected_invoices)
    assert month.state(invoices[1]) != "paid" and month.state(invoices[0]) == "paid"


def test_a_row_appearing_under_a_query_after_judging_makes_the_batch_judged_again(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    month = Month(runtime)
    invoice = month.invoice(1, usage=3_000)  # no credit when judged
    late: list[str] = []
    _between_judging_and_writing(runtime, monkeypatch, lambda: late.append(_add_credit(month, 1, 5_000)))
    runtime.sweeps.sweep_span(month.clock, Span(ISSUE_AT, None, None), batch=100)
    assert runtime.sweeps.optimistic_counts == {"judged_again": 1}
    assert month.state(invoice) == "paid"  # judged again, it saw the new credit and used it
    assert runtime.get_instance(late[0])["context"]["balance"] == 2_000


def _set_usage(runtime: Runtime, invoice: str, usage: int) -> None:
    with runtime.db.transaction() as conn:
        conn.execute(text("UPDATE instances SET context = json_set(context, '$.usage', :usage), "
                          "version = version + 1 WHERE id = :id"), {"usage": usage, "id": invoice})


def test_an_instance_the_batch_updates_changed_after_judging_makes_it_judged_again(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    control = Month(runtime)
    expected = [control.invoice(n, usage=3_000) for n in range(3)]
    _set_usage(runtime, expected[1], 5_000)
    runtime.sweep(control.clock, ISSUE_AT, batch=100)
    month = Month(runtime)
    invoices = [month.invoice(n, usage=3_000) for n in range(3)]
    # The invoice itself changes: it is read by id and updated, so its UPDATE's version check
    # (not the re-run reads) is what finds it; the whole batch is undone and judged again.
    _between_judging_and_writing(runtime, monkeypatch, lambda: _set_usage(runtime, invoices[1], 5_000))
    runtime.sweeps.sweep_span(month.clock, Span(ISSUE_AT, None, None), batch=100)
    assert runtime.sweeps.optimistic_counts == {"judged_again": 1}
    assert runtime.get_instance(invoices[1])["context"]["amount_due"] == 5_000
    assert _outcome(month, invoices) == _outcome(control, expected)
    assert len(runtime.history(invoices[0])) == 1  # the undone first write left nothing behind


def test_reads_by_id_are_checked_again_found_or_not(runtime: Runtime) -> None:
    month = Month(runtime)
    invoice = month.invoice(1)
    account = f"acct_{month.tag}_1"
    for change in (lambda: _set_usage(runtime, invoice, 9),
                   lambda: _add_credit(month, 1, 1_000)):  # an id looked up and not found appears
        with runtime.db.read() as conn:
            uow = runtime.units.open(conn, optimistic=True)
            uow.load([invoice, account])
            assert uow.find(f"cr_{month.tag}_1_late") is None
        with runtime.db.read() as conn:
            assert uow.reads_unchanged(conn)
        change()
        with runtime.db.read() as conn:
            assert not uow.reads_unchanged(conn)


def test_fire_chunk_optimistic_counts_each_outcome(runtime: Runtime) -> None:
    month = Month(runtime)
    invoices = [month.invoice(n) for n in range(3)]
    runtime.sweep(month.clock, ISSUE_AT, batch=100)

    counts = runtime.sweeps.fire_chunk_optimistic(
        [_Event(invoices[0], "deposit", {"amount": 1_000, "deposited_at": ISSUE_AT.isoformat()}),
         _Event(invoices[1], "deposit", {"amount": 1_000,  # dated in the future: denied
                                          "deposited_at": (ISSUE_AT + timedelta(days=1)).isoformat()}),
         _Event(invoices[2], "no_such_event", {}), _Event("inv_nobody", "deposit", {})], "bank_feed")
    assert counts == {"applied": 1, "denied": 1, "dropped": 2}
    assert runtime.sweeps.optimistic_counts == {"written": 1}
    assert month.state(invoices[0]) == "paid" and month.state(invoices[1]) == "issued"


def test_only_an_optimistic_unit_can_be_checked(runtime: Runtime) -> None:
    with runtime.db.transaction() as conn:
        uow = runtime.units.open(conn)
        with pytest.raises(TypeError, match="optimistic"):
            uow.reads_unchanged(conn)


def test_workers_must_be_positive_and_need_a_sqlite_file() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Runtime(Database("sqlite://"), workers=0)
    memory = Runtime(Database("sqlite://"), workers=2)
    memory.bootstrap(RULES_PATH)
    month = Month(memory)
    invoice = month.invoice(1)
    memory.start_workers()
    memory.advance_clock(month.clock, datetime(2026, 11, 4, tzinfo=ISSUE_AT.tzinfo), collect=False)
    assert memory.parallel.pool is None  # an in-memory database cannot be shared: swept here, as before
    assert month.state(invoice) == "issued"
    memory.close()


def test_an_instant_goes_to_the_workers_from_parallel_min_timers_on(pooled: Runtime) -> None:
    runtime = pooled
    below, at = Month(runtime), Month(runtime)
    few = [below.invoice(n) for n in range(19)]
    enough = [at.invoice(n) for n in range(20)]
    runtime.advance_clock(below.clock, ISSUE_AT, collect=False)
    assert runtime.parallel.pool is None  # 19 timers: swept here, no worker started
    assert {below.state(i) for i in few} == {"issued"}
    runtime.advance_clock(at.clock, ISSUE_AT, collect=False)
    pool = runtime.parallel.pool
    assert pool is not None and pool.counts["written"] > 0  # 20: by the workers
    assert {at.state(i) for i in enough} == {"issued"}
    runtime.close()


def test_fire_many_goes_to_the_workers_from_parallel_min_timers_events_on(pooled: Runtime) -> None:
    runtime = pooled
    month = Month(runtime)
    invoices = [month.invoice(n, usage=1_000) for n in range(39)]
    runtime.sweep(month.clock, ISSUE_AT, batch=100)  # issued here, without workers

    def deposits(ids: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
        return [(i, "deposit", {"amount": 1_000, "deposited_at": ISSUE_AT.isoformat()}) for i in ids]

    assert runtime.fire_many(deposits(invoices[:19])) == {"applied": 19, "denied": 0, "dropped": 0,
                                                          "failed": 0}
    assert runtime.parallel.pool is None  # 19 events: fired here
    assert runtime.fire_many(deposits(invoices[19:])) == {"applied": 20, "denied": 0, "dropped": 0,
                                                          "failed": 0}
    pool = runtime.parallel.pool
    assert pool is not None and pool.counts["written"] > 0  # 20: by the workers
    assert {month.state(i) for i in invoices} == {"paid"}
    runtime.close()


def test_a_parallel_fire_many_holds_one_window_of_events_at_a_time(
        pooled: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway's report can be millions of events: the calling process reads them a window at a
    time and lets each window go before reading the next (keeping the first window to the end made
    the 1,000,000-invoice month's peak memory 10% higher than the 100,000-invoice month's)."""
    runtime = pooled
    month = Month(runtime)
    invoices = [month.invoice(n, usage=1_000) for n in range(100)]
    runtime.sweep(month.clock, ISSUE_AT, batch=100)
    alive: list[weakref.ref[OrderedDict[str, Any]]] = []

    def report() -> Iterator[tuple[str, str, OrderedDict[str, Any]]]:
        for invoice in invoices:
            data = OrderedDict(amount=1_000, deposited_at=ISSUE_AT.isoformat())
            alive.append(weakref.ref(data))
            yield invoice, "deposit", data

    held: list[int] = []
    fire_window = Batches._fire_window

    def counting(self: Batches, events: list[_Event], *args: Any) -> None:
        held.append(sum(ref() is not None for ref in alive))
        fire_window(self, events, *args)

    monkeypatch.setattr(Batches, "_fire_window", counting)
    window = 1 * runtime.workers * WINDOW_BATCHES  # batch=1: 32 events a window
    assert runtime.fire_many(report(), batch=1) == {"applied": 100, "denied": 0, "dropped": 0, "failed": 0}
    assert len(held) == 4 and held[0] == window  # 32, 32, 32 and 4
    assert max(held[1:]) < 2 * window  # the window before is gone (bar one worker's part in flight)
    assert {month.state(i) for i in invoices} == {"paid"}


def test_a_pool_that_lost_a_process_is_replaced(pooled: Runtime) -> None:
    runtime = pooled
    month = Month(runtime)
    invoices = [month.invoice(n) for n in range(30)]
    runtime.start_workers()
    pool = runtime.parallel.pool
    assert pool is not None
    with pytest.raises(BrokenProcessPool):  # one worker dies
        runtime.parallel.run(lambda p: p.executor.submit(os._exit, 1).result())
    assert runtime.parallel.pool is None
    runtime.advance_clock(month.clock, ISSUE_AT, collect=False)  # on a new pool
    assert runtime.parallel.pool is not None and runtime.parallel.pool is not pool
    assert {month.state(i) for i in invoices} == {"issued"}
    assert runtime.parallel.pool.counts["written"] > 0
    runtime.close()
    assert runtime.parallel.pool is None


def test_the_server_takes_its_batch_workers_from_the_environment() -> None:
    from tollgate.service.settings import batch_workers as _batch_workers

    assert _batch_workers("2") == 2 and _batch_workers(1) == 1 and _batch_workers("auto") == auto_workers()
    for wrong in ("two", "0", None, "Auto"):
        with pytest.raises(ValueError, match='TOLLGATE_BATCH_WORKERS must be "auto" or a whole number of at '
                                             "least 1"):
            _batch_workers(wrong)


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 2), (3, 2), (16, 2)])
def test_auto_is_one_worker_per_usable_core_up_to_two(
        monkeypatch: pytest.MonkeyPatch, cores: int, expected: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert MAX_AUTO_WORKERS == 2 and auto_workers() == expected


def test_threads_that_need_the_workers_at_once_start_one_pool(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[object] = []

    class SlowPool:
        def __init__(self, *args: Any) -> None:
            time.sleep(0.05)  # a pool takes a while to start: long enough for the others to arrive
            started.append(self)

        def close(self) -> None:
            pass

    monkeypatch.setattr("tollgate.service.application.parallel.WorkerPool", SlowPool)
    with ThreadPoolExecutor(4) as threads:
        pools = list(threads.map(lambda _: runtime.parallel.run(lambda pool: pool), range(4)))
    assert len(started) == 1 and all(pool is started[0] for pool in pools)


def _history(url: str) -> list[tuple[Any, ...]]:
    database = Database(url)
    with database.engine.connect() as conn:
        rows = conn.execute(text("SELECT instance, seq, event, from_state, to_state, outcome, reasons, data, "
                                 "at, actor FROM history ORDER BY instance, seq")).all()
        states = conn.execute(text("SELECT id, state, context, version FROM instances ORDER BY id")).all()
    database.dispose()
    return [tuple(r) for r in rows] + [tuple(s) for s in states]


def test_a_month_on_two_worker_processes_ends_exactly_as_on_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Workers, "PARALLEL_MIN_TIMERS", 50)  # hand this small month's instants to them
    monkeypatch.setenv("TOLLGATE_BENCH_CALIBRATE", "0")
    n = 400
    results, histories = {}, {}
    for workers in (1, 2):
        url = f"sqlite:///{tmp_path / f'month{workers}.db'}"
        seed_month(url, n)
        results[workers] = run_month(url, n, workers=workers)  # verify_month: states, totals, once each
        histories[workers] = _history(url)
    assert results[1]["transitions"] == results[2]["transitions"] == 1_520
    assert results[1]["optimistic_batches"] == {}
    assert results[2]["optimistic_batches"].get("written", 0) > 8  # every instant and window, in batches
    assert histories[2] == histories[1]  # every attempt, its reasons, instant and actor; every instance
