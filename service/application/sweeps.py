"""Timer sweeps and batches of events: many events judged in one unit of work and written in bulk.

A sweep claims the timers due at one instant (`FOR UPDATE SKIP LOCKED` on PostgreSQL), fires them
against in-memory records and writes them in bulk. Real-time sweeps (scheduler threads, `tollgate
worker` processes) never share an account: on SQLite they take turns (the write lock), on
PostgreSQL each batch keeps only the timers of accounts whose row it can lock (`_take_accounts`),
so they still run side by side. An event the rules fail on (an expression that errs at run time)
is recorded as `failed` and its timer parked in `failed_timers`; the rest of the batch goes on
(`attempt`). Worker processes judge batches outside the write lock (`judge_then_write`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Any, Literal, NamedTuple, TypeVar

from sqlalchemy import Connection

from tollgate.service.application import facts as fact_providers
from tollgate.service.application.judging import EventUnit, Units
from tollgate.service.application.leases import ClockLeases
from tollgate.service.application.times import rfc3339
from tollgate.service.exceptions import GuardDenied, RulesFailed, SendFailed, StaleBatch
from tollgate.service.storage import db as database
from tollgate.service.storage.db import Database
from tollgate.workflows.exceptions import BadRequest, InvalidTransition, NotFound

TIMER_ACTOR = "timer"
#: What a sweep returns of the timers it fired: an entry each (True), nothing (False), or
#: ("counts") one `{"event", "outcome", "count"}` entry per event and outcome of each batch, so an
#: advance of a million timers tallies them without holding an entry each (`Clocks.advance_clock`).
Collect = bool | Literal["counts"]
_T = TypeVar("_T")

log = logging.getLogger("tollgate.timers")


class _Timer(NamedTuple):
    instance: str
    name: str
    event: str
    due_at: Any  # as the driver returns it: text on SQLite, a datetime on PostgreSQL


class Span(NamedTuple):
    """The timers one worker process fires of a parallel sweep: those due at `instant` on a
    test clock whose instance id is ≥ `low` and < `high` (None: no bound)."""

    instant: datetime
    low: str | None
    high: str | None


class _Event(NamedTuple):
    instance: str
    event: str
    data: Mapping[str, Any]


class Sweeps:
    """Firing due timers and batches of events over `db`, in units opened by `units`."""

    def __init__(self, db: Database, units: Units, leases: ClockLeases) -> None:
        self.db = db
        self.units = units
        self.leases = leases
        #: Batches of this process judged outside the write lock (`judge_then_write`): written as
        #: judged, or judged again under the lock because something they read had changed.
        self.optimistic_counts: Counter[str] = Counter()

    def sweep(self, clock_id: str | None, until: datetime, *, batch: int = 1000, actor: str = TIMER_ACTOR,
              collect: Collect = True, lease: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Claim up to `batch` due timers and fire them in one transaction; returns how many were
        handled and (if `collect`) what each did.

        On a test clock only timers of the earliest due instant ≤ `until` are taken together and
        the clock moves to that instant, so timers the fired transitions arm (never earlier than
        it) still fire in time order. Real-time timers (`clock_id` None) are all due by now and
        the transitions they fire happen now, so every due timer up to `batch` is taken, in due
        order. A timer that an earlier transition of the batch cancelled or re-armed is skipped.
        A claimed timer is deleted in the transaction that fires it: with `FOR UPDATE SKIP
        LOCKED` on PostgreSQL several workers never fire one twice, and a crash before commit
        leaves it due.

        `lease`: the advance's lease on the clock, renewed (or found lost: ClockBusy) in the
        transaction. Real-time sweeps on PostgreSQL fire only timers of accounts no other sweep
        holds (`_take_accounts`).
        """
        with self.db.transaction(bulk=True) as conn:
            if lease is not None and clock_id is not None:
                self.leases.hold(conn, clock_id, lease)
            uow = self.units.open(conn)
            handled, entries = self.fire_due(uow, clock_id, until, batch, actor, collect)
            if handled:
                uow.flush()
        return handled, entries

    def sweep_span(self, clock_id: str, span: Span, *, batch: int = 1000, actor: str = TIMER_ACTOR,
                   collect: Collect = True, lease: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """One batch of a parallel sweep (`parallel.py`): up to `batch` of the timers of
        `span` (one instant of a test clock, one range of instance ids), judged outside the write
        lock and written if nothing they read has changed meanwhile (`judge_then_write`); the
        write renews the advance's `lease` on the clock."""
        fence = None if lease is None else partial(self.leases.hold, clock_id=clock_id, lease=lease)
        return self.judge_then_write(
            lambda uow: self.fire_due(uow, clock_id, span.instant, batch, actor, collect, span),
            done=lambda result: result[0] == 0, fence=fence)

    def judge_then_write(self, judge: Callable[[EventUnit], _T],
                          done: Callable[[_T], bool] | None = None,
                          fence: Callable[[Connection], None] | None = None) -> _T:
        """Run `judge` (which fires events into a unit of work) outside the write lock, then
        write its unit if every row it read is still the same; otherwise judge again under it.

        This is what lets worker processes share one SQLite file: their judging — most of the
        work — overlaps, and only the check and the writes queue for the write lock. The check
        runs every read of the unit again inside the write transaction (`reads_unchanged`), so
        a batch is written only as it would be judged at that moment; a batch that lost the race
        (another process changed a row it read, or made one appear under one of its queries) is
        judged again under the lock, exactly as `sweep` would. When `done(result)` says the judging
        found nothing to do (a span with no timer left), the write lock is not taken at all.
        `fence(conn)` runs first in each write transaction (it may raise to undo it).
        """
        with self.db.read() as conn:
            uow = self.units.open(conn, optimistic=True)
            result = judge(uow)
            if done is not None and done(result):
                return result
            rows = uow.pending()  # JSON and tuples made here, outside the lock
        try:
            with self.db.transaction(bulk=True) as conn:
                if fence is not None:
                    fence(conn)
                if (self.units.versions.schedule(conn) is uow.rules_schedule
                        and uow.reads_unchanged(conn)):
                    uow.rebind(conn)
                    uow.write(rows)  # StaleBatch (all of it undone) if an instance it updates changed
                    self.optimistic_counts["written"] += 1
                    return result
                self.optimistic_counts["judged_again"] += 1
                return self._judge_locked(conn, judge)
        except StaleBatch:
            pass
        self.optimistic_counts["judged_again"] += 1
        with self.db.transaction(bulk=True) as conn:
            if fence is not None:
                fence(conn)
            return self._judge_locked(conn, judge)

    def _judge_locked(self, conn: Connection, judge: Callable[[EventUnit], _T]) -> _T:
        uow = self.units.open(conn)
        result = judge(uow)
        uow.flush()
        return result

    def fire_due(self, uow: EventUnit, clock_id: str | None, until: datetime, batch: int, actor: str,
                  collect: Collect, span: Span | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Claim and fire due timers into `uow` (see `sweep`); returns the number claimed and the
        entries (if `collect`)."""
        entries: list[dict[str, Any]] = []
        claimed, instant = self._claim(uow, clock_id, until, batch, span)
        if claimed and clock_id is None and uow.lock:
            claimed = self._take_accounts(uow, claimed)
        if not claimed:
            return 0, entries
        if clock_id is not None and instant is not None:
            uow.set_clock(clock_id, instant)
        elif clock_id is None and database.COMMIT_OBSERVERS:  # timer lag (fired − due), for the metrics
            now, stamp = uow.now_of(None), uow.reader.stamp_now
            database.note(uow.conn, "timer_lag", [(now - stamp(t.due_at)).total_seconds() for t in claimed])
        self.prefetch_for(uow, claimed)
        due_text: dict[Any, str | None] = {}
        tally: Counter[tuple[str, str]] | None = Counter() if collect == "counts" else None
        timer_ops, records = uow.timer_ops, uow.records
        for timer in claimed:
            instance, name, event, due_at = timer
            key = (instance, name)
            if key in timer_ops:  # cancelled or re-armed by an earlier event of this batch
                continue
            # deleted whatever its event does: no journal entry (`attempt` starts a new journal)
            timer_ops[key] = None
            record = records.get(instance)
            if record is None:
                record = uow.find(instance)
                if record is None:
                    continue
            if tally is not None:
                tally[(event, self.attempt(uow, instance, event, {}, actor, None, timer))] += 1
                continue
            if not collect:
                self.attempt(uow, instance, event, {}, actor, None, timer)
                continue
            at = due_text.get(due_at)
            if at is None:
                at = due_text[due_at] = rfc3339(uow.reader.stamp_now(due_at))
            entry = {"instance": instance, "event": event, "from": record["state"],
                     "to": record["state"], "at": at, "timer": name}
            self.attempt(uow, instance, event, {}, actor, entry, timer)
            entries.append(entry)
        if tally is not None:
            entries = [{"event": e, "outcome": o, "count": n} for (e, o), n in tally.items()]
        return len(claimed), entries

    @staticmethod
    def _take_accounts(uow: EventUnit, claimed: list[_Timer]) -> list[_Timer]:
        """Of the real-time timers a PostgreSQL sweep claimed, those it may fire now.

        Several sweepers claim with SKIP LOCKED, so one instance's timers can be split between
        two of them. A sweep keeps only the timers of accounts (an instance's `account`, or its
        own id for an account) whose row it can lock (`FOR UPDATE SKIP LOCKED`: tried, never
        waited for; a row lock, so no entry in PostgreSQL's shared lock table whatever the
        batch), and of each instance only those due before any timer of it that another sweep
        holds. So no two sweeps fire events of one account at once (no deadlock on its
        rows; the events it sends stay inside it), an instance's timers fire in due order, and
        sweeps of different accounts still run side by side. The timers left out stay due (their
        rows are unlocked at commit); the sweep holding their account or earlier timer fires them.
        """
        fetch = uow.reader.fetch
        ids = list(dict.fromkeys(t.instance for t in claimed))
        # Every query here is a primary-key look-up of the batch's own rows: a join on
        # coalesce(account, id), or a filter on due_at, made PostgreSQL scan every instance or
        # every due timer per batch (O(N) a batch; bench.workers fell from 5,321 to 1,750 /s).
        dialect = uow.reader.dialect
        where, params = dialect.in_clause("id", ids)
        account_of = dict(fetch(f"SELECT id, coalesce(account, id) FROM instances WHERE {where}", params))
        # the account rows this transaction could lock (an instance whose account another
        # transaction holds is left out)
        where, params = dialect.in_clause("id", sorted(set(account_of.values())))
        locked = {row[0] for row in fetch(f"SELECT id FROM instances WHERE {where}"
                                          f"{dialect.lock_suffix(skip_locked=True)}", params)}
        mine = [t for t in claimed if account_of.get(t.instance) in locked]
        if not mine:
            return mine
        held = {(t.instance, t.name) for t in mine}
        last = max(t.due_at for t in mine)
        first_other: dict[str, tuple[Any, str]] = {}
        # (only real-time timers due by the last one kept can come before one of them)
        where, params = dialect.in_clause("instance", list(dict.fromkeys(t.instance for t in mine)))
        for instance, name, clock, due_at in fetch(
                f"SELECT instance, name, clock, due_at FROM timers WHERE {where}", params):
            if clock is None and due_at <= last and (instance, name) not in held:
                other = first_other.get(instance)
                if other is None or (due_at, name) < other:
                    first_other[instance] = (due_at, name)
        return [t for t in mine
                if t.instance not in first_other or (t.due_at, t.name) < first_other[t.instance]]

    def _claim(self, uow: EventUnit, clock_id: str | None, until: datetime, batch: int,
               span: Span | None = None) -> tuple[list[_Timer], datetime | None]:
        """The due timers this sweep fires (locked on PostgreSQL, skipping those others hold);
        with a `span`, only those due at its instant on its range of instance ids."""
        reader, ts = uow.reader, uow.reader.writer.ts
        where = "clock IS NULL" if clock_id is None else "clock = ?"
        params: list[Any] = [] if clock_id is None else [clock_id]
        if span is None:
            where += " AND due_at <= ?"
            params.append(ts(until))
        else:
            where += " AND due_at = ?"
            params.append(ts(span.instant))
            if span.low is not None:
                where += " AND instance >= ?"
                params.append(span.low)
            if span.high is not None:
                where += " AND instance < ?"
                params.append(span.high)
        sql = (f"SELECT instance, name, event, due_at FROM timers WHERE {where} "
               "ORDER BY due_at, instance, name LIMIT ?")
        sql += self.db.dialect.lock_suffix(skip_locked=True)
        rows = [_Timer(*row) for row in reader.fetch(sql, [*params, batch])]
        if not rows:
            return rows, None
        first = rows[0].due_at
        if clock_id is not None:
            rows = [t for t in rows if t.due_at == first]
        return rows, uow.reader.stamp_now(first)

    @staticmethod
    def attempt(uow: EventUnit, instance_id: str, event: str, data: Mapping[str, Any], actor: str,
                 entry: dict[str, Any] | None, timer: _Timer | None = None) -> str:
        """Apply one event of a batch; its failure rolls back only its own effects.

        A policy denial stays in the history (a timer is then dropped), a failed send is recorded
        as a denied attempt, an event not valid in the state changes nothing. An event the rules
        fail on (RulesFailed) is undone, recorded in the history as `failed` with the error, and
        its `timer` (if it was fired by one) parked in `failed_timers` and logged at ERROR on
        `tollgate.timers`; the batch goes on. Returns "applied", "denied", "dropped" or "failed";
        `entry` (if given) is updated with `to`, `outcome` and `reasons`.
        """
        # Effects of earlier events are final (only this event may be rolled back): the journal
        # starts afresh, so the records it kept are freed now rather than at the end of the batch.
        uow.keep_effects()
        mark = 0
        try:
            outcome = uow.apply(instance_id, event, data, actor)
        except SendFailed as failure:
            uow.rollback_to(mark)
            uow.record_failure(instance_id, event, data, actor, failure)
            if entry is not None:
                entry.update(outcome="denied", reasons=[r.as_dict() for r in failure.reasons])
            return "denied"
        except GuardDenied as denied:  # kept in the history
            if entry is not None:
                entry.update(outcome="denied", reasons=[r.as_dict() for r in denied.reasons])
            return "denied"
        except (InvalidTransition, BadRequest, NotFound):
            uow.rollback_to(mark)
            if entry is not None:
                entry["outcome"] = "dropped"
            return "dropped"
        except RulesFailed as failure:
            uow.rollback_to(mark)
            uow.record_rules_failure(instance_id, event, data, actor, failure, timer)
            if entry is not None:
                entry.update(outcome="failed", error=failure.error)
            return "failed"
        if entry is not None:
            entry["to"] = outcome.target
            entry["outcome"] = "applied"
        return "applied"

    def prefetch_for(self, uow: EventUnit, claimed: list[Any]) -> None:
        """Load the claimed instances, their accounts and what their facts read, in a few queries.

        `claimed` holds rows (or tuples) with `instance` and `event`.
        """
        uow.load(t.instance for t in claimed)
        records = uow.records
        accounts = {r["account"] for r in records.values() if r["account"]}
        kinds: dict[tuple[str, str], bool] = {}  # (workflow, event): whether it reads the account first
        eager: set[str] = set()  # the accounts of those events (the others get theirs lazily)
        for t in claimed:
            record = records.get(t.instance)
            if record is None:
                continue
            kind = (record["workflow"], t.event)
            first = kinds.get(kind)
            if first is None:
                first = kinds[kind] = uow.reads_account_first(*kind)
            if first and record["account"]:
                eager.add(record["account"])
        uow.load(eager)
        wanted: set[str] = set()
        for workflow, event in kinds:
            for fact in fact_providers.facts_for(uow.engine.definition(workflow), event):
                wanted.update(fact_providers.RELATED_WORKFLOWS.get(fact, ()))
        if wanted:
            uow.prefetch(accounts, sorted(wanted))

    def fire_chunk(self, chunk: list[_Event], actor: str, counts: dict[str, int]) -> None:
        with self.db.transaction(bulk=True) as conn:
            uow = self.units.open(conn)
            for outcome, number in self.fire_events(uow, chunk, actor).items():
                counts[outcome] += number
            uow.flush()

    def fire_chunk_optimistic(self, chunk: list[_Event], actor: str) -> Counter[str]:
        """One batch of a parallel `fire_many` (`parallel.py`), judged outside the write
        lock (`judge_then_write`); returns how many were applied, denied and dropped."""
        return self.judge_then_write(lambda uow: self.fire_events(uow, chunk, actor))

    def fire_events(self, uow: EventUnit, chunk: list[_Event], actor: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        self.prefetch_for(uow, chunk)
        for instance, event, data in chunk:
            counts[self.attempt(uow, instance, event, data, actor, None)] += 1
        return counts

    def run_due_timers(self, *, limit: int = 1000, actor: str = TIMER_ACTOR,
                       until: datetime | None = None) -> list[dict[str, Any]]:
        """Fire real-time timers that are due now, or by `until` (the scheduler and `tollgate
        worker` call this through `Runtime.run_due_timers`)."""
        with self.db.bulk_work():
            _, entries = self.sweep(None, self.units.now() if until is None else until, batch=limit,
                                    actor=actor)
        return entries
