"""Test clocks: create, read, and advance them, firing every timer due on the way in time order.

Ordering under concurrency: the advances of one test clock take turns, by a lease on the clock's
row (`service/application/leases.py`) that every batch of the advance renews and checks, so one
advance runs its instants in time order while another waits (then goes on from where the clock
is). A clock only moves forward. Big instants go to the worker processes (`parallel.py`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from tollgate.service.application.leases import ClockLeases
from tollgate.service.application.parallel import SPANS_PER_WORKER, WorkerPool, Workers
from tollgate.service.application.replans import Replans
from tollgate.service.application.sweeps import TIMER_ACTOR, Collect, Span, Sweeps
from tollgate.service.application.times import rfc3339
from tollgate.service.exceptions import ClockError, Conflict
from tollgate.service.storage.bulk import BulkWriter
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import clocks, history, instances
from tollgate.workflows.exceptions import NotFound

#: Timers due before a version's instant fire under the version before it; the smallest step.
_TICK = timedelta(microseconds=1)


class Clocks:
    """The test clocks of `db`; advances sweep with `sweeps`, on `workers` when an instant is big."""

    def __init__(self, db: Database, now: Callable[[], datetime], sweeps: Sweeps, leases: ClockLeases,
                 workers: Workers, replans: Replans | None = None) -> None:
        self.db = db
        self.now = now
        self.sweeps = sweeps
        self.leases = leases
        self.workers = workers
        #: Re-plans the clock's timers when its advance crosses the instant of a scheduled version.
        self.replans = replans

    def clock_now(self, conn: Connection, clock_id: str | None) -> datetime:
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
            planned = None
            if self.replans is not None:  # its timers will be armed under the version in effect there
                real_now = self.now()
                planned = self.replans.versions.schedule(conn).at(now, real_now)[0].id
            conn.execute(insert(clocks).values(id=clock_id, now=now, created_at=self.now(),
                                               rules_version=planned))
        return {"id": clock_id, "now": rfc3339(now), "fired": []}

    def get_clock(self, clock_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return {"id": clock_id, "now": rfc3339(self.clock_now(conn, clock_id)), "fired": []}

    def advance_clock(self, clock_id: str, to: datetime, *, actor: str = TIMER_ACTOR,
                      batch: int = 1000, collect: Collect = True) -> dict[str, Any]:
        """Move a test clock to `to`, firing every timer due on the way in time order.

        Timers set by the fired transitions are fired too when they fall due before `to`. With
        `collect=False` only the number fired is returned (for runs of millions of timers); with
        `collect="counts"`, `counts` per event and outcome and `history` (the ids bounding this
        advance's rows in the history, for `fired_page`) instead of `fired`. With
        `workers` > 1 on a SQLite file, an instant with `PARALLEL_MIN_TIMERS` timers or more is
        fired by the worker processes (`parallel.py`), each instant before the next.

        One advance of a clock runs at a time (any thread or process): this one waits up to
        `ClockLeases.ADVANCE_WAIT_SECONDS` for the lease on the clock (then ClockBusy, 409) and goes on from
        wherever the clock then is. The clock ends at the later of `to` and where it was: a target
        another advance overtook meanwhile moves nothing. A target before the clock's time when
        the request arrives is refused (ClockError).
        """
        with self.db.read() as conn:
            current = self.clock_now(conn, clock_id)
        if to < current:
            raise ClockError(f"The clock '{clock_id}' is at {rfc3339(current)}; it cannot go back to "
                             f"{rfc3339(to)}.")
        lease = self.leases.take(clock_id)
        released = False
        fired: list[dict[str, Any]] = []
        count = 0
        first_id = self._last_history_id() if collect == "counts" else 0
        try:
            with self.db.bulk_work():
                # Each version scheduled inside (current, to] takes effect on the clock at its
                # instant: the timers due before it fire first, then the clock's timers are
                # re-planned under it, then those due from it on fire (judged by it).
                changes = self._version_changes(clock_id, current, to, lease)
                for until in [*(change - _TICK for change in changes), to]:
                    while True:
                        spans = self.parallel_spans(clock_id, until, lease) if self.workers.active else None
                        if spans:
                            handled, entries = self.workers.run(partial(
                                WorkerPool.sweep, clock_id=clock_id, spans=spans, batch=batch, actor=actor,
                                collect=collect, lease=lease))
                        else:
                            handled, entries = self.sweeps.sweep(clock_id, until, batch=batch, actor=actor,
                                                                 collect=collect, lease=lease)
                        if not handled:
                            break
                        count += handled
                        fired.extend(entries)
                    if until != to:
                        self._take_over(clock_id, until + _TICK, lease)
            with self.db.transaction() as conn:
                self.leases.hold(conn, clock_id, lease)
                conn.execute(update(clocks).where(clocks.c.id == clock_id, clocks.c.now < to).values(now=to))
                conn.execute(update(clocks).where(clocks.c.id == clock_id)
                             .values(lease_owner=None, lease_expires=None))
                now = conn.execute(select(clocks.c.now).where(clocks.c.id == clock_id)).scalar_one()
                # still holding the lease: no later advance of this clock has written yet
                last_id = self._last_history_id(conn) if collect == "counts" else 0
            released = True
        finally:
            if not released:
                self.leases.release(clock_id, lease)
        if collect == "counts":
            counts: dict[str, dict[str, int]] = {}
            for entry in fired:
                by_outcome = counts.setdefault(entry["event"], {})
                by_outcome[entry["outcome"]] = by_outcome.get(entry["outcome"], 0) + entry["count"]
            return {"id": clock_id, "now": rfc3339(now), "counts": counts, "history": (first_id, last_id)}
        result: dict[str, Any] = {"id": clock_id, "now": rfc3339(now), "fired": fired}
        if not collect:
            result["fired_count"] = count
        return result

    def _version_changes(self, clock_id: str, start: datetime, to: datetime, lease: str) -> list[datetime]:
        """The instants in (start, to] at which another rules version takes effect on the clock;
        first, the clock's timers are brought under the version in effect where it is now."""
        if self.replans is None:
            return []
        real_now = self.now()
        with self.db.read() as conn:  # (the lease is held: the clock stays where it is)
            start = self.clock_now(conn, clock_id)
            schedule = self.replans.versions.schedule(conn)
            planned = conn.execute(select(clocks.c.rules_version).where(clocks.c.id == clock_id)).scalar()
        if planned != schedule.at(start, real_now)[0].id:  # (a write only when there is work)
            self._take_over(clock_id, start, lease)
        return schedule.changes_between(start, to, real_now)

    def _take_over(self, clock_id: str, instant: datetime | None, lease: str) -> datetime:
        """Move the clock to `instant` (None: where it is) and re-plan its timers if another
        version is in effect there, in one transaction under the advance's lease."""
        assert self.replans is not None
        with self.db.transaction(bulk=True) as conn:
            self.leases.hold(conn, clock_id, lease)
            if instant is None:
                instant = self.clock_now(conn, clock_id)
            self.replans.clock(conn, clock_id, instant, self.now())
        return instant

    def _last_history_id(self, conn: Connection | None = None) -> int:
        """The highest id of the history (0 when empty): an advance's rows come after the one read
        once it holds the clock's lease, and up to the one read before it lets go."""
        query = select(func.coalesce(func.max(history.c.id), 0))
        if conn is not None:
            return int(conn.execute(query).scalar_one())
        with self.db.read() as read:
            return int(read.execute(query).scalar_one())

    def fired_page(self, clock_id: str, first_id: int, last_id: int, *, after: int | None = None,
                   limit: int = 500) -> tuple[list[dict[str, Any]], int | None]:
        """A page of what one advance of `clock_id` fired: its timers' attempts recorded in the
        history with ids in (`first_id`, `last_id`], after the id `after`, in the order they were
        judged; and the id to go on after (None on the last page). Read from the history a page at
        a time (one indexed range query), never held in memory whole. A timer whose event was no
        longer valid in the instance's state changed nothing and left no history row: it is in the
        advance's `counts` as `dropped` only."""
        start = first_id if after is None else max(first_id, after)
        query = (select(history.c.id, history.c.instance, history.c.event, history.c.from_state,
                        history.c.to_state, history.c.outcome, history.c.reasons, history.c.at)
                 .join(instances, instances.c.id == history.c.instance)
                 .where(history.c.id > start, history.c.id <= last_id, history.c.actor == TIMER_ACTOR,
                        instances.c.clock == clock_id)
                 .order_by(history.c.id).limit(limit + 1))
        with self.db.read() as conn:
            rows = list(conn.execute(query))
        items = [{"instance": r.instance, "event": r.event, "from": r.from_state, "to": r.to_state,
                  "at": rfc3339(r.at), "outcome": r.outcome,
                  **({"reasons": r.reasons} if r.outcome != "applied" else {})} for r in rows[:limit]]
        return items, (rows[limit - 1].id if len(rows) > limit else None)

    # ── the lease that serializes the advances of one clock ─────────────────────────────────

    def parallel_spans(self, clock_id: str, to: datetime, lease: str | None = None) -> list[Span] | None:
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
            if due < self.workers.PARALLEL_MIN_TIMERS:
                return None
            step = -(-due // (self.workers.count * SPANS_PER_WORKER))
            # every step-th instance id in order, in one pass over the index
            bounds = sorted({row[0] for row in writer.fetch(
                "SELECT instance FROM (SELECT instance, row_number() OVER (ORDER BY instance) AS n "
                f"FROM timers WHERE {where}) WHERE n > 1 AND n % ? = 1", [clock_id, first, step])})
        instant = writer.dialect.moment_reader(first)
        assert instant is not None
        with self.db.transaction() as conn:
            if lease is not None:
                self.leases.hold(conn, clock_id, lease)
            conn.execute(update(clocks).where(clocks.c.id == clock_id, clocks.c.now < instant)
                         .values(now=instant))
        return [Span(instant, low, high) for low, high in zip([None, *bounds], [*bounds, None], strict=True)]
