"""Clocks, timer sweeps and batches of events: many events fired in one transaction.

`Sweeps` is mixed into `Runtime` (service/runtime.py), whose rules versions, readers and unit of
work it uses. A sweep claims the timers due at one instant (`FOR UPDATE SKIP LOCKED` on
PostgreSQL), fires them against in-memory records and writes them in bulk; a test clock's
`advance_clock` sweeps until nothing is due before the target time.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from sqlalchemy import Connection, insert, select, update

from service import facts as fact_providers
from service.tables import clocks
from service.unit_of_work import UnitOfWork
from workflows.exceptions import (
    BadRequest,
    ClockError,
    Conflict,
    GuardDenied,
    InvalidTransition,
    NotFound,
    SendFailed,
)

if TYPE_CHECKING:
    from service.db import Database
    from service.runtime import RulesVersion, Runtime

TIMER_ACTOR = "timer"


def rfc3339(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


class _Timer(NamedTuple):
    instance: str
    name: str
    event: str
    due_at: Any  # as the driver returns it: text on SQLite, a datetime on PostgreSQL


class _Event(NamedTuple):
    instance: str
    event: str
    data: Mapping[str, Any]


class Sweeps:
    """Clocks and batch firing; needs the `Runtime` it is mixed into."""

    db: Database
    now: Callable[[], datetime]

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
        `collect=False` only the number fired is returned (for runs of millions of timers).
        """
        with self.db.read() as conn:
            current = self._clock_now(conn, clock_id)
        if to < current:
            raise ClockError(f"The clock '{clock_id}' is at {rfc3339(current)}; it cannot go back to "
                             f"{rfc3339(to)}.")
        fired: list[dict[str, Any]] = []
        count = 0
        with self.db.bulk_work():
            while True:
                handled, entries = self.sweep(clock_id, to, batch=batch, actor=actor, collect=collect)
                if not handled:
                    break
                count += handled
                fired.extend(entries)
        with self.db.transaction() as conn:
            conn.execute(update(clocks).where(clocks.c.id == clock_id).values(now=to))
        result: dict[str, Any] = {"id": clock_id, "now": rfc3339(to), "fired": fired}
        if not collect:
            result["fired_count"] = count
        return result

    def sweep(self, clock_id: str | None, until: datetime, *, batch: int = 1000, actor: str = TIMER_ACTOR,
              collect: bool = True) -> tuple[int, list[dict[str, Any]]]:
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
        """
        entries: list[dict[str, Any]] = []
        with self.db.transaction(bulk=True) as conn:
            uow = UnitOfWork(cast("Runtime", self), conn, self._active(conn))
            claimed, instant = self._claim(uow, clock_id, until, batch)
            if not claimed:
                return 0, entries
            if clock_id is not None and instant is not None:
                uow.set_clock(clock_id, instant)
            self._prefetch_for(uow, claimed)
            due_text: dict[Any, str | None] = {}
            timer_ops, records = uow.timer_ops, uow.records
            for instance, name, event, due_at in claimed:
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
                    self._attempt(uow, instance, event, {}, actor, None)
                    continue
                at = due_text.get(due_at)
                if at is None:
                    at = due_text[due_at] = rfc3339(uow.reader.stamp_now(due_at))
                entry = {"instance": instance, "event": event, "from": record["state"],
                         "to": record["state"], "at": at, "timer": name}
                self._attempt(uow, instance, event, {}, actor, entry)
                entries.append(entry)
            uow.flush()
        return len(claimed), entries

    def _claim(self, uow: UnitOfWork, clock_id: str | None, until: datetime,
               batch: int) -> tuple[list[_Timer], datetime | None]:
        """The due timers this sweep fires (locked on PostgreSQL, skipping those others hold)."""
        writer = uow.reader.writer
        where = "clock IS NULL" if clock_id is None else "clock = ?"
        params: list[Any] = [] if clock_id is None else [clock_id]
        sql = (f"SELECT instance, name, event, due_at FROM timers WHERE {where} AND due_at <= ? "
               "ORDER BY due_at, instance, name LIMIT ?")
        if self.db.for_update():
            sql += " FOR UPDATE SKIP LOCKED"
        rows = [_Timer(*row) for row in writer.fetch(sql, [*params, writer.ts(until), batch])]
        if not rows:
            return rows, None
        first = rows[0].due_at
        if clock_id is not None:
            rows = [t for t in rows if t.due_at == first]
        return rows, uow.reader.stamp_now(first)

    @staticmethod
    def _attempt(uow: UnitOfWork, instance_id: str, event: str, data: Mapping[str, Any], actor: str,
                 entry: dict[str, Any] | None) -> str:
        """Apply one event of a batch; its failure rolls back only its own effects.

        A policy denial stays in the history (a timer is then dropped), a failed send is recorded
        as a denied attempt, an event not valid in the state changes nothing. Returns "applied",
        "denied" or "dropped"; `entry` (if given) is updated with `to`, `outcome` and `reasons`.
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
        per batch. Returns how many were applied, denied and dropped (not valid in the state, bad
        data or no such instance). No If-Match and no Idempotency-Key: use `fire` for those.
        """
        counts = {"applied": 0, "denied": 0, "dropped": 0}
        chunk: list[_Event] = []
        with self.db.bulk_work():
            for instance_id, event, data in events:
                chunk.append(_Event(instance_id, event, data))
                if len(chunk) >= batch:
                    self._fire_chunk(chunk, actor, counts)
                    chunk = []
            if chunk:
                self._fire_chunk(chunk, actor, counts)
        return counts

    def _fire_chunk(self, chunk: list[_Event], actor: str, counts: dict[str, int]) -> None:
        with self.db.transaction(bulk=True) as conn:
            uow = UnitOfWork(cast("Runtime", self), conn, self._active(conn))
            self._prefetch_for(uow, chunk)
            for instance, event, data in chunk:
                counts[self._attempt(uow, instance, event, data, actor, None)] += 1
            uow.flush()

    def run_due_timers(self, *, limit: int = 1000, actor: str = TIMER_ACTOR) -> list[dict[str, Any]]:
        """Fire real-time timers that are due now (the scheduler and `tollgate worker` call this)."""
        with self.db.bulk_work():
            _, entries = self.sweep(None, self.now(), batch=limit, actor=actor)
        return entries

