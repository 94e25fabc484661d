"""Clocks, timer sweeps and batches of events: many events fired in one transaction.

`Sweeps` is mixed into `Runtime` (service/runtime.py), whose rules versions, readers and unit of
work it uses. A sweep claims the timers due at one instant (`FOR UPDATE SKIP LOCKED` on
PostgreSQL), fires them against in-memory records and writes them in bulk; a test clock's
`advance_clock` sweeps until nothing is due before the target time.

Ordering under concurrency: the advances of one test clock take turns, by a lease on the clock's
row (`_take_lease`) that every batch of the advance renews and checks, so one advance runs its
instants in time order while another waits (then goes on from where the clock is). A clock only
moves forward. Real-time sweeps (scheduler threads, `tollgate worker` processes) never share an
account: on SQLite they take turns (the write lock), on PostgreSQL each batch keeps only the
timers of accounts whose row it can lock (`_take_accounts`), so they still run side by side.
An event the rules fail on (an expression that errs at run time) is recorded as `failed` and its
timer parked in `failed_timers`; the rest of the batch goes on (`_attempt`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from sqlalchemy import Connection, insert, or_, select, update

from tollgate.service.application import facts as fact_providers
from tollgate.service.application.parallel import SPANS_PER_WORKER, WINDOW_BATCHES, WorkerPool
from tollgate.service.storage.bulk import BulkWriter, parse_sqlite_timestamp
from tollgate.service.storage.tables import clocks
from tollgate.service.storage.unit_of_work import UnitOfWork
from tollgate.workflows.exceptions import (
    BadRequest,
    ClockBusy,
    ClockError,
    Conflict,
    GuardDenied,
    InvalidTransition,
    NotFound,
    RulesFailed,
    SendFailed,
    StaleBatch,
)

if TYPE_CHECKING:
    from tollgate.service.application.runtime import RulesVersion, Runtime
    from tollgate.service.storage.db import Database

TIMER_ACTOR = "timer"
_T = TypeVar("_T")


log = logging.getLogger("tollgate.timers")


def _wall_now() -> datetime:
    """Real time for leases (never a test clock's, nor an injected `Runtime.now`)."""
    return datetime.now(UTC)


def rfc3339(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _chunks(items: Iterable[_Event], size: int) -> Iterator[list[_Event]]:
    """`items` in lists of `size` (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


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
    """Clocks and batch firing; needs the `Runtime` it is mixed into."""

    db: Database
    now: Callable[[], datetime]
    #: Processes that judge big sweeps and `fire_many` batches on a SQLite file (1: this one alone).
    workers: int
    _pool: WorkerPool | None
    #: Held while the pool is started or replaced: a server's threads may advance clocks at once.
    _pool_lock: threading.Lock
    #: Fewest timers due at one instant (or events given to `fire_many`) handed to the worker
    #: processes: fewer are done here, sooner than the ~1 s it takes to start the workers.
    PARALLEL_MIN_TIMERS = 5_000
    #: An advance's lease on its clock lapses this long after the advance's last batch: an advance
    #: whose process died holds the clock no longer than this. Every batch renews it.
    LEASE_SECONDS = 60.0
    #: How long an advance waits for the advance holding its clock before answering 409 ClockBusy.
    ADVANCE_WAIT_SECONDS = 30.0
    #: Batches of this process judged outside the write lock (`_judge_then_write`): written as
    #: judged, or judged again under the lock because something they read had changed.
    optimistic_counts: Counter[str]

    if TYPE_CHECKING:
        def _active(self, conn: Connection) -> RulesVersion: ...

    # ── time ─────────────────────────────────────────────────────────────────────────────────

    def _clock_now(self, conn: Connection, clock_id: str | None) -> datetime:
        if clock_id is None:
            return self.now()
        value = conn.execute(select(clocks.c.now).where(clocks.c.id == clock_id)).scalar_one_or_none()
        if value is None:
            raise NotFound(f"There is no clock '{clock_id}'.")
        return value

    def create_clock(self, now: datetime, clock_id: str | None = None) -> dict[str, Any]:
        clock_id = clock_id or "clk_" + secrets.token_hex(6)
        with self.db.transaction() as conn:
            if conn.execute(select(clocks.c.id).where(clocks.c.id == clock_id)).first():
                raise Conflict(f"A clock '{clock_id}' already exists.")
            conn.execute(insert(clocks).values(id=clock_id, now=now, created_at=self.now()))
        return {"id": clock_id, "now": rfc3339(now), "fired": []}

    def get_clock(self, clock_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return {"id": clock_id, "now": rfc3339(self._clock_now(conn, clock_id)), "fired": []}

    def advance_clock(self, clock_id: str, to: datetime, *, actor: str = TIMER_ACTOR,
                      batch: int = 1000, collect: bool = True) -> dict[str, Any]:
        """Move a test clock to `to`, firing every timer due on the way in time order.

        Timers set by the fired transitions are fired too when they fall due before `to`. With
        `collect=False` only the number fired is returned (for runs of millions of timers). With
        `workers` > 1 on a SQLite file, an instant with `PARALLEL_MIN_TIMERS` timers or more is
        fired by the worker processes (`service/parallel.py`), each instant before the next.

        One advance of a clock runs at a time (any thread or process): this one waits up to
        `ADVANCE_WAIT_SECONDS` for the lease on the clock (then ClockBusy, 409) and goes on from
        wherever the clock then is. The clock ends at the later of `to` and where it was: a target
        another advance overtook meanwhile moves nothing. A target before the clock's time when
        the request arrives is refused (ClockError).
        """
        with self.db.read() as conn:
            current = self._clock_now(conn, clock_id)
        if to < current:
            raise ClockError(f"The clock '{clock_id}' is at {rfc3339(current)}; it cannot go back to "
                             f"{rfc3339(to)}.")
        lease = self._take_lease(clock_id)
        released = False
        fired: list[dict[str, Any]] = []
        count = 0
        try:
            with self.db.bulk_work():
                while True:
                    spans = self._parallel_spans(clock_id, to, lease) if self._has_workers else None
                    if spans:
                        handled, entries = self._on_workers(partial(
                            WorkerPool.sweep, clock_id=clock_id, spans=spans, batch=batch, actor=actor,
                            collect=collect, lease=lease))
                    else:
                        handled, entries = self.sweep(clock_id, to, batch=batch, actor=actor, collect=collect,
                                                      lease=lease)
                    if not handled:
                        break
                    count += handled
                    fired.extend(entries)
            with self.db.transaction() as conn:
                self._hold_lease(conn, clock_id, lease)
                conn.execute(update(clocks).where(clocks.c.id == clock_id, clocks.c.now < to).values(now=to))
                conn.execute(update(clocks).where(clocks.c.id == clock_id)
                             .values(lease_owner=None, lease_expires=None))
                now = conn.execute(select(clocks.c.now).where(clocks.c.id == clock_id)).scalar_one()
            released = True
        finally:
            if not released:
                self._release_lease(clock_id, lease)
        result: dict[str, Any] = {"id": clock_id, "now": rfc3339(now), "fired": fired}
        if not collect:
            result["fired_count"] = count
        return result

    # ── the lease that serializes the advances of one clock ─────────────────────────────────

    def _take_lease(self, clock_id: str) -> str:
        """Take the clock for one advance, waiting for the advance that holds it (up to
        `ADVANCE_WAIT_SECONDS`, then ClockBusy); returns the lease's token. A lease lapses
        `LEASE_SECONDS` after its holder's last batch, so a dead holder frees the clock."""
        token = secrets.token_hex(16)
        deadline = time.monotonic() + self.ADVANCE_WAIT_SECONDS
        pause = 0.005
        while True:
            wall = _wall_now()
            with self.db.transaction() as conn:
                taken = conn.execute(update(clocks).where(
                    clocks.c.id == clock_id,
                    or_(clocks.c.lease_owner.is_(None), clocks.c.lease_expires < wall))
                    .values(lease_owner=token, lease_expires=wall + timedelta(seconds=self.LEASE_SECONDS))
                ).rowcount
                exists = taken or conn.execute(select(clocks.c.id).where(clocks.c.id == clock_id)).first()
            if taken:
                return token
            if not exists:
                raise NotFound(f"There is no clock '{clock_id}'.")
            if time.monotonic() >= deadline:
                raise ClockBusy(f"The clock '{clock_id}' is being advanced by another request, still after "
                                f"{self.ADVANCE_WAIT_SECONDS:g} s; retry once it has finished (GET "
                                f"/clocks/{clock_id} shows where it is).")
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _hold_lease(self, conn: Connection, clock_id: str, lease: str) -> None:
        """Renew the lease inside a batch's transaction, or undo the batch if it was lost."""
        held = conn.execute(update(clocks).where(clocks.c.id == clock_id, clocks.c.lease_owner == lease)
                            .values(lease_expires=_wall_now() + timedelta(seconds=self.LEASE_SECONDS))
                            ).rowcount
        if held != 1:
            raise ClockBusy(f"The advance of the clock '{clock_id}' lost its lease (none of its batches "
                            f"committed for {self.LEASE_SECONDS:g} s, so another advance took the clock); "
                            "what it fired stays fired. Read the clock and advance it again if needed.")

    def _release_lease(self, clock_id: str, lease: str) -> None:
        try:
            with self.db.transaction() as conn:
                conn.execute(update(clocks).where(clocks.c.id == clock_id, clocks.c.lease_owner == lease)
                             .values(lease_owner=None, lease_expires=None))
        except Exception:  # the lease lapses by itself; the advance's own error is what matters
            log.exception("The lease on the clock '%s' could not be released; it lapses in %g s.",
                          clock_id, self.LEASE_SECONDS)

    def _parallel_spans(self, clock_id: str, to: datetime, lease: str | None = None) -> list[Span] | None:
        """If the clock's next instant ≤ `to` has `PARALLEL_MIN_TIMERS` timers or more: move the
        clock to it and cut its timers into `SPANS_PER_WORKER` ranges of instance ids per worker.
        None when the calling process should sweep it alone (or when nothing is due)."""
        with self.db.read() as conn:
            writer = BulkWriter(conn)
            where = "clock = ? AND due_at = ?"
            first = writer.fetch("SELECT min(due_at) FROM timers WHERE clock = ? AND due_at <= ?",
                                 [clock_id, writer.ts(to)])[0][0]
            if first is None:
                return None
            due = writer.fetch(f"SELECT count(*) FROM timers WHERE {where}", [clock_id, first])[0][0]
            if due < self.PARALLEL_MIN_TIMERS:
                return None
            step = -(-due // (self.workers * SPANS_PER_WORKER))
            # every step-th instance id in order, in one pass over the index
            bounds = sorted({row[0] for row in writer.fetch(
                "SELECT instance FROM (SELECT instance, row_number() OVER (ORDER BY instance) AS n "
                f"FROM timers WHERE {where}) WHERE n > 1 AND n % ? = 1", [clock_id, first, step])})
        instant = parse_sqlite_timestamp(first)
        assert instant is not None
        with self.db.transaction() as conn:
            if lease is not None:
                self._hold_lease(conn, clock_id, lease)
            conn.execute(update(clocks).where(clocks.c.id == clock_id, clocks.c.now < instant)
                         .values(now=instant))
        return [Span(instant, low, high) for low, high in zip([None, *bounds], [*bounds, None], strict=True)]

    def _on_workers(self, work: Callable[[WorkerPool], _T]) -> _T:
        """`work` on the worker pool, started on first use. A pool that lost a process (killed,
        out of memory) is stopped and the error raised: what that process had not committed is
        still due, and the next call starts a new pool."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = WorkerPool(self.db.url, self.db.synchronous, self.workers)
            pool = self._pool
        try:
            return work(pool)
        except BrokenProcessPool:
            with self._pool_lock:
                if self._pool is pool:  # not yet replaced by another thread that saw it break
                    self._pool = None
            pool.close()
            raise

    @property
    def _has_workers(self) -> bool:
        """Whether big sweeps and batches go to worker processes: more than one asked for, and a
        SQLite file for them to share (PostgreSQL scales out with `tollgate worker` instead)."""
        return self.workers > 1 and self.db.is_sqlite and not self.db.memory

    def start_workers(self) -> None:
        """Start the worker processes now rather than at the first big sweep (no-op without)."""
        if self._has_workers:
            self._on_workers(lambda pool: pool.start())

    def close(self) -> None:
        """Stop the worker processes (if any were started) and close the database's connections."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        self.db.dispose()

    def sweep(self, clock_id: str | None, until: datetime, *, batch: int = 1000, actor: str = TIMER_ACTOR,
              collect: bool = True, lease: str | None = None) -> tuple[int, list[dict[str, Any]]]:
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
                self._hold_lease(conn, clock_id, lease)
            uow = UnitOfWork(cast("Runtime", self), conn, self._active(conn))
            handled, entries = self._fire_due(uow, clock_id, until, batch, actor, collect)
            if handled:
                uow.flush()
        return handled, entries

    def sweep_span(self, clock_id: str, span: Span, *, batch: int = 1000, actor: str = TIMER_ACTOR,
                   collect: bool = True, lease: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """One batch of a parallel sweep (`service/parallel.py`): up to `batch` of the timers of
        `span` (one instant of a test clock, one range of instance ids), judged outside the write
        lock and written if nothing they read has changed meanwhile (`_judge_then_write`); the
        write renews the advance's `lease` on the clock."""
        fence = None if lease is None else partial(self._hold_lease, clock_id=clock_id, lease=lease)
        return self._judge_then_write(
            lambda uow: self._fire_due(uow, clock_id, span.instant, batch, actor, collect, span),
            done=lambda result: result[0] == 0, fence=fence)

    def _judge_then_write(self, judge: Callable[[UnitOfWork], _T],
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
        runtime = cast("Runtime", self)
        with self.db.read() as conn:
            uow = UnitOfWork(runtime, conn, self._active(conn), optimistic=True)
            result = judge(uow)
            if done is not None and done(result):
                return result
            rows = uow.pending()  # JSON and tuples made here, outside the lock
        try:
            with self.db.transaction(bulk=True) as conn:
                if fence is not None:
                    fence(conn)
                if self._active(conn) == uow.version and uow.reads_unchanged(conn):
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

    def _judge_locked(self, conn: Connection, judge: Callable[[UnitOfWork], _T]) -> _T:
        uow = UnitOfWork(cast("Runtime", self), conn, self._active(conn))
        result = judge(uow)
        uow.flush()
        return result

    def _fire_due(self, uow: UnitOfWork, clock_id: str | None, until: datetime, batch: int, actor: str,
                  collect: bool, span: Span | None = None) -> tuple[int, list[dict[str, Any]]]:
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
        self._prefetch_for(uow, claimed)
        due_text: dict[Any, str | None] = {}
        timer_ops, records = uow.timer_ops, uow.records
        for timer in claimed:
            instance, name, event, due_at = timer
            key = (instance, name)
            if key in timer_ops:  # cancelled or re-armed by an earlier event of this batch
                continue
            # deleted whatever its event does: no journal entry (_attempt starts a new journal)
            timer_ops[key] = None
            record = records.get(instance)
            if record is None:
                record = uow.find(instance)
                if record is None:
                    continue
            if not collect:
                self._attempt(uow, instance, event, {}, actor, None, timer)
                continue
            at = due_text.get(due_at)
            if at is None:
                at = due_text[due_at] = rfc3339(uow.reader.stamp_now(due_at))
            entry = {"instance": instance, "event": event, "from": record["state"],
                     "to": record["state"], "at": at, "timer": name}
            self._attempt(uow, instance, event, {}, actor, entry, timer)
            entries.append(entry)
        return len(claimed), entries

    @staticmethod
    def _take_accounts(uow: UnitOfWork, claimed: list[_Timer]) -> list[_Timer]:
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
        account_of = dict(fetch("SELECT id, coalesce(account, id) FROM instances WHERE id = ANY(?)", [ids]))
        # the account rows this transaction could lock (an instance whose account another
        # transaction holds is left out)
        locked = {row[0] for row in fetch("SELECT id FROM instances WHERE id = ANY(?) FOR UPDATE SKIP LOCKED",
                                          [sorted(set(account_of.values()))])}
        mine = [t for t in claimed if account_of.get(t.instance) in locked]
        if not mine:
            return mine
        held = {(t.instance, t.name) for t in mine}
        last = max(t.due_at for t in mine)
        first_other: dict[str, tuple[Any, str]] = {}
        # (only real-time timers due by the last one kept can come before one of them)
        for instance, name, clock, due_at in fetch(
                "SELECT instance, name, clock, due_at FROM timers WHERE instance = ANY(?)",
                [list(dict.fromkeys(t.instance for t in mine))]):
            if clock is None and due_at <= last and (instance, name) not in held:
                other = first_other.get(instance)
                if other is None or (due_at, name) < other:
                    first_other[instance] = (due_at, name)
        return [t for t in mine
                if t.instance not in first_other or (t.due_at, t.name) < first_other[t.instance]]

    def _claim(self, uow: UnitOfWork, clock_id: str | None, until: datetime, batch: int,
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
        if self.db.for_update():
            sql += " FOR UPDATE SKIP LOCKED"
        rows = [_Timer(*row) for row in reader.fetch(sql, [*params, batch])]
        if not rows:
            return rows, None
        first = rows[0].due_at
        if clock_id is not None:
            rows = [t for t in rows if t.due_at == first]
        return rows, uow.reader.stamp_now(first)

    @staticmethod
    def _attempt(uow: UnitOfWork, instance_id: str, event: str, data: Mapping[str, Any], actor: str,
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
        uow.journal.clear()
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

    def _prefetch_for(self, uow: UnitOfWork, claimed: list[Any]) -> None:
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

    def fire_many(self, events: Iterable[tuple[str, str, Mapping[str, Any]]], *, actor: str = "api",
                  batch: int = 1000) -> dict[str, int]:
        """Fire many events (e.g. a payment gateway's report), `batch` per transaction.

        Each event is judged and applied exactly as `fire` would (a denial is kept in the history,
        a failed send is recorded as a denied attempt), but a failure touches only that event: the
        others of the batch still commit. Instances, accounts and facts are read in a few queries
        per batch. Returns how many were applied, denied, dropped (not valid in the state, bad
        data or no such instance) and failed (the rules erred: recorded as `failed`, see
        `_attempt`). No If-Match and no Idempotency-Key: use `fire` for those.

        With `workers` > 1 on a SQLite file and `PARALLEL_MIN_TIMERS` events or more, the worker
        processes judge them (`service/parallel.py`): one instance's events still go in their
        order, but events of different instances may commit in another order than given.
        """
        counts = {"applied": 0, "denied": 0, "dropped": 0, "failed": 0}
        stream: Iterator[_Event] = (_Event(*e) for e in events)
        if self._has_workers:
            window = max(batch * self.workers * WINDOW_BATCHES, self.PARALLEL_MIN_TIMERS)
            events_window = list(islice(stream, window))
            if len(events_window) >= self.PARALLEL_MIN_TIMERS:  # enough to be worth the worker processes
                with self.db.bulk_work():
                    while events_window:
                        self._fire_window(events_window, actor, batch, counts)
                        # one window in memory at a time: a month's report can be millions of events
                        del events_window
                        events_window = list(islice(stream, window))
                return counts
            stream = chain(events_window, stream)
        with self.db.bulk_work():
            for chunk in _chunks(stream, batch):
                self._fire_chunk(chunk, actor, counts)
        return counts

    def _fire_window(self, events: list[_Event], actor: str, batch: int, counts: dict[str, int]) -> None:
        fired = self._on_workers(lambda pool: pool.fire(events, actor=actor, batch=batch))
        for outcome, number in fired.items():
            counts[outcome] += number

    def _fire_chunk(self, chunk: list[_Event], actor: str, counts: dict[str, int]) -> None:
        with self.db.transaction(bulk=True) as conn:
            uow = UnitOfWork(cast("Runtime", self), conn, self._active(conn))
            for outcome, number in self._fire_events(uow, chunk, actor).items():
                counts[outcome] += number
            uow.flush()

    def fire_chunk_optimistic(self, chunk: list[_Event], actor: str) -> Counter[str]:
        """One batch of a parallel `fire_many` (`service/parallel.py`), judged outside the write
        lock (`_judge_then_write`); returns how many were applied, denied and dropped."""
        return self._judge_then_write(lambda uow: self._fire_events(uow, chunk, actor))

    def _fire_events(self, uow: UnitOfWork, chunk: list[_Event], actor: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        self._prefetch_for(uow, chunk)
        for instance, event, data in chunk:
            counts[self._attempt(uow, instance, event, data, actor, None)] += 1
        return counts

    def run_due_timers(self, *, limit: int = 1000, actor: str = TIMER_ACTOR) -> list[dict[str, Any]]:
        """Fire real-time timers that are due now (the scheduler and `tollgate worker` call this)."""
        with self.db.bulk_work():
            _, entries = self.sweep(None, self.now(), batch=limit, actor=actor)
        return entries

