"""Instances and events: create an instance, fire an event (with If-Match, Idempotency-Key and
dry runs), each in one transaction.

One event is one transaction: the instance row, its history row, timer changes, outbox rows and
the events it sends to other instances commit together or not at all (`EventUnit`). Every
attempt — applied or denied — is written to the history with the rules version it was judged
under. On SQLite concurrent events share one commit (`Database.grouped`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from tollgate.service.application import facts as fact_providers
from tollgate.service.application.idempotency import Idempotency, KeyTaken, Result
from tollgate.service.application.judging import EventUnit, Units, account_view
from tollgate.service.application.policy_files import definitions
from tollgate.service.application.problems import problem
from tollgate.service.application.reads import Reads
from tollgate.service.application.roles import authorize
from tollgate.service.exceptions import (
    Conflict,
    GuardDenied,
    IdempotencyMismatch,
    RulesFailed,
    SendFailed,
    StaleVersion,
    Unprocessable,
)
from tollgate.service.storage.db import Database
from tollgate.workflows.definitions import CREATE_EVENT
from tollgate.workflows.exceptions import NotFound, TollgateError
from tollgate.workflows.replay import record_inputs

#: Events of a batch (`fire_batch`) judged and committed in one transaction: big enough that a
#: settlement file costs a few commits, small enough that other writers wait little for the lock.
BATCH_CHUNK = 200
#: How often a chunk is judged again when a concurrent request took one of its idempotency keys
#: first or PostgreSQL chose it as a deadlock victim, before the call answers 409.
BATCH_TRIES = 5
#: PostgreSQL's SQLSTATEs for a deadlock victim and a serialization failure: the chunk is retried.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


@dataclass(frozen=True)
class BatchItem:
    """One event of `POST /events`: what `POST /instances/{instance}/events` would be sent."""

    instance: str
    event: str
    data: Mapping[str, Any]
    idempotency_key: str | None = None
    fingerprint: str = ""  # of the single call this item stands for (`Idempotency.fingerprint`)
    if_match: int | None = None


class _ChunkAgain(Exception):
    """The chunk's transaction must be rolled back and the chunk judged again."""


