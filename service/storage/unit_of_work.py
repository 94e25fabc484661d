"""A unit of work: apply many events in memory inside one transaction, then write them in bulk.

Instances are loaded (and, on PostgreSQL, row-locked) once, every event — including the events
instances send each other — is judged against the in-memory records, and `flush` writes the
instance updates, history rows, timer changes and outbox rows with one `executemany` per table.
A single API event is a unit of one; the timer sweep fires thousands of timers per unit.
`checkpoint`/`rollback_to` undo the in-memory effects of one event whose linked sends failed.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import psycopg
from sqlalchemy import Connection, update
from sqlalchemy.exc import SQLAlchemyError

from tollgate.service.application import facts
from tollgate.service.storage.bulk import BulkWriter, aware_utc, parse_sqlite_timestamp
from tollgate.service.storage.tables import clocks
from tollgate.workflows.definitions import Definition
from tollgate.workflows.engine import Engine
from tollgate.workflows.exceptions import (
    BadRequest,
    GuardDenied,
    InvalidTransition,
    NotFound,
    Reason,
    RulesFailed,
    SendFailed,
    StaleBatch,
    TollgateError,
)
from tollgate.workflows.outcome import Outcome, Snapshot
from tollgate.workflows.secrets import redact

if TYPE_CHECKING:
    from tollgate.service.application.runtime import RulesVersion, Runtime

MAX_SEND_DEPTH = 4
_MISSING = object()
HISTORY_COLUMNS = ("instance", "seq", "event", "from_state", "to_state", "outcome", "reasons", "notes",
                   "data", "at", "rules_version", "actor")
TIMER_COLUMNS = ("instance", "name", "event", "due_at", "clock")
FAILED_TIMER_COLUMNS = ("instance", "name", "event", "due_at", "clock", "error", "failed_at", "rules_version")
NOTIFICATION_COLUMNS = ("instance", "template", "channel", "recipient", "payload", "created_at")
INSTANCE_COLUMNS = ("id", "workflow", "state", "context", "secrets", "version", "history_seq", "clock",
                    "account", "email", "usage_month", "created_at", "updated_at")


log = logging.getLogger("tollgate.timers")
events_log = logging.getLogger("tollgate.events")

#: Errors of the database or its driver: raised through a judgement as they are (the batch is
#: rolled back and retried), never taken for a failure of the rules.
_INFRASTRUCTURE_ERRORS = (SQLAlchemyError, sqlite3.Error, psycopg.Error)

_CHUNK = 10_000
_HISTORY = ("history", None, None)  # journal entries that carry nothing (one shared tuple each)
_NOTIFICATION = ("notification", None, None)

#: A pending timer change: (instance, name, event, due_at as stored, clock), or None to delete.
TimerRow = tuple[str, str, str, Any, str | None]
#: Per (workflow, event): the definition, how the event gets the referenced account (None: it
#: references none; True: read before judging; False: lazily, see `LazyAccount`) and the fact
#: providers the event asks.
_Plan = tuple[Definition, bool | None, tuple[tuple[str, facts.FactProvider], ...]]


class Pending(NamedTuple):
    """The rows a unit of work writes (`UnitOfWork.pending`), one list per statement kind."""

    inserted: list[tuple[Any, ...]]
    signups: list[tuple[Any, ...]]
    others: list[tuple[Any, ...]]
    history: list[tuple[Any, ...]]
    timers_deleted: list[tuple[str, str]]
    timers_armed: list[TimerRow]
    notifications: list[tuple[Any, ...]]
    clocks: dict[str, datetime]
    #: Timers whose event failed (`record_rules_failure`), as `failed_timers` rows.
    parked: list[tuple[Any, ...]]
    #: Optimistic: each UPDATE row ends with the version and history_seq the unit read, and
    #: `write` raises StaleBatch unless every one of them still matched.
    checked: bool = False


class _Reader:
    """The dialect's raw reads: placeholders, JSON and timestamp conversions of `service.tables`."""

    def __init__(self, conn: Connection, log: list[tuple[str, list[Any], list[Any]]] | None = None) -> None:
        self.writer = BulkWriter(conn)
        #: Every read as (sql, params, rows), when the unit judges outside the write lock.
        self.log = log
        if conn.dialect.name == "sqlite":
            # context and secrets are NOT NULL: their text always parses.
            self.loads: Callable[[Any], Any] = orjson.loads
            # created_at / updated_at of a loaded record are only ever written back by `flush`,
            # so SQLite's stored text is kept as it is (BulkWriter.ts passes text through).
            self.stamp: Callable[[Any], Any] = _same
            self.stamp_now: Callable[[Any], Any] = parse_sqlite_timestamp
        else:
            self.loads = _same
            self.stamp = self.stamp_now = aware_utc

    def fetch(self, sql: str, params: list[Any]) -> list[Any]:
        rows = self.writer.fetch(sql, params)
        if self.log is not None:
            self.log.append((sql, params, rows))
        return rows

    def moment(self, value: Any) -> datetime | None:
        """An aware UTC datetime from a record's or row's timestamp (stored text or datetime)."""
        return parse_sqlite_timestamp(value) if type(value) is str else aware_utc(value)


