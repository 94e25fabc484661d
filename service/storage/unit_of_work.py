"""A unit of work: the identity map and the pending writes of one transaction, written in bulk.

Instances are loaded (and, on PostgreSQL, row-locked) once and kept in memory; the application
judges events against these records (`service/application/judging.py` extends this class with
that) and `flush` writes the instance updates, history rows, timer changes and outbox rows with
one `executemany` per table. A single API event is a unit of one; the timer sweep fires thousands
of timers per unit. `checkpoint`/`rollback_to` undo the in-memory effects of one event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, update

from tollgate.service.exceptions import StaleBatch
from tollgate.service.storage import db as database
from tollgate.service.storage import keys as declared_keys
from tollgate.service.storage.bulk import BulkWriter, Reader
from tollgate.service.storage.dialects import same
from tollgate.service.storage.tables import clocks
from tollgate.workflows.definitions import Key
from tollgate.workflows.exceptions import NotFound

_MISSING = object()
HISTORY_COLUMNS = ("instance", "seq", "event", "from_state", "to_state", "outcome", "reasons", "notes",
                   "data", "at", "rules_version", "actor", "inputs")
TIMER_COLUMNS = ("instance", "name", "event", "due_at", "clock", "armed_at", "armed_seq")
FAILED_TIMER_COLUMNS = ("instance", "name", "event", "due_at", "clock", "error", "failed_at", "rules_version")
NOTIFICATION_COLUMNS = ("instance", "template", "channel", "recipient", "payload", "created_at")
INSTANCE_COLUMNS = ("id", "workflow", "state", "context", "secrets", "version", "history_seq", "clock",
                    "account", "created_at", "updated_at")


log = logging.getLogger("tollgate.timers")
events_log = logging.getLogger("tollgate.events")

_CHUNK = 10_000
_HISTORY = ("history", None, None)  # journal entries that carry nothing (one shared tuple each)
_NOTIFICATION = ("notification", None, None)

#: A pending timer change: (instance, name, event, due_at as stored, clock, armed_at as stored,
#: armed_seq), or None to delete.
TimerRow = tuple[str, str, str, Any, str | None, Any, int | None]



class Pending(NamedTuple):
    """The rows a unit of work writes (`UnitOfWork.pending`), one list per statement kind."""

    inserted: list[tuple[Any, ...]]
    updated: list[tuple[Any, ...]]
    history: list[tuple[Any, ...]]
    timers_deleted: list[tuple[str, str]]
    timers_armed: list[TimerRow]
    notifications: list[tuple[Any, ...]]
    clocks: dict[str, datetime]
    #: Timers whose event failed (`record_rules_failure`), as `failed_timers` rows.
    parked: list[tuple[Any, ...]]
    #: Declared keys (`storage/keys.py`): rows dropped ((instance, name)) and written.
    keys_deleted: list[tuple[str, str]]
    keys_written: list[tuple[Any, ...]]
    #: Optimistic: each UPDATE row ends with the version and history_seq the unit read, and
    #: `write` raises StaleBatch unless every one of them still matched.
    checked: bool = False


class UnitOfWork:
    """In-memory instance records and pending writes for one database transaction."""

    def __init__(self, conn: Connection, *, version_id: int, now: Callable[[], datetime], lock: bool,
                 keys: Mapping[str, tuple[Key, ...]] | None = None, optimistic: bool = False) -> None:
        """`version_id`: the rules version the unit's history rows record; `now`: real time (read
        once per unit); `lock`: load instances `FOR UPDATE` (PostgreSQL); `keys`: the keys each
        workflow declares (only workflows with keys), kept in `instance_keys` by `write`."""
        self.conn = conn
        self.keys: Mapping[str, tuple[Key, ...]] = keys or {}
        #: Instances of keyed workflows changed by this unit: id → the record as stored.
        self.rekeyed: dict[str, dict[str, Any]] = {}
        self.version_id = version_id
        self._now = now
        self.lock = lock
        #: optimistic: judged outside the write lock; every read is kept, so that `reads_unchanged`
        #: can tell under the lock whether the batch still stands (`Batches.judge_then_write`).
        self.reads: list[tuple[str, list[Any], list[Any]]] | None = [] if optimistic else None
        self.reader = Reader(conn, self.reads)
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
            sql += reader.dialect.lock_suffix()
        loads, stamp = reader.loads, reader.stamp
        convert = stamp is not same  # SQLite keeps the stored text: no call per timestamp
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
        for (id_, workflow, state, context, secrets, version, history_seq, clock, account,
             created_at, updated_at) in rows:
            if id_ in records:
                continue
            if convert:
                created_at, updated_at = stamp(created_at), stamp(updated_at)
            records[id_] = {"id": id_, "workflow": workflow, "state": state, "context": loads(context),
                            "secrets": {} if secrets == "{}" else loads(secrets), "version": version,
                            "history_seq": history_seq, "clock": clock, "account": account,
                            "created_at": created_at, "updated_at": updated_at}
            if account:  # _index, inline
                ids = by_account.get((account, workflow))
                if ids is None:
                    by_account[(account, workflow)] = [id_]
                else:
                    ids.append(id_)

    def load(self, ids: Iterable[str]) -> None:
        """Load (and lock) the instances not yet in memory, in one query per 10,000."""
        missing = [i for i in dict.fromkeys(ids) if i not in self.records]
        for lo in range(0, len(missing), _CHUNK):
            where, params = self.reader.dialect.in_clause("id", missing[lo:lo + _CHUNK])
            self._select(where, params, lock=self.lock, by_id=True)

    def fetch(self, sql: str, params: list[Any]) -> list[Any]:
        """Rows of a raw query (`?` placeholders) in this unit's transaction (kept if optimistic)."""
        return self.reader.fetch(sql, params)

    def unique_holder(self, workflow: str, key: str, value: str) -> str | None:
        """The stored instance of `workflow` that holds the unique `key` with `value`, if any."""
        rows = self.reader.fetch(declared_keys.UNIQUE_HOLDER_SQL, [workflow, key, value])
        return str(rows[0][0]) if rows else None

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
            where, params = self.reader.dialect.in_clause("account", account_ids[lo:lo + _CHUNK])
            workflows_in, more = self.reader.dialect.in_clause("workflow", names)
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
                real_now = self.real_now = self._now()
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
        previous = self.records.get(record["id"], _MISSING)
        self.journal.append(("record", record["id"], previous))
        self.records[record["id"]] = record
        if record["id"] not in self.new_ids:
            self.dirty.add(record["id"])
            if previous is not _MISSING and record["workflow"] in self.keys:
                self.rekeyed.setdefault(record["id"], previous)  # type: ignore[arg-type]

    def insert(self, record: dict[str, Any]) -> None:
        self.journal.append(("record", record["id"], _MISSING))
        self.records[record["id"]] = record
        self.new_ids.add(record["id"])
        self._index(record)

    def set_timer(self, instance_id: str, name: str, row: TimerRow | None) -> None:
        """Arm (`row`: a `TimerRow` as `flush` writes it) or delete a timer."""
        key = (instance_id, name)
        self.journal.append(("timer", key, self.timer_ops.get(key, _MISSING)))
        self.timer_ops[key] = row

    def _history(self, instance_id: str, seq: int, event: str, source: str | None, target: str,
                 outcome: str, reasons: Any, notes: Any, data: Any, at: datetime, actor: str,
                 inputs: Mapping[str, Any] | None = None) -> None:
        """Queue one history row (`reasons`, `notes`: sequences of Reason; `data`: a mapping;
        `inputs`: what replaying the attempt needs, or None when it cannot be replayed)."""
        js = self._js
        self.journal.append(_HISTORY)
        self.history_rows.append((
            instance_id, seq, event, source, target, outcome,
            js([r.as_dict() for r in reasons]) if reasons else self._empty_list,
            js([n.as_dict() for n in notes]) if notes else self._empty_list,
            (js(data if type(data) is dict else dict(data)) if data else self._empty_dict),
            self._ts(at), self.version_id, actor, None if inputs is None else js(inputs)))

    def keep_effects(self) -> None:
        """Make every change so far final: `rollback_to` undoes only what comes after."""
        self.journal.clear()

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
            where, params = self.reader.dialect.in_clause("id", part)
            found = {row[0]: (row[1], row[2]) for row in writer.fetch(
                f"SELECT id, version, history_seq FROM instances WHERE {where}", params)}
            if found != {i: marks[i] for i in part if i in marks}:
                return False
        return True

    def rebind(self, conn: Connection) -> None:
        """Write through `conn` (the write transaction) from now on; reads are no longer kept."""
        self.conn = conn
        self.reads = None
        self.reader = Reader(conn)

    def flush(self) -> None:
        """Write everything pending with one executemany per table and kind."""
        self.write(self.pending())

    def pending(self) -> Pending:
        """Everything this unit would write, as the rows `write` sends (no I/O: an optimistic
        unit makes them before it queues for the write lock)."""
        ts, js = self._ts, self._js
        records, new_ids = self.records, self.new_ids
        inserted = [(r["id"], r["workflow"], r["state"], js(r["context"]), js(r["secrets"]), r["version"],
                     r["history_seq"], r["clock"], r["account"], ts(r["created_at"]), ts(r["updated_at"]))
                    for r in (records[i] for i in new_ids if i in records)]
        updated: list[tuple[Any, ...]] = []  # in key order
        marks = self.marks if self.reads is not None else None
        for i in sorted(i for i in self.dirty if i in records and i not in new_ids):
            r = records[i]
            row = (r["state"], js(r["context"]), js(r["secrets"]), r["version"], r["history_seq"],
                   ts(r["updated_at"]), i)
            updated.append(row if marks is None else (*row, *marks[i]))
        ops = self.timer_ops
        deleted = [key for key, t in ops.items() if t is None]
        armed = [t for t in ops.values() if t is not None]
        keys_deleted, keys_written = (declared_keys.changes(self.keys, records, new_ids, self.rekeyed)
                                      if self.keys else ([], []))
        return Pending(inserted, updated, self.history_rows, deleted, armed,
                       self.notification_rows, {c: self.clock_times[c] for c in self.moved_clocks},
                       self.parked_rows, keys_deleted, keys_written, marks is not None)

    def write(self, rows: Pending) -> None:
        """Write `rows` (from `pending`) on this unit's connection; the unit is empty afterwards."""
        bulk = self.reader.writer
        bulk.insert("instances", INSTANCE_COLUMNS, rows.inserted)
        where = "id = ? AND version = ? AND history_seq = ?" if rows.checked else "id = ?"
        updated = bulk.executemany("UPDATE instances SET state = ?, context = ?, secrets = ?, version = ?, "
                                   f"history_seq = ?, updated_at = ? WHERE {where}", rows.updated)
        if rows.checked and updated != len(rows.updated):
            raise StaleBatch("An instance this batch updates changed after it was judged.")
        if rows.keys_deleted:
            bulk.delete_pairs("instance_keys", "instance", "name", rows.keys_deleted)
        if rows.keys_written:
            bulk.insert("instance_keys", declared_keys.KEY_COLUMNS, rows.keys_written, declared_keys.UPSERT)
        bulk.insert("history", HISTORY_COLUMNS, rows.history)
        if database.COMMIT_OBSERVERS and rows.history:  # for the metrics: (workflow, event, outcome, reasons)
            records = self.records
            database.note(self.conn, "history", [
                (records[r[0]]["workflow"] if r[0] in records else "", r[2], r[5],
                 r[6] if r[5] != "applied" else None) for r in rows.history])
        # cancelled or fired: deleted; armed: inserted or replaced in one statement
        bulk.delete_pairs("timers", "instance", "name", rows.timers_deleted)
        bulk.insert("timers", TIMER_COLUMNS, rows.timers_armed,
                    " ON CONFLICT (instance, name) DO UPDATE SET event = excluded.event, "
                    "due_at = excluded.due_at, clock = excluded.clock, armed_at = excluded.armed_at, "
                    "armed_seq = excluded.armed_seq")
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
        self.rekeyed.clear()
        self.history_rows = []
        self.notification_rows = []
        self.timer_ops.clear()
        self.journal.clear()
