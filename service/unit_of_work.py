"""A unit of work: apply many events in memory inside one transaction, then write them in bulk.

Instances are loaded (and, on PostgreSQL, row-locked) once, every event — including the events
instances send each other — is judged against the in-memory records, and `flush` writes the
instance updates, history rows, timer changes and outbox rows with one `executemany` per table.
A single API event is a unit of one; the timer sweep fires thousands of timers per unit.
`checkpoint`/`rollback_to` undo the in-memory effects of one event whose linked sends failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, update

from service.bulk import BulkWriter, aware_utc, parse_sqlite_json, parse_sqlite_timestamp
from service.tables import clocks
from workflows.engine import Engine
from workflows.exceptions import (
    BadRequest,
    GuardDenied,
    InvalidTransition,
    NotFound,
    SendFailed,
    TollgateError,
)
from workflows.outcome import Outcome, Snapshot

if TYPE_CHECKING:
    from service.runtime import RulesVersion, Runtime

MAX_SEND_DEPTH = 4
_MISSING = object()
HISTORY_COLUMNS = ("instance", "seq", "event", "from_state", "to_state", "outcome", "reasons", "notes",
                   "data", "at", "rules_version", "actor")
NOTIFICATION_COLUMNS = ("instance", "template", "channel", "recipient", "payload", "created_at")
INSTANCE_COLUMNS = ("id", "workflow", "state", "context", "secrets", "version", "history_seq", "clock",
                    "account", "email", "usage_month", "created_at", "updated_at")


_CHUNK = 10_000


class _Reader:
    """The dialect's raw reads: placeholders, JSON and timestamp conversions of `service.tables`."""

    def __init__(self, conn: Connection) -> None:
        self.writer = BulkWriter(conn)
        if conn.dialect.name == "sqlite":
            self.loads: Callable[[Any], Any] = parse_sqlite_json
            # created_at / updated_at of a loaded record are only ever written back by `flush`,
            # so SQLite's stored text is kept as it is (BulkWriter.ts passes text through).
            self.stamp: Callable[[Any], Any] = _same
            self.stamp_now: Callable[[Any], Any] = parse_sqlite_timestamp
        else:
            self.loads = _same
            self.stamp = self.stamp_now = aware_utc

    def fetch(self, sql: str, params: list[Any]) -> list[Any]:
        return self.writer.fetch(sql, params)

    def moment(self, value: Any) -> datetime | None:
        """An aware UTC datetime from a record's or row's timestamp (stored text or datetime)."""
        return parse_sqlite_timestamp(value) if type(value) is str else aware_utc(value)


def _same(value: Any) -> Any:
    return value


def account_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """The account as guards see it: the signup's context plus id, state and partner."""
    view = {"partner": False, **(record["context"] or {})}
    view.update(id=record["id"], state=record["state"])
    return view


