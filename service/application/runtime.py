"""The runtime: instances, events, timers, clocks and rules versions over one database.

This is where the pure core meets I/O. One event is one transaction: the instance row, its
history row, timer changes, outbox rows and the events it sends to other instances commit
together or not at all. Every attempt — applied or denied — is written to the history with the
rules version it was judged under.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Row, and_, func, insert, or_, select
from sqlalchemy.exc import IntegrityError

from tollgate.service.application import facts as fact_providers
from tollgate.service.application import rules_files
from tollgate.service.application.problems import problem
from tollgate.service.application.sweeps import Sweeps, rfc3339
from tollgate.service.storage.bulk import dumps
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import (
    failed_timers,
    history,
    idempotency,
    instances,
    notifications,
    rules_versions,
    server_keys,
    timers,
)
from tollgate.service.storage.unit_of_work import UnitOfWork, account_view
from tollgate.workflows.definitions import CREATE_EVENT, definitions
from tollgate.workflows.engine import Engine
from tollgate.workflows.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    GuardDenied,
    IdempotencyMismatch,
    NotFound,
    Problem,
    RulesError,
    RulesFailed,
    SendFailed,
    StaleVersion,
    TollgateError,
    Unprocessable,
)
from tollgate.workflows.policy import Policy, load_policy
from tollgate.workflows.secrets import redact_context, redact_payload

#: The fingerprint of a key stored before fingerprints were keyed (migration 0007 erased the
#: old digest): a replay answers its stored response without comparing the request.
LEGACY_FINGERPRINT = "legacy"
IDEMPOTENCY_SECRET = "idempotency"
ID_PREFIX = {"signup": "acct", "payment_method": "pm", "credit": "cr", "invoice": "inv"}


def system_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RulesVersion:
    id: int
    sha256: str
    activated_at: datetime
    source: str
    yaml: str

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.id, "sha256": self.sha256, "activated_at": rfc3339(self.activated_at),
                "source": self.source, "yaml": self.yaml}


class _KeyTaken(Exception):
    """Another transaction stored the same Idempotency-Key first; this one must roll back."""


@dataclass(frozen=True)
class Result:
    """A response the API returns as it is: status and JSON body (also what idempotency stores)."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