class Events:
    """Creating instances and firing events over `db`, judged in units of `units`."""

    def __init__(self, db: Database, units: Units, reads: Reads, idempotency: Idempotency) -> None:
        self.db = db
        self.units = units
        self.reads = reads
        self.idempotency = idempotency

    def create_instance(self, workflow: str, context: Mapping[str, Any], *, instance_id: str | None = None,
                        clock: str | None = None, actor: str = "api") -> dict[str, Any]:
        if workflow not in definitions():
            raise NotFound(f"There is no workflow '{workflow}'; workflows: {', '.join(definitions())}.")
        with self.db.transaction() as conn:
            uow = self.units.open(conn)
            definition = uow.engine.definition(workflow)
            account = None
            account_id = None
            if definition.references_account and isinstance(context, Mapping) and "account" in context:
                account_id = str(context["account"])
                account_record = uow.find(account_id)
                if account_record is None or not uow.engine.definition(account_record["workflow"]).is_account:
                    kinds = " or ".join(n for n, d in definitions().items() if d.is_account)
                    raise Unprocessable(f"The account '{account_id}' does not exist; give the id of a "
                                        f"{kinds} instance in context.account.")
                if clock is not None and clock != account_record["clock"]:
                    runs_on = f"clock '{account_record['clock']}'" if account_record["clock"] else "real time"
                    raise Unprocessable(f"The account '{account_id}' runs on {runs_on}; an instance that "
                                        f"references it cannot use the clock '{clock}'.")
                clock = account_record["clock"]
                account = account_view(account_record)
            now = uow.now_of(clock)
            uow.judge_at(now)  # the version in effect at the instance's own instant
            instance_id = instance_id or f"{definition.id_prefix}_{secrets.token_hex(8)}"
            if uow.find(instance_id) is not None:
                raise Conflict(f"An instance '{instance_id}' already exists.")
            record: dict[str, Any] = {
                "id": instance_id, "workflow": workflow, "state": definition.initial,
                "context": dict(context) if isinstance(context, Mapping) else {}, "secrets": {},
                "version": 0, "history_seq": 0, "clock": clock, "account": account_id,
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
            for key in definition.keys.values():  # declared unique keys: one holder each
                value = key.value(outcome.context, outcome.target) if key.unique else None
                duplicate = uow.unique_holder(workflow, key.name, value) if value is not None else None
                if duplicate is not None:
                    fields = {name: outcome.context.get(name) for name in key.fields}
                    raise Conflict(key.conflict.format(duplicate=duplicate, **fields) if key.conflict else
                                   f"The {workflow} '{duplicate}' already holds the {key.name} "
                                   f"{', '.join(map(str, fields.values()))}; it is unique.")
            record.update(state=outcome.target, context=dict(outcome.context))
            uow.record_attempt(record, outcome, actor, now,
                               record_inputs(uow.engine, workflow, CREATE_EVENT, dict(context), account,
                                             definition.references_account, facts, outcome.reasons))
            record.update(version=1, history_seq=1)
            uow.insert(record)
            uow.apply_effects(record, outcome, now)
            try:
                with conn.begin_nested():
                    uow.flush()
            except IntegrityError:
                raise Conflict(f"An instance '{instance_id}' (or an invoice for that account and month) "
                               "was created at the same time; read it and retry if needed.") from None
            return self.reads.instance_dict(conn, self.reads.row(conn, instance_id))

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
        except KeyTaken:
            # A concurrent request with the same key (on another instance's lock) committed first:
            # this transaction was rolled back whole; answer what the first one answered.
            with self.db.read() as conn:
                stored = self.idempotency.replay(conn, idempotency_key or "", fingerprint or "")
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
            stored = self.idempotency.replay(conn, key, fingerprint)
            if stored is not None:
                return stored
        uow = self.units.open(conn)
        record = uow.get(instance_id)  # row-locked on PostgreSQL from here on
        if role is not None:
            authorize(uow.engine, record, event, role)
        if key is not None and self.db.dialect.row_locks:
            # A twin request may have committed while this one waited for the row lock.
            stored = self.idempotency.replay(conn, key, fingerprint)
            if stored is not None:
                return stored
        if if_match is not None and record["version"] != if_match:
            raise StaleVersion(f"The instance '{instance_id}' is at version {record['version']}, not "
                               f"{if_match}; read it again and retry.")
        try:
            uow.apply(instance_id, event, data, actor)
            uow.flush()
            result = Result(200, self.reads.record_dict(uow, uow.records[instance_id]))
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
                    self.idempotency.store(conn, key, fingerprint, result)
            except IntegrityError:
                raise KeyTaken from None
        return result

    # ── batches ──────────────────────────────────────────────────────────────────────────────

    def fire_batch(self, items: Sequence[BatchItem], *, actor: str = "api",
                   role: str | None = None) -> list[Result]:
        """Fire many events (a gateway's settlement file); one Result per item, in order, each
        exactly what `fire` would answer for it alone (replays, 403, 404, 409, 412, 422).

        Atomicity: per event. The items are judged in order, `BATCH_CHUNK` per transaction: a
        refused event (an error `fire` would raise) is undone alone and its problem becomes its
        result; the others of its chunk still commit. Results are returned only once every chunk
        has committed, so each one the caller receives is durable. A chunk whose commit fails
        takes back nothing of the chunks before it: those events are committed, and a retry with
        the same idempotency keys answers them as replays. Events without a key are applied again
        by a retry: give each event its own key.
        """
        results: list[Result] = []
        with self.db.bulk_work():
            for lo in range(0, len(items), BATCH_CHUNK):
                results.extend(self._fire_chunk(items[lo:lo + BATCH_CHUNK], actor, role))
        return results

    def _fire_chunk(self, chunk: Sequence[BatchItem], actor: str, role: str | None) -> list[Result]:
        for _ in range(BATCH_TRIES):
            try:
                with self.db.transaction() as conn:
                    uow = self.units.open(conn)
                    uow.load(item.instance for item in chunk)  # one query; row-locked on PostgreSQL
                    results = [self._fire_item(conn, uow, item, actor, role) for item in chunk]
                    uow.flush()
                    return results
            except _ChunkAgain:
                continue
            except OperationalError as error:
                if getattr(error.orig, "sqlstate", None) not in _RETRYABLE_SQLSTATES:
                    raise
        raise Conflict("Concurrent requests kept taking this batch's idempotency keys or rows while "
                       "it was judged; send the batch again (events already answered are replayed).")

    def _fire_item(self, conn: Connection, uow: EventUnit, item: BatchItem, actor: str,
                   role: str | None) -> Result:
        """`_fire_in` for one item of a chunk's unit: a raised refusal undoes this item only."""
        key = item.idempotency_key
        if key is not None:
            try:
                stored = self.idempotency.replay(conn, key, item.fingerprint)
            except IdempotencyMismatch as mismatch:
                return Result(mismatch.status, problem(mismatch))
            if stored is not None:
                return stored
        uow.keep_effects()  # the items before are final; a refusal rolls back to here
        instance_id, event, data = item.instance, item.event, item.data
        try:
            record = uow.get(instance_id)
            if role is not None:
                authorize(uow.engine, record, event, role)
            if item.if_match is not None and record["version"] != item.if_match:
                raise StaleVersion(f"The instance '{instance_id}' is at version {record['version']}, not "
                                   f"{item.if_match}; read it again and retry.")
            try:
                uow.apply(instance_id, event, data, actor)
                uow.flush()  # the reply lists the instance's timers as stored
                result = Result(200, self.reads.record_dict(uow, uow.records[instance_id]))
            except SendFailed as failure:
                uow.rollback_to(0)
                uow.record_failure(instance_id, event, data, actor, failure)
                result = Result(failure.status, problem(failure))
            except GuardDenied as denied:  # the denied attempt stays in the history
                result = Result(denied.status, problem(denied))
        except TollgateError as error:  # what `fire` raises: nothing of this item is kept
            uow.rollback_to(0)
            return Result(error.status, problem(error))
        if key is not None:
            try:
                self.idempotency.store(conn, key, item.fingerprint, result)
            except IntegrityError:
                # A concurrent request committed this key first: judge the chunk again, so this
                # item answers what that request answered.
                raise _ChunkAgain from None
        return result

    def _dry_run(self, instance_id: str, event: str, data: Mapping[str, Any], role: str | None) -> Result:
        """What `fire` would answer, changing nothing: the same role checks (403), then the verdict."""
        with self.db.read() as conn:
            uow = self.units.open(conn, lock=False)
            record = uow.get(instance_id)
            if role is not None:
                authorize(uow.engine, record, event, role)
            outcome = uow.decide(record, event, data)
            return Result(200, {"allowed": outcome.applied, "to": outcome.target,
                                "reasons": [r.as_dict() for r in outcome.reasons],
                                "notes": [n.as_dict() for n in outcome.notes],
                                "rules_version": uow.version.id})