class UnitOfWork:
    """In-memory instance records and pending writes for one database transaction."""

    def __init__(self, runtime: Runtime, conn: Connection, version: RulesVersion) -> None:
        self.runtime = runtime
        self.conn = conn
        self.version = version
        self.engine: Engine = runtime.engine_for(version)
        self.lock = runtime.db.for_update()
        self.reader = _Reader(conn)
        self.records: dict[str, dict[str, Any]] = {}
        self.by_account: dict[tuple[str, str], list[str]] = {}
        self.new_ids: set[str] = set()
        self.dirty: set[str] = set()
        self.groups: set[tuple[str, str]] = set()
        self.history_rows: list[dict[str, Any]] = []
        self.notification_rows: list[dict[str, Any]] = []
        self.timer_ops: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.clock_times: dict[str, datetime] = {}
        self.real_now: datetime | None = None
        self.moved_clocks: set[str] = set()
        self.journal: list[tuple[str, Any, Any]] = []

    # ── loading ──────────────────────────────────────────────────────────────────────────────

    def _index(self, record: Mapping[str, Any]) -> None:
        if record["account"]:
            self.by_account.setdefault((record["account"], record["workflow"]), []).append(record["id"])

    def _select(self, where: str, params: list[Any], *, lock: bool = False) -> None:
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
        records = self.records
        for (id_, workflow, state, context, secrets, version, history_seq, clock, account, email,
             usage_month, created_at, updated_at) in reader.fetch(sql, params):
            if id_ in records:
                continue
            record = {"id": id_, "workflow": workflow, "state": state, "context": loads(context),
                      "secrets": loads(secrets), "version": version, "history_seq": history_seq,
                      "clock": clock, "account": account, "email": email, "usage_month": usage_month,
                      "created_at": stamp(created_at), "updated_at": stamp(updated_at)}
            records[id_] = record
            self._index(record)

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
            self._select(where, params, lock=self.lock)

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
        self.prefetch([account], [workflow])
        return [self.records[i] for i in self.by_account.get((account, workflow), ()) if i in self.records]

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

    def set_timer(self, instance_id: str, name: str, row: dict[str, Any] | None) -> None:
        key = (instance_id, name)
        self.journal.append(("timer", key, self.timer_ops.get(key, _MISSING)))
        self.timer_ops[key] = row

    def add_history(self, row: dict[str, Any]) -> None:
        self.journal.append(("history", None, None))
        self.history_rows.append(row)

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

    def decide(self, record: Mapping[str, Any], event: str, data: Mapping[str, Any]) -> Outcome:
        from service import facts

        definition = self.engine.definition(record["workflow"])
        account = None
        if definition.references_account:
            account_record = self.find(record["context"].get("account"))
            account = account_view(account_record) if account_record is not None else None
        gathered = facts.gather(self, definition, event, record, data) if event in definition.events else {}
        snapshot = Snapshot(workflow=record["workflow"], state=record["state"], context=record["context"],
                            id=record["id"], account=account, facts=gathered, secrets=record["secrets"] or {})
        return self.engine.decide(snapshot, event, data, self.now_of(record["clock"]))

    def record_attempt(self, record: Mapping[str, Any], outcome: Outcome, actor: str, at: datetime) -> None:
        self.add_history({
            "instance": record["id"], "seq": record["history_seq"] + 1, "event": outcome.event,
            "from_state": outcome.source, "to_state": outcome.target,
            "outcome": "applied" if outcome.applied else "denied",
            "reasons": [r.as_dict() for r in outcome.reasons], "notes": [n.as_dict() for n in outcome.notes],
            "data": dict(outcome.data), "at": at, "rules_version": self.version.id, "actor": actor})

    def apply(self, instance_id: str, event: str, data: Mapping[str, Any], actor: str,
              depth: int = 0) -> Outcome:
        """Judge and apply one event; a denial is recorded, then raised as GuardDenied."""
        record = self.get(instance_id)
        outcome = self.decide(record, event, data)
        now = self.now_of(record["clock"])
        self.record_attempt(record, outcome, actor, now)
        updated = dict(record, history_seq=record["history_seq"] + 1)
        changed = outcome.applied
        if outcome.context_changed:
            updated["context"] = dict(outcome.context)
            changed = True
            if record["workflow"] == "signup":
                updated["email"] = outcome.context.get("email")
        if outcome.secrets != (record["secrets"] or {}):
            updated["secrets"] = dict(outcome.secrets)
            changed = True
        if changed:  # the version (ETag) moves only when the instance itself changes
            updated.update(version=record["version"] + 1, updated_at=now)
        if not outcome.applied:
            self._replace(updated)
            raise GuardDenied(event, list(outcome.reasons))
        updated["state"] = outcome.target
        self._replace(updated)
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
        self.add_history({
            "instance": record["id"], "seq": record["history_seq"] + 1, "event": event,
            "from_state": record["state"], "to_state": record["state"], "outcome": "denied",
            "reasons": [r.as_dict() for r in failure.reasons], "notes": [],
            "data": {k: ("[redacted]" if k in secret else v) for k, v in data.items()},
            "at": now, "rules_version": self.version.id, "actor": actor})
        self._replace(dict(record, history_seq=record["history_seq"] + 1))

    def apply_effects(self, record: Mapping[str, Any], outcome: Outcome, now: datetime) -> None:
        """Timer changes and outbox rows of an applied (or created) outcome."""
        for name in outcome.timers_cancelled:
            self.set_timer(record["id"], name, None)
        for timer in outcome.timers_set:
            self.set_timer(record["id"], timer.name, {"instance": record["id"], "name": timer.name,
                                                      "event": timer.event, "due_at": timer.at,
                                                      "clock": record["clock"]})
        for note in outcome.notifications:
            self.journal.append(("notification", None, None))
            self.notification_rows.append({"instance": record["id"], "template": note.template,
                                           "channel": note.channel, "recipient": note.recipient,
                                           "payload": dict(note.payload), "created_at": now})

    # ── writing ──────────────────────────────────────────────────────────────────────────────

    def flush(self) -> None:
        """Write everything pending with one executemany per table and kind."""
        bulk = BulkWriter(self.conn)
        ts, js = bulk.ts, bulk.js
        if self.new_ids:
            bulk.insert("instances", INSTANCE_COLUMNS, [
                (r["id"], r["workflow"], r["state"], js(r["context"]), js(r["secrets"]), r["version"],
                 r["history_seq"], r["clock"], r["account"], r["email"], r["usage_month"],
                 ts(r["created_at"]), ts(r["updated_at"]))
                for r in (self.records[i] for i in self.new_ids if i in self.records)])
        # Only a signup's email can change, and `email` is indexed: other rows leave it out of
        # the UPDATE so SQLite does not rewrite that index entry. Rows go in key order.
        changed = sorted(i for i in self.dirty if i in self.records and i not in self.new_ids)
        rows = {True: [], False: []}  # type: dict[bool, list[tuple[Any, ...]]]
        for i in changed:
            r = self.records[i]
            signup = r["workflow"] == "signup"
            head = (r["state"], js(r["context"]), js(r["secrets"]), r["version"], r["history_seq"])
            rows[signup].append((*head, r["email"], ts(r["updated_at"]), i) if signup
                                else (*head, ts(r["updated_at"]), i))
        bulk.executemany("UPDATE instances SET state = ?, context = ?, secrets = ?, version = ?, "
                         "history_seq = ?, email = ?, updated_at = ? WHERE id = ?", rows[True])
        bulk.executemany("UPDATE instances SET state = ?, context = ?, secrets = ?, version = ?, "
                         "history_seq = ?, updated_at = ? WHERE id = ?", rows[False])
        bulk.insert("history", HISTORY_COLUMNS, [
            (h["instance"], h["seq"], h["event"], h["from_state"], h["to_state"], h["outcome"],
             js(h["reasons"]), js(h["notes"]), js(h["data"]), ts(h["at"]), h["rules_version"], h["actor"])
            for h in self.history_rows])
        if self.timer_ops:  # cancelled or fired: deleted; armed: inserted or replaced in one statement
            bulk.executemany("DELETE FROM timers WHERE instance = ? AND name = ?",
                             [key for key, t in self.timer_ops.items() if t is None])
            bulk.executemany(
                "INSERT INTO timers (instance, name, event, due_at, clock) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (instance, name) DO UPDATE SET event = excluded.event, "
                "due_at = excluded.due_at, clock = excluded.clock",
                [(t["instance"], t["name"], t["event"], ts(t["due_at"]), t["clock"])
                 for t in self.timer_ops.values() if t is not None])
        bulk.insert("notifications", NOTIFICATION_COLUMNS, [
            (n["instance"], n["template"], n["channel"], n["recipient"], js(n["payload"]),
             ts(n["created_at"])) for n in self.notification_rows])
        for clock in self.moved_clocks:
            self.conn.execute(update(clocks).where(clocks.c.id == clock).values(now=self.clock_times[clock]))
        self.moved_clocks.clear()
        self.new_ids.clear()
        self.dirty.clear()
        self.history_rows.clear()
        self.notification_rows.clear()
        self.timer_ops.clear()
        self.journal.clear()