class Runtime(Sweeps):
    """Everything the HTTP API, the scheduler, the worker and the demo do, over one database.

    Clocks, timer sweeps and batches of events are in `service/sweeps.py` (`Sweeps`)."""

    def __init__(self, db: Database, *, now: Callable[[], datetime] = system_now, workers: int = 1,
                 secret_key: str | None = None) -> None:
        """`workers` > 1: big clock sweeps and `fire_many` on a SQLite file run in that many
        worker processes (`service/parallel.py`), started on first use; `close()` stops them.
        `secret_key` (TOLLGATE_SECRET_KEY) keys the idempotency fingerprints; without it, a random
        key kept in the database does (`fingerprint`)."""
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}.")
        self.db = db
        self.now = now
        self.workers = workers
        self._pool = None
        self._pool_lock = threading.Lock()
        self.optimistic_counts = Counter()
        self._engines: dict[str, Engine] = {}
        self._engines_lock = threading.Lock()
        self._active_version: RulesVersion | None = None
        self._secret_key = secret_key
        self._fingerprint_key: bytes | None = None
        missing = fact_providers.missing_providers(definitions())
        if missing:
            raise RuntimeError(f"No provider for the facts {', '.join(missing)} in service/facts.py.")

    # ── rules versions ───────────────────────────────────────────────────────────────────────

    def engine_for(self, version: RulesVersion) -> Engine:
        """The engine (machines and compiled guards) of a rules version, built once."""
        engine = self._engines.get(version.sha256)
        if engine is None:
            with self._engines_lock:
                engine = self._engines.get(version.sha256)
                if engine is None:
                    engine = Engine(load_policy(version.yaml, rules_files.display_name(version.source)))
                    self._engines[version.sha256] = engine
        return engine

    def _active(self, conn: Connection) -> RulesVersion:
        """The active version (without its text); its engine is built here the first time.

        The newest version's id and digest are read on the DBAPI cursor on every call (another
        process may have activated rules); the rest is reused while they stay the same.
        """
        cursor = conn.connection.cursor()
        try:
            cursor.execute("SELECT id, sha256 FROM rules_versions ORDER BY id DESC LIMIT 1")
            newest = cursor.fetchone()
        finally:
            cursor.close()
        known = self._active_version
        if known is not None and newest is not None and (known.id, known.sha256) == tuple(newest):
            return known
        version = self._read_active(conn)
        self._active_version = version
        return version

    def _read_active(self, conn: Connection) -> RulesVersion:
        row = conn.execute(select(rules_versions.c.id, rules_versions.c.sha256, rules_versions.c.activated_at,
                                  rules_versions.c.source)
                           .order_by(rules_versions.c.id.desc()).limit(1)).first()
        if row is None:
            raise TollgateError("No rules version is active; start the service with a rules file.")
        version = RulesVersion(row.id, row.sha256, row.activated_at, row.source, "")
        if row.sha256 not in self._engines:
            query = select(rules_versions.c.yaml).where(rules_versions.c.id == row.id)
            text = conn.execute(query).scalar_one()
            self.engine_for(RulesVersion(row.id, row.sha256, row.activated_at, row.source, text))
        return version

    def _has_version(self) -> bool:
        with self.db.read() as conn:
            return conn.execute(select(rules_versions.c.id).limit(1)).first() is not None

    def active_rules(self) -> RulesVersion:
        """The active version with its YAML text (GET /rules)."""
        with self.db.read() as conn:
            row = conn.execute(select(rules_versions).order_by(rules_versions.c.id.desc()).limit(1)).first()
        if row is None:
            raise TollgateError("No rules version is active; start the service with a rules file.")
        return RulesVersion(row.id, row.sha256, row.activated_at, row.source, row.yaml)

    def validate_rules(self, text: str, source: str = "rules.yaml") -> list[Problem]:
        try:
            load_policy(text, source)
        except RulesError as error:
            return error.problems
        return []

    def activate_rules(self, text: str, *, source: str = rules_files.API_SOURCE, actor: str = "admin",
                       filename: str = "rules.yaml") -> RulesVersion:
        """Validate and activate `text` as a new version; the old version stays on any problem.

        `source` is recorded with the version ("api", or "file:" and a path); problems are
        reported against `filename`."""
        policy = load_policy(text, filename)  # raises RulesError with every problem
        with self.db.transaction() as conn:
            self.db.cluster_lock(conn, "rules_versions")  # versions commit in the order of their ids
            version = self.insert_version(conn, policy, source, actor)
        self.keep_engine(policy)
        rules_files.log.info("rules version %d activated (sha256 %s, source %s, by %s)", version.id,
                             version.sha256, source, actor)
        return version

    def insert_version(self, conn: Connection, policy: Policy, source: str, actor: str) -> RulesVersion:
        now = self.now()
        new_id = conn.execute(insert(rules_versions).values(
            sha256=policy.sha256, yaml=policy.text, source=source, activated_at=now,
            activated_by=actor).returning(rules_versions.c.id)).scalar_one()
        return RulesVersion(new_id, policy.sha256, now, source, policy.text)

    def keep_engine(self, policy: Policy) -> None:
        with self._engines_lock:
            self._engines.setdefault(policy.sha256, Engine(policy))

    def import_rules_file(self, path: str | Path, *, force: bool = False,
                          actor: str = rules_files.STARTUP) -> tuple[RulesVersion, bool]:
        """Activate the rules file at `path` if it changed since its last import (or, with `force`,
        unless it is the active version already): the active version, and whether it is new."""
        return rules_files.import_file(self, path, force=force, actor=actor)

    def bootstrap(self, rules_path: str | Path, *, strict: bool = True) -> RulesVersion:
        """Migrate the schema; import the rules file if it changed since its last import; the
        active version.

        A version activated over the API since the file's last import stays active: a restart
        (of a server, a gunicorn worker or a `tollgate worker`) never reverts it. A file with
        problems raises RulesError, unless `strict` is false and a version is active: then the
        problems are logged and that version keeps serving (a gunicorn worker respawned after a
        crash must not fail to boot, and so stop the whole server, over a file being edited)."""
        self.db.migrate()
        try:
            version, _ = self.import_rules_file(rules_path)
        except RulesError as error:
            if strict or not self._has_version():
                raise
            rules_files.log.error("The rules file %s has %d problem(s) and was not imported; the active "
                                  "version keeps serving. %s", rules_path, len(error.problems),
                                  " ".join(str(problem) for problem in error.problems))
            version = self.active_rules()
        with self.db.read() as conn:  # build the active engine now, before the freeze
            self.engine_for(self._active(conn))
        # Everything alive now (modules, SQLAlchemy, the engine and its compiled rules) lives as
        # long as the process: move it out of the cyclic collector's reach. A full collection
        # walked these ~90,000 objects in ~50 ms; a billing run paid that ~25 times (1.2 of 8.3 s
        # CPU at N=20,000). Reference counting still frees them; only cycles among them would stay.
        # (Sweeps also raise the young-generation threshold while they run: Database.bulk_work.)
        gc.freeze()
        return version

    # ── reading ──────────────────────────────────────────────────────────────────────────────

    def _row(self, conn: Connection, instance_id: str, *, lock: bool = False) -> Row[Any]:
        query = select(instances).where(instances.c.id == instance_id)
        if lock and self.db.for_update():
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"There is no instance '{instance_id}'.")
        return row

    def _timers_of(self, conn: Connection, instance_id: str) -> list[dict[str, Any]]:
        """Armed timers, then parked ones (their event failed: `status`, `error`, `failed_at`)."""
        rows = conn.execute(select(timers).where(timers.c.instance == instance_id)
                            .order_by(timers.c.due_at, timers.c.name))
        armed = [{"name": t.name, "event": t.event, "at": rfc3339(t.due_at)} for t in rows]
        parked = conn.execute(select(failed_timers).where(failed_timers.c.instance == instance_id)
                              .order_by(failed_timers.c.id))
        return armed + [_parked(t.name, t.event, rfc3339(t.due_at), rfc3339(t.failed_at), t.error)
                        for t in parked]

    def _instance_dict(self, conn: Connection, row: Row[Any]) -> dict[str, Any]:
        return {"id": row.id, "workflow": row.workflow, "state": row.state,
                "context": redact_context(row.workflow, row.context),
                "version": row.version, "clock": row.clock, "timers": self._timers_of(conn, row.id),
                "created_at": rfc3339(row.created_at), "updated_at": rfc3339(row.updated_at)}

    def _record_dict(self, uow: UnitOfWork, record: Mapping[str, Any]) -> dict[str, Any]:
        """`_instance_dict` from a flushed record of the unit (no re-read of the instance row)."""
        reader = uow.reader
        rows = reader.fetch("SELECT name, event, due_at, NULL, NULL, 0, 0 FROM timers WHERE instance = ? "
                            "UNION ALL SELECT name, event, due_at, failed_at, error, 1, id "
                            "FROM failed_timers WHERE instance = ? ORDER BY 6, 7, 3, 1",
                            [record["id"], record["id"]])
        moment = reader.moment
        return {"id": record["id"], "workflow": record["workflow"], "state": record["state"],
                "context": redact_context(record["workflow"], record["context"]),
                "version": record["version"], "clock": record["clock"],
                "timers": [{"name": name, "event": event, "at": rfc3339(moment(due))} if not parked
                           else _parked(name, event, rfc3339(moment(due)), rfc3339(moment(failed)), error)
                           for name, event, due, failed, error, parked, _ in rows],
                "created_at": rfc3339(reader.moment(record["created_at"])),
                "updated_at": rfc3339(reader.moment(record["updated_at"]))}

    def get_instance(self, instance_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._instance_dict(conn, self._row(conn, instance_id))

    def list_instances(self, *, workflow: str | None = None, state: str | None = None,
                       account: str | None = None, limit: int = 50,
                       cursor: str | None = None) -> dict[str, Any]:
        if workflow is not None and workflow not in definitions():
            raise BadRequest(f"There is no workflow '{workflow}'; workflows: {', '.join(definitions())}.")
        if not 1 <= limit <= 500:
            raise BadRequest(f"The limit must be between 1 and 500, not {limit}.")
        query = select(instances)
        if workflow:
            query = query.where(instances.c.workflow == workflow)
        if state:
            query = query.where(instances.c.state == state)
        if account:
            query = query.where(or_(instances.c.account == account, instances.c.id == account))
        if cursor:
            created, last_id = _decode_cursor(cursor)
            query = query.where(or_(instances.c.created_at > created,
                                    and_(instances.c.created_at == created, instances.c.id > last_id)))
        query = query.order_by(instances.c.created_at, instances.c.id).limit(limit + 1)
        with self.db.read() as conn:
            rows = list(conn.execute(query))
            items = [self._instance_dict(conn, r) for r in rows[:limit]]
        next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return {"items": items, "next_cursor": next_cursor}

    def history(self, instance_id: str) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            self._row(conn, instance_id)
            rows = conn.execute(select(history).where(history.c.instance == instance_id)
                                .order_by(history.c.seq))
            return [{"seq": h.seq, "event": h.event, "from": h.from_state, "to": h.to_state,
                     "outcome": h.outcome, "reasons": h.reasons, "notes": h.notes, "data": h.data,
                     "at": rfc3339(h.at), "rules_version": h.rules_version, "actor": h.actor}
                    for h in rows]

    def notifications(self, instance_id: str | None = None, *,
                      reveal: Callable[[str | None], bool] | None = None) -> list[dict[str, Any]]:
        """The outbox; `reveal(clock of the instance)` False: secret payload fields redacted."""
        query = (select(notifications, instances.c.clock)
                 .join(instances, instances.c.id == notifications.c.instance).order_by(notifications.c.id))
        if instance_id:
            query = query.where(notifications.c.instance == instance_id)
        with self.db.read() as conn:
            return [{"id": n.id, "instance": n.instance, "template": n.template, "channel": n.channel,
                     "recipient": n.recipient,
                     "payload": n.payload if reveal is None or reveal(n.clock) else
                     redact_payload(n.template, n.payload), "created_at": rfc3339(n.created_at)}
                    for n in conn.execute(query)]

    def failed_timers(self, *, instance_id: str | None = None,
                      clock_id: str | None = None) -> list[dict[str, Any]]:
        """Timers parked because the rules failed on their event (oldest failure first), for
        operators: each with its instance, workflow, due instant, clock, error and rules version."""
        query = (select(failed_timers, instances.c.workflow)
                 .join(instances, instances.c.id == failed_timers.c.instance).order_by(failed_timers.c.id))
        if instance_id is not None:
            query = query.where(failed_timers.c.instance == instance_id)
        if clock_id is not None:
            query = query.where(failed_timers.c.clock == clock_id)
        with self.db.read() as conn:
            return [{"id": t.id, "instance": t.instance, "workflow": t.workflow, "name": t.name,
                     "event": t.event, "at": rfc3339(t.due_at), "clock": t.clock,
                     "failed_at": rfc3339(t.failed_at), "error": t.error, "rules_version": t.rules_version}
                    for t in conn.execute(query)]

    # ── creating ─────────────────────────────────────────────────────────────────────────────

    def create_instance(self, workflow: str, context: Mapping[str, Any], *, instance_id: str | None = None,
                        clock: str | None = None, actor: str = "api") -> dict[str, Any]:
        if workflow not in definitions():
            raise NotFound(f"There is no workflow '{workflow}'; workflows: {', '.join(definitions())}.")
        with self.db.transaction() as conn:
            uow = UnitOfWork(self, conn, self._active(conn))
            definition = uow.engine.definition(workflow)
            account = None
            account_id = None
            if definition.references_account and isinstance(context, Mapping) and "account" in context:
                account_id = str(context["account"])
                account_record = uow.find(account_id)
                if account_record is None or account_record["workflow"] != "signup":
                    raise Unprocessable(f"The account '{account_id}' does not exist; give the id of a "
                                        "signup instance in context.account.")
                if clock is not None and clock != account_record["clock"]:
                    runs_on = f"clock '{account_record['clock']}'" if account_record["clock"] else "real time"
                    raise Unprocessable(f"The account '{account_id}' runs on {runs_on}; an instance that "
                                        f"references it cannot use the clock '{clock}'.")
                clock = account_record["clock"]
                account = account_view(account_record)
            now = uow.now_of(clock)
            instance_id = instance_id or f"{ID_PREFIX[workflow]}_{secrets.token_hex(8)}"
            if uow.find(instance_id) is not None:
                raise Conflict(f"An instance '{instance_id}' already exists.")
            record: dict[str, Any] = {
                "id": instance_id, "workflow": workflow, "state": definition.initial,
                "context": dict(context) if isinstance(context, Mapping) else {}, "secrets": {},
                "version": 0, "history_seq": 0, "clock": clock, "account": account_id, "email": None,
                "usage_month": None,
                "created_at": now, "updated_at": now}
            facts = fact_providers.gather(uow, definition, CREATE_EVENT, record, {})
            try:
                outcome = uow.engine.create(workflow, context, now, instance_id=instance_id, account=account,
                                            facts=facts)
            except TollgateError:
                raise
            except Exception as error:  # the rules failed (e.g. a timer's `at` on a missing field)
                raise RulesFailed(workflow, instance_id, CREATE_EVENT, error) from error
            if not outcome.applied:
                raise GuardDenied(CREATE_EVENT, list(outcome.reasons))
            if workflow == "invoice":
                record["usage_month"] = outcome.context.get("usage_month")
                duplicate = conn.execute(select(instances.c.id).where(
                    instances.c.account == account_id,
                    instances.c.usage_month == record["usage_month"])).scalar_one_or_none()
                if duplicate is not None:
                    raise Conflict(f"The account '{account_id}' already has the invoice '{duplicate}' for "
                                   f"{record['usage_month']}; there is one invoice per account and month.")
            record.update(state=outcome.target, context=dict(outcome.context))
            uow.record_attempt(record, outcome, actor, now)
            record.update(version=1, history_seq=1)
            uow.insert(record)
            uow.apply_effects(record, outcome, now)
            try:
                with conn.begin_nested():
                    uow.flush()
            except IntegrityError:
                raise Conflict(f"An instance '{instance_id}' (or an invoice for that account and month) "
                               "was created at the same time; read it and retry if needed.") from None
            return self._instance_dict(conn, self._row(conn, instance_id))

    # ── events ───────────────────────────────────────────────────────────────────────────────

    def fire(self, instance_id: str, event: str, data: Mapping[str, Any] | None = None, *,
             actor: str = "api", if_match: int | None = None, dry_run: bool = False,
             idempotency_key: str | None = None, fingerprint: str | None = None,
             role: str | None = None) -> Result:
        """Fire `event` on an instance: 200 with the instance, or the problem for a refusal.

        Errors the client must fix (404, 409, 412, 400, 403) are raised; a policy denial is
        recorded in the history and returned as a 422 result so that it can be stored for
        idempotency. `role` is the API caller's role, checked against the event's `roles`.
        """
        data = {} if data is None else data
        if dry_run:
            return self._dry_run(instance_id, event, data, role)
        try:
            return self._fire(instance_id, event, data, actor, if_match, idempotency_key, fingerprint or "",
                              role)
        except _KeyTaken:
            # A concurrent request with the same key (on another instance's lock) committed first:
            # this transaction was rolled back whole; answer what the first one answered.
            with self.db.read() as conn:
                stored = self._idempotent_replay(conn, idempotency_key or "", fingerprint or "")
            if stored is None:
                raise Conflict(f"The Idempotency-Key '{idempotency_key}' is being used by another "
                               "request; retry it.") from None
            return stored

    def _fire(self, instance_id: str, event: str, data: Mapping[str, Any], actor: str,
              if_match: int | None, key: str | None, fingerprint: str, role: str | None) -> Result:
        return self.db.grouped(lambda conn: self._fire_in(conn, instance_id, event, data, actor, if_match,
                                                          key, fingerprint, role))

    def _fire_in(self, conn: Connection, instance_id: str, event: str, data: Mapping[str, Any], actor: str,
                 if_match: int | None, key: str | None, fingerprint: str, role: str | None = None) -> Result:
        """One event inside the caller's transaction (shared with others under group commit)."""
        if key is not None:
            stored = self._idempotent_replay(conn, key, fingerprint)
            if stored is not None:
                return stored
        uow = UnitOfWork(self, conn, self._active(conn))
        record = uow.get(instance_id)  # row-locked on PostgreSQL from here on
        if role is not None:
            _authorize(uow, record, event, role)
        if key is not None and not self.db.is_sqlite:
            # A twin request may have committed while this one waited for the row lock.
            stored = self._idempotent_replay(conn, key, fingerprint)
            if stored is not None:
                return stored
        if if_match is not None and record["version"] != if_match:
            raise StaleVersion(f"The instance '{instance_id}' is at version {record['version']}, not "
                               f"{if_match}; read it again and retry.")
        try:
            uow.apply(instance_id, event, data, actor)
            uow.flush()
            result = Result(200, self._record_dict(uow, uow.records[instance_id]))
        except SendFailed as failure:
            uow.rollback_to(0)
            uow.record_failure(instance_id, event, data, actor, failure)
            uow.flush()
            result = Result(failure.status, problem(failure))
        except GuardDenied as denied:
            uow.flush()  # the denied attempt (and any on_denied change) stays in the history
            result = Result(denied.status, problem(denied))
        if key is not None:
            try:
                with conn.begin_nested():
                    self._idempotent_store(conn, key, fingerprint, result)
            except IntegrityError:
                raise _KeyTaken from None
        return result

    def _dry_run(self, instance_id: str, event: str, data: Mapping[str, Any], role: str | None) -> Result:
        """What `fire` would answer, changing nothing: the same role checks (403), then the verdict."""
        with self.db.read() as conn:
            uow = UnitOfWork(self, conn, self._active(conn))
            uow.lock = False
            record = uow.get(instance_id)
            if role is not None:
                _authorize(uow, record, event, role)
            outcome = uow.decide(record, event, data)
            return Result(200, {"allowed": outcome.applied, "to": outcome.target,
                                "reasons": [r.as_dict() for r in outcome.reasons],
                                "notes": [n.as_dict() for n in outcome.notes],
                                "rules_version": uow.version.id})

    # ── idempotency ──────────────────────────────────────────────────────────────────────────

    def fingerprint(self, *parts: Any) -> str:
        """The digest of a request (method, path, body) stored with its Idempotency-Key.

        HMAC-SHA256 under a server key, not a bare hash: a body may carry a password, and an
        unkeyed digest of it could be reversed by trying candidates. The whole request is keyed
        (not a redacted body plus a digest of the secrets) so that a field nobody marked secret is
        protected too, and two requests differing only in a secret still count as different.
        """
        canonical = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False).encode()
        return hmac.new(self._idempotency_key(), canonical, hashlib.sha256).hexdigest()

    def _idempotency_key(self) -> bytes:
        """The fingerprint key: derived from `secret_key` when given, else from a random secret
        stored once in `server_keys` (the first server to need it inserts it; every other server
        and worker of the cluster reads the same row)."""
        key = self._fingerprint_key
        if key is None:
            secret = self._secret_key or self._stored_secret(IDEMPOTENCY_SECRET)
            key = hmac.new(secret.encode(), b"tollgate idempotency fingerprint", hashlib.sha256).digest()
            self._fingerprint_key = key
        return key

    def _stored_secret(self, name: str) -> str:
        query = select(server_keys.c.secret).where(server_keys.c.name == name)
        with self.db.read() as conn:
            found = conn.execute(query).scalar_one_or_none()
        if found is not None:
            return str(found)
        try:
            with self.db.transaction() as conn:
                conn.execute(insert(server_keys).values(name=name, secret=secrets.token_hex(32),
                                                        created_at=self.now()))
        except IntegrityError:
            pass  # another server stored it first: use theirs
        with self.db.read() as conn:
            return str(conn.execute(query).scalar_one())

    def _idempotent_replay(self, conn: Connection, key: str, fingerprint: str) -> Result | None:
        row = conn.execute(select(idempotency).where(idempotency.c.key == key)).first()
        if row is None:
            return None
        if row.fingerprint != LEGACY_FINGERPRINT and not hmac.compare_digest(row.fingerprint, fingerprint):
            raise IdempotencyMismatch(f"The Idempotency-Key '{key}' was already used with a different "
                                      "request; use a new key for a new request.")
        return Result(row.status, orjson.loads(row.body), replayed=True)

    def _idempotent_store(self, conn: Connection, key: str, fingerprint: str, result: Result) -> None:
        conn.execute(insert(idempotency).values(key=key, fingerprint=fingerprint, status=result.status,
                                                body=dumps(result.body), headers={},
                                                created_at=self.now()))