def _same(value: Any) -> Any:
    return value


def account_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """The account as guards see it: the signup's context plus id, state and partner."""
    view = {"partner": False, **(record["context"] or {})}
    view["id"] = record["id"]
    view["state"] = record["state"]
    return view


class LazyAccount(Mapping[str, Any]):
    """`account_view` of an account, read through the unit of work on first use.

    Given to events whose guards, routes, timers and actions do not read the account
    (`Engine.needs_account`), so a batch of them does not load their accounts at all; an action
    that reaches it anyway still sees exactly what it would have. Empty (falsy) when there is no
    such account, where an eagerly read one would be None.
    """

    __slots__ = ("_id", "_uow", "_view")

    def __init__(self, uow: UnitOfWork, account_id: Any) -> None:
        self._uow, self._id = uow, account_id
        self._view: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        view = self._view
        if view is None:
            record = self._uow.find(self._id) if isinstance(self._id, str) and self._id else None
            view = self._view = account_view(record) if record is not None else {}
        return view

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


class UnitOfWork:
    """In-memory instance records and pending writes for one database transaction."""

    def __init__(self, runtime: Runtime, conn: Connection, version: RulesVersion, *,
                 optimistic: bool = False) -> None:
        self.runtime = runtime
        self.conn = conn
        self.version = version
        self.engine: Engine = runtime.engine_for(version)
        self.lock = runtime.db.for_update()
        #: optimistic: judged outside the write lock; every read is kept, so that `reads_unchanged`
        #: can tell under the lock whether the batch still stands (see `Sweeps._judge_then_write`).
        self.reads: list[tuple[str, list[Any], list[Any]]] | None = [] if optimistic else None
        self.reader = _Reader(conn, self.reads)
        #: optimistic: (version, history_seq) of each instance as first read, which were read by
        #: id, and the ids asked for and not found. An instance the unit updates is checked by its
        #: UPDATE (`write`: `AND version = ? AND history_seq = ?`), the others by `reads_unchanged`.
        self.marks: dict[str, tuple[int, int]] = {}
        self.read_by_id: set[str] = set()
        self.absent: set[str] = set()
        # Pending rows are kept as the tuples `flush` hands to executemany: JSON and timestamps
        # converted once, when the row is made (BulkWriter's conversions for this dialect).
        writer = self.reader.writer
        self._ts, self._js = writer.ts, writer.js
        self._empty_list, self._empty_dict = writer.js([]), writer.js({})
        self._plans: dict[tuple[str, str], _Plan] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.by_account: dict[tuple[str, str], list[str]] = {}
        self.new_ids: set[str] = set()
        self.dirty: set[str] = set()
        self.groups: set[tuple[str, str]] = set()
        self.history_rows: list[tuple[Any, ...]] = []
        self.notification_rows: list[tuple[Any, ...]] = []
        self.timer_ops: dict[tuple[str, str], TimerRow | None] = {}
        self.clock_times: dict[str, datetime] = {}
        self.real_now: datetime | None = None
        self.moved_clocks: set[str] = set()
        #: Events the rules failed on (`record_rules_failure`): parked timer rows, and what to log.
        self.parked_rows: list[tuple[Any, ...]] = []
        self.failures: list[tuple[str, str, str | None, str]] = []
        self.journal: list[tuple[str, Any, Any]] = []

    # ── loading ──────────────────────────────────────────────────────────────────────────────

    def _index(self, record: Mapping[str, Any]) -> None:
        if record["account"]:
            self.by_account.setdefault((record["account"], record["workflow"]), []).append(record["id"])

    def _select(self, where: str, params: list[Any], *, lock: bool = False, by_id: bool = False) -> None:
        """Read instance rows on the DBAPI cursor and remember those not yet in memory.

        The records equal what `select(instances)` returns (JSON parsed, timestamps aware in
        UTC — on SQLite `created_at` and `updated_at` stay the stored text until written back)
        at a fraction of SQLAlchemy's per-row cost; `where` uses `?` placeholders.
        """
        reader = self.reader
        sql = f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM instances WHERE {where}"
        if lock:
            sql += " FOR UPDATE"
        loads, stamp = reader.loads, reader.stamp
        convert = stamp is not _same  # SQLite keeps the stored text: no call per timestamp
        records, by_account = self.records, self.by_account
        rows = reader.writer.fetch(sql, params)
        if self.reads is not None:  # kept for `reads_unchanged`: a row's version and history_seq
            # move with every change of it (the history_seq alone with a denied attempt)
            marks = self.marks
            for row in rows:
                marks.setdefault(row[0], (row[5], row[6]))
            if by_id:  # `params` are the ids
                self.read_by_id.update(row[0] for row in rows)
                self.absent.update(i for i in params if i not in marks)
            else:
                self.reads.append((f"SELECT id, version, history_seq FROM instances WHERE {where}", params,
                                   [(row[0], row[5], row[6]) for row in rows]))
        for (id_, workflow, state, context, secrets, version, history_seq, clock, account, email,
             usage_month, created_at, updated_at) in rows:
            if id_ in records:
                continue
            if convert:
                created_at, updated_at = stamp(created_at), stamp(updated_at)
            records[id_] = {"id": id_, "workflow": workflow, "state": state, "context": loads(context),
                            "secrets": {} if secrets == "{}" else loads(secrets), "version": version,
                            "history_seq": history_seq, "clock": clock, "account": account, "email": email,
                            "usage_month": usage_month, "created_at": created_at, "updated_at": updated_at}
            if account:  # _index, inline
                ids = by_account.get((account, workflow))
                if ids is None:
                    by_account[(account, workflow)] = [id_]
                else:
                    ids.append(id_)

    def _in(self, column: str, values: list[str]) -> tuple[str, list[Any]]:
        """`column IN (…)` on SQLite, `column = ANY(?)` (one array parameter) on PostgreSQL."""
        if self.conn.dialect.name == "sqlite":
            return f"{column} IN ({', '.join('?' * len(values))})", list(values)
        return f"{column} = ANY(?)", [list(values)]

    def load(self, ids: Iterable[str]) -> None:
        """Load (and lock) the instances not yet in memory, in one query per 10,000."""
        missing = [i for i in dict.fromkeys(ids) if i not in self.records]
        for lo in range(0, len(missing), _CHUNK):
            where, params = self._in("id", missing[lo:lo + _CHUNK])
            self._select(where, params, lock=self.lock, by_id=True)

    def get(self, instance_id: str) -> dict[str, Any]:
        if instance_id not in self.records:
            self.load([instance_id])
        record = self.records.get(instance_id)
        if record is None:
            raise NotFound(f"There is no instance '{instance_id}'.")
        return record

    def find(self, instance_id: str) -> dict[str, Any] | None:
        try:
            return self.get(instance_id)
        except NotFound:
            return None

    def prefetch(self, accounts: Iterable[str], workflows: Iterable[str]) -> None:
        """Load every instance of these workflows for these accounts, in one query."""
        wanted = [(a, w) for a in dict.fromkeys(accounts) for w in workflows if (a, w) not in self.groups]
        if not wanted:
            return
        account_ids = sorted({a for a, _ in wanted})
        names = sorted({w for _, w in wanted})
        for lo in range(0, len(account_ids), _CHUNK):
            where, params = self._in("account", account_ids[lo:lo + _CHUNK])
            workflows_in, more = self._in("workflow", names)
            self._select(f"{where} AND {workflows_in}", params + more)
        self.groups.update(wanted)

    def related(self, account: str, workflow: str) -> list[dict[str, Any]]:
        """Every instance of `workflow` referencing `account`, as this unit currently sees them."""
        key = (account, workflow)
        if key not in self.groups:
            self.prefetch([account], [workflow])
        records = self.records
        return [records[i] for i in self.by_account.get(key, ()) if i in records]

    def now_of(self, clock: str | None) -> datetime:
        """The time of `clock` in this unit; real time is read once, so one transaction (a
        batch of timers, an event and the events it sends) happens at one instant."""
        if clock is None:
            real_now = self.real_now
            if real_now is None:
                real_now = self.real_now = self.runtime.now()
            return real_now
        if clock not in self.clock_times:
            rows = self.reader.fetch("SELECT now FROM clocks WHERE id = ?", [clock])
            if not rows:
                raise NotFound(f"There is no clock '{clock}'.")
            moment = self.reader.moment(rows[0][0])
            assert moment is not None  # clocks.now is NOT NULL
            self.clock_times[clock] = moment
        return self.clock_times[clock]

    def set_clock(self, clock: str, moment: datetime) -> None:
        """Move a test clock forward (never back) for the rest of this unit."""
        if moment > self.now_of(clock):
            self.clock_times[clock] = moment
            self.moved_clocks.add(clock)

    # ── changing, with a journal for rollback ────────────────────────────────────────────────

    def _replace(self, record: dict[str, Any]) -> None:
        self.journal.append(("record", record["id"], self.records.get(record["id"], _MISSING)))
        self.records[record["id"]] = record
        if record["id"] not in self.new_ids:
            self.dirty.add(record["id"])

    def insert(self, record: dict[str, Any]) -> None:
        self.journal.append(("record", record["id"], _MISSING))
        self.records[record["id"]] = record
        self.new_ids.add(record["id"])
        self._index(record)

    def set_timer(self, instance_id: str, name: str, row: TimerRow | None) -> None:
        """Arm (`row`: instance, name, event, due_at as `flush` writes it, clock) or delete a timer."""
        key = (instance_id, name)
        self.journal.append(("timer", key, self.timer_ops.get(key, _MISSING)))
        self.timer_ops[key] = row

    def _history(self, instance_id: str, seq: int, event: str, source: str | None, target: str,
                 outcome: str, reasons: Any, notes: Any, data: Any, at: datetime, actor: str) -> None:
        """Queue one history row (`reasons`, `notes`: sequences of Reason; `data`: a mapping)."""
        js = self._js
        self.journal.append(_HISTORY)
        self.history_rows.append((
            instance_id, seq, event, source, target, outcome,
            js([r.as_dict() for r in reasons]) if reasons else self._empty_list,
            js([n.as_dict() for n in notes]) if notes else self._empty_list,
            (js(data if type(data) is dict else dict(data)) if data else self._empty_dict),
            self._ts(at), self.version.id, actor))

    def checkpoint(self) -> int:
        return len(self.journal)

    def rollback_to(self, mark: int) -> None:
        while len(self.journal) > mark:
            kind, key, previous = self.journal.pop()
            if kind == "record":
                if previous is _MISSING:
                    self.records.pop(key, None)
                    self.new_ids.discard(key)
                else:
                    self.records[key] = previous
            elif kind == "timer":
                if previous is _MISSING:
                    self.timer_ops.pop(key, None)
                else:
                    self.timer_ops[key] = previous
            elif kind == "history":
                self.history_rows.pop()
            elif kind == "notification":
                self.notification_rows.pop()

    # ── judging and applying ─────────────────────────────────────────────────────────────────

    def _plan(self, workflow: str, event: str) -> _Plan:
        """What judging `event` on `workflow` needs besides the record, worked out once per unit."""
        plan = self._plans.get((workflow, event))
        if plan is None:
            definition = self.engine.definition(workflow)
            providers = facts.providers_for(definition, event) if event in definition.events else ()
            account = self.engine.needs_account(workflow, event) if definition.references_account else None
            plan = self._plans[(workflow, event)] = (definition, account, providers)
        return plan

    def reads_account_first(self, workflow: str, event: str) -> bool:
        """Whether judging `event` on a `workflow` instance reads its account (so a batch
        should load the accounts of such events up front)."""
        return self._plan(workflow, event)[1] is True

    def decide(self, record: Mapping[str, Any], event: str, data: Mapping[str, Any]) -> Outcome:
        return self._decide(record, event, data)[0]

    def _decide(self, record: Mapping[str, Any], event: str,
                data: Mapping[str, Any]) -> tuple[Outcome, datetime]:
        """The outcome of `event` on `record`, and the instant it was judged at."""
        plan = self._plans.get((record["workflow"], event))
        if plan is None:
            plan = self._plan(record["workflow"], event)
        _, account_mode, providers = plan
        account: Mapping[str, Any] | None = None
        if account_mode:
            account_id = record["context"].get("account")
            account_record = self.records.get(account_id)
            if account_record is None:
                account_record = self.find(account_id)
            account = account_view(account_record) if account_record is not None else None
        elif account_mode is not None:
            account = LazyAccount(self, record["context"].get("account"))
        gathered = {name: provide(self, record, data) for name, provide in providers} if providers else {}
        snapshot = Snapshot(workflow=record["workflow"], state=record["state"], context=record["context"],
                            id=record["id"], account=account, facts=gathered, secrets=record["secrets"] or {})
        clock = record["clock"]
        now = self.real_now if clock is None else self.clock_times.get(clock)
        if now is None:
            now = self.now_of(clock)
        try:
            outcome = self.engine.decide(snapshot, event, data, now)
        except (TollgateError, *_INFRASTRUCTURE_ERRORS):
            raise
        except Exception as error:  # the rules themselves failed (e.g. an expression on a missing field)
            raise RulesFailed(record["workflow"], record["id"], event, error) from error
        return outcome, now

    def record_attempt(self, record: Mapping[str, Any], outcome: Outcome, actor: str, at: datetime) -> None:
        self._history(record["id"], record["history_seq"] + 1, outcome.event, outcome.source, outcome.target,
                      "applied" if outcome.applied else "denied", outcome.reasons, outcome.notes,
                      outcome.data, at, actor)

    def apply(self, instance_id: str, event: str, data: Mapping[str, Any], actor: str,
              depth: int = 0) -> Outcome:
        """Judge and apply one event; a denial is recorded, then raised as GuardDenied."""
        record = self.records.get(instance_id)
        if record is None:
            record = self.get(instance_id)
        outcome, now = self._decide(record, event, data)
        seq = record["history_seq"] + 1
        applied = outcome.applied
        self._history(instance_id, seq, outcome.event, outcome.source, outcome.target,
                      "applied" if applied else "denied", outcome.reasons, outcome.notes, outcome.data,
                      now, actor)
        updated = record.copy()
        updated["history_seq"] = seq
        changed = applied
        # The outcome's context and secrets are the engine's own fresh dicts (its Step's copies),
        # never mutated afterwards: the record takes them as they are.
        if outcome.context_changed:
            context = outcome.context
            updated["context"] = context if type(context) is dict else dict(context)
            changed = True
            if record["workflow"] == "signup":
                updated["email"] = context.get("email")
        secrets = outcome.secrets
        if secrets != (record["secrets"] or {}):
            updated["secrets"] = secrets if type(secrets) is dict else dict(secrets)
            changed = True
        if changed:  # the version (ETag) moves only when the instance itself changes
            updated["version"] = record["version"] + 1
            updated["updated_at"] = now
        # self._replace(updated), inline: `record` is what self.records held for the id
        self.journal.append(("record", instance_id, record))
        self.records[instance_id] = updated
        if instance_id not in self.new_ids:
            self.dirty.add(instance_id)
        if not applied:
            raise GuardDenied(event, list(outcome.reasons))
        updated["state"] = outcome.target
        if outcome.timers_set or outcome.timers_cancelled or outcome.notifications:
            self.apply_effects(updated, outcome, now)
        for send in outcome.sends:
            if depth >= MAX_SEND_DEPTH:
                raise SendFailed(send.instance, send.event,
                                 TollgateError("Events sent between instances nest too deeply."))
            try:
                self.apply(send.instance, send.event, send.data, f"{record['workflow']}:{record['id']}",
                           depth + 1)
            except SendFailed:
                raise
            except (GuardDenied, InvalidTransition, NotFound, BadRequest) as error:
                raise SendFailed(send.instance, send.event, error) from error
        return outcome

    def record_failure(self, instance_id: str, event: str, data: Mapping[str, Any], actor: str,
                       failure: SendFailed) -> None:
        """After `rollback_to`, keep the attempt whose linked send failed in the history as denied."""
        record = self.get(instance_id)
        now = self.now_of(record["clock"])
        secret = self.engine.definition(record["workflow"]).secret_fields
        self._history(record["id"], record["history_seq"] + 1, event, record["state"], record["state"],
                      "denied", failure.reasons, (), redact(data, secret), now, actor)
        self._replace(dict(record, history_seq=record["history_seq"] + 1))

    def record_rules_failure(self, instance_id: str, event: str, data: Mapping[str, Any], actor: str,
                             failure: RulesFailed, timer: tuple[str, str, str, Any] | None = None) -> None:
        """After `rollback_to`, keep an attempt the rules failed on in the history as `failed`
        (state unchanged, the error in its reason's detail); the timer that fired it, if any
        (instance, name, event, due_at as read), is parked in `failed_timers` by `write`."""
        record = self.get(instance_id)
        now = self.now_of(record["clock"])
        secret = self.engine.definition(record["workflow"]).secret_fields
        reason = Reason("rules_failed", "정책 규칙을 평가하는 중 오류가 발생하여 적용하지 않았습니다.",
                        "The rules failed while judging this event; nothing was applied.",
                        failure.message)
        self._history(record["id"], record["history_seq"] + 1, event, record["state"], record["state"],
                      "failed", (reason,), (), redact(data, secret), now, actor)
        self._replace(dict(record, history_seq=record["history_seq"] + 1))
        name = None
        if timer is not None:
            name, due_at = timer[1], timer[3]
            self.parked_rows.append((instance_id, name, timer[2], self._ts(due_at),
                                     record["clock"], failure.error, self._ts(now), self.version.id))
        self.failures.append((instance_id, event, name, failure.error))

    def apply_effects(self, record: Mapping[str, Any], outcome: Outcome, now: datetime) -> None:
        """Timer changes and outbox rows of an applied (or created) outcome."""
        instance_id = record["id"]
        journal, ops = self.journal, self.timer_ops
        for name in outcome.timers_cancelled:  # set_timer(instance_id, name, None), inline
            key = (instance_id, name)
            journal.append(("timer", key, ops.get(key, _MISSING)))
            ops[key] = None
        if outcome.timers_set:
            ts, clock = self._ts, record["clock"]
            for timer in outcome.timers_set:
                key = (instance_id, timer.name)
                journal.append(("timer", key, ops.get(key, _MISSING)))
                ops[key] = (instance_id, timer.name, timer.event, ts(timer.at), clock)
        if outcome.notifications:
            js, created_at, rows = self._js, self._ts(now), self.notification_rows
            for note in outcome.notifications:
                payload = note.payload
                journal.append(_NOTIFICATION)
                rows.append((instance_id, note.template, note.channel, note.recipient,
                             js(payload if type(payload) is dict else dict(payload)), created_at))

    # ── writing ──────────────────────────────────────────────────────────────────────────────

    def reads_unchanged(self, conn: Connection) -> bool:
        """Whether every read of this optimistic unit gives the same rows on `conn` (inside the
        write transaction) as it did when the unit judged its events.

        The reads are run again exactly (the same statements and parameters, so a row that
        appeared or vanished under a predicate shows as well as a changed one): if all agree,
        the database still is, for everything the batch looked at, what it was judged against,
        and writing the batch now is the same as judging it now.
        """
        if self.reads is None:
            raise TypeError("Only an optimistic unit of work keeps its reads.")
        writer = BulkWriter(conn)
        if not all(writer.fetch(sql, params) == rows for sql, params, rows in self.reads):
            return False
        # By id: the instances read and not updated (an UPDATE checks its own), and the ids not found.
        updated = self.dirty - self.new_ids
        marks = self.marks
        ids = [i for i in self.read_by_id if i not in updated]
        ids.extend(self.absent)
        for lo in range(0, len(ids), _CHUNK):
            part = ids[lo:lo + _CHUNK]
            where, params = self._in("id", part)
            found = {row[0]: (row[1], row[2]) for row in writer.fetch(
                f"SELECT id, version, history_seq FROM instances WHERE {where}", params)}
            if found != {i: marks[i] for i in part if i in marks}:
                return False
        return True

    def rebind(self, conn: Connection) -> None:
        """Write through `conn` (the write transaction) from now on; reads are no longer kept."""
        self.conn = conn
        self.reads = None
        self.reader = _Reader(conn)

    def flush(self) -> None:
        """Write everything pending with one executemany per table and kind."""
        self.write(self.pending())

    def pending(self) -> Pending:
        """Everything this unit would write, as the rows `write` sends (no I/O: an optimistic
        unit makes them before it queues for the write lock)."""
        ts, js = self._ts, self._js
        records, new_ids = self.records, self.new_ids
        inserted = [(r["id"], r["workflow"], r["state"], js(r["context"]), js(r["secrets"]), r["version"],
                     r["history_seq"], r["clock"], r["account"], r["email"], r["usage_month"],
                     ts(r["created_at"]), ts(r["updated_at"]))
                    for r in (records[i] for i in new_ids if i in records)]
        # Only a signup's email can change, and `email` is indexed: other rows leave it out of
        # the UPDATE so SQLite does not rewrite that index entry. Rows go in key order.
        signups: list[tuple[Any, ...]] = []
        others: list[tuple[Any, ...]] = []
        marks = self.marks if self.reads is not None else None
        for i in sorted(i for i in self.dirty if i in records and i not in new_ids):
            r = records[i]
            if r["workflow"] == "signup":
                row: tuple[Any, ...] = (r["state"], js(r["context"]), js(r["secrets"]), r["version"],
                                        r["history_seq"], r["email"], ts(r["updated_at"]), i)
                signups.append(row if marks is None else (*row, *marks[i]))
            else:
                row = (r["state"], js(r["context"]), js(r["secrets"]), r["version"], r["history_seq"],
                       ts(r["updated_at"]), i)
                others.append(row if marks is None else (*row, *marks[i]))
        ops = self.timer_ops
        deleted = [key for key, t in ops.items() if t is None]
        armed = [t for t in ops.values() if t is not None]
        return Pending(inserted, signups, others, self.history_rows, deleted, armed,
                       self.notification_rows, {c: self.clock_times[c] for c in self.moved_clocks},
                       self.parked_rows, marks is not None)

    def write(self, rows: Pending) -> None:
        """Write `rows` (from `pending`) on this unit's connection; the unit is empty afterwards."""
        bulk = self.reader.writer
        bulk.insert("instances", INSTANCE_COLUMNS, rows.inserted)
        where = "id = ? AND version = ? AND history_seq = ?" if rows.checked else "id = ?"
        updated = bulk.executemany("UPDATE instances SET state = ?, context = ?, secrets = ?, version = ?, "
                                   f"history_seq = ?, email = ?, updated_at = ? WHERE {where}", rows.signups)
        updated += bulk.executemany("UPDATE instances SET state = ?, context = ?, secrets = ?, version = ?, "
                                    f"history_seq = ?, updated_at = ? WHERE {where}", rows.others)
        if rows.checked and updated != len(rows.signups) + len(rows.others):
            raise StaleBatch("An instance this batch updates changed after it was judged.")
        bulk.insert("history", HISTORY_COLUMNS, rows.history)
        # cancelled or fired: deleted; armed: inserted or replaced in one statement
        bulk.delete_pairs("timers", "instance", "name", rows.timers_deleted)
        bulk.insert("timers", TIMER_COLUMNS, rows.timers_armed,
                    " ON CONFLICT (instance, name) DO UPDATE SET event = excluded.event, "
                    "due_at = excluded.due_at, clock = excluded.clock")
        bulk.insert("notifications", NOTIFICATION_COLUMNS, rows.notifications)
        if rows.parked:
            bulk.insert("failed_timers", FAILED_TIMER_COLUMNS, rows.parked)
        for clock, moment in rows.clocks.items():  # forward only, whoever else moved it
            self.conn.execute(update(clocks).where(clocks.c.id == clock, clocks.c.now < moment)
                              .values(now=moment))
        for instance_id, event, timer, error in self.failures:
            if timer is None:
                events_log.error("The rules failed on the event %s of the instance %s; recorded as "
                                 "failed: %s", event, instance_id, error)
            else:
                log.error("The timer %s (event %s) of the instance %s failed and was parked: %s",
                          timer, event, instance_id, error)
        self.failures = []
        self.parked_rows = []
        self.moved_clocks.clear()
        self.new_ids.clear()
        self.dirty.clear()
        self.history_rows = []
        self.notification_rows = []
        self.timer_ops.clear()
        self.journal.clear()