def _authorize(uow: UnitOfWork, record: Mapping[str, Any], event: str, role: str) -> None:
    """Raise Forbidden when the API caller's `role` may not fire `event` on this instance.

    The decision is `service.auth.event_refusal`'s; the timer events come from the rules version
    this unit judges under (its timer schedules) and the definition (`timed`).
    """
    from tollgate.service.auth import event_refusal  # service.auth imports the API, which imports this module

    workflow = record["workflow"]
    spec = uow.engine.definition(workflow).events.get(event)
    if spec is None:
        return  # not an event of the workflow: judged (404/409) like any other call
    timers = tuple(t.id for t in uow.engine.policy.timers_of(workflow) if t.event == event)
    refusal = event_refusal(role, spec, timers)
    if refusal is not None:
        raise Forbidden(refusal)


def _parked(name: str, event: str, at: str | None, failed_at: str | None, error: str) -> dict[str, Any]:
    """A parked timer as `timers` lists it: its event failed, so it will not fire by itself."""
    return {"name": name, "event": event, "at": at, "status": "failed", "failed_at": failed_at,
            "error": error}


def _encode_cursor(row: Row[Any]) -> str:
    import base64
    raw = json.dumps([rfc3339(row.created_at), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: What `_encode_cursor` writes, base64-decoded: ["<created_at, RFC 3339 in UTC>", "<instance id>"].
_CURSOR = re.compile(r'\["(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?\+00:00)", '
                     r'("(?:[^"\\\x00-\x1f]|\\u[0-9a-fA-F]{4}|\\["\\/bfnrt]){1,256}")\]')


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor of `_encode_cursor` holds. A cursor is opaque: anything but that exact
    shape (another JSON value, a naive or impossible time, deep nesting) is refused unparsed."""
    import base64
    import binascii
    refused = BadRequest("The cursor is not one this server issued; send the next_cursor of the "
                         "previous page unchanged, or leave cursor out to start from the first page.",
                         [Problem("cursor", "not a cursor this server issued", file="query")])
    if len(cursor) > 400:
        raise refused
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        match = _CURSOR.fullmatch(raw)
        if match is None:
            raise refused
        created = datetime.fromisoformat(match.group(1))
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        raise refused from None
    return created, str(json.loads(match.group(2)))  # a flat JSON string: no nesting to recurse into


def count_instances(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(instances)).scalar_one())
