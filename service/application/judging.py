"""Judging events in a unit of work: the engine's decisions applied to the unit's records.

`EventUnit` is storage's `UnitOfWork` (identity map and pending writes) plus the rules version it
judges under: it gathers what a decision needs (the record, the account, the facts), asks the
engine, and applies the outcome — state, history row, timers, outbox rows and the events the
instance sends to others — to the in-memory records. A subclass rather than a wrapper: the hot
loop (`apply`, ~1 µs of its own per event) keeps its attribute reads local.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from tollgate.service.application import facts
from tollgate.service.application.policy_files import definitions
from tollgate.service.exceptions import GuardDenied, RulesFailed, SendFailed
from tollgate.service.storage.unit_of_work import _MISSING, _NOTIFICATION, UnitOfWork
from tollgate.workflows.definitions import Definition, Key
from tollgate.workflows.engine import Engine
from tollgate.workflows.exceptions import BadRequest, InvalidTransition, NotFound, Reason, TollgateError
from tollgate.workflows.outcome import Outcome, Snapshot
from tollgate.workflows.replay import record_inputs
from tollgate.workflows.secrets import redact

if TYPE_CHECKING:
    from tollgate.service.application.rules_versions import RulesVersion, RulesVersions, Schedule

MAX_SEND_DEPTH = 4

#: `inputs` of attempts replay cannot judge again: their verdict came from outside their own rules.
UNREPLAYABLE_SEND = {"unreplayable": "an event it sent to another instance failed"}
UNREPLAYABLE_FAILURE = {"unreplayable": "the rules failed on it (recorded as failed)"}

#: Errors of the database or its driver: raised through a judgement as they are (the batch is
#: rolled back and retried), never taken for a failure of the rules.
_INFRASTRUCTURE_ERRORS = (SQLAlchemyError, sqlite3.Error, psycopg.Error)

#: Per (workflow, event): the definition, how the event gets the referenced account (None: it
#: references none; True: read before judging; False: lazily, see `LazyAccount`) and the fact
#: providers the event asks.
_Plan = tuple[Definition, bool | None, tuple[tuple[str, facts.FactProvider], ...]]


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

    def __init__(self, uow: EventUnit, account_id: Any) -> None:
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


class EventUnit(UnitOfWork):
    """A unit of work that judges each event under the rules version in effect at the event's
    instant (`judge_at`); `version` and `engine` are those of the event judged last."""

    def __init__(self, conn: Connection, version: RulesVersion, engine: Engine, *,
                 now: Callable[[], datetime], lock: bool, keys: Mapping[str, tuple[Key, ...]] | None = None,
                 optimistic: bool = False, schedule: Schedule | None = None) -> None:
        super().__init__(conn, version_id=version.id, now=now, lock=lock, keys=keys, optimistic=optimistic)
        self.version = version
        self.engine = engine
        self._plans: dict[tuple[str, str], _Plan] = {}
        #: The schedule the unit was opened under (`Sweeps.judge_then_write` checks it is still
        #: the one in force before writing).
        self.rules_schedule = schedule
        #: Only when several versions can judge (a version is scheduled): looked up per event.
        self._choices = None if schedule is None or schedule.single else schedule
        self._plan_sets: dict[int, dict[tuple[str, str], _Plan]] = {version.id: self._plans}

    def judge_at(self, instant: datetime) -> None:
        """Judge what follows under the version in effect at `instant` (a no-op unless a version
        is scheduled): history rows name it, timers are armed by its timer schedules."""
        choices = self._choices
        if choices is None:
            return
        version, engine = choices.at(instant, self.now_of(None))
        if version.id != self.version_id:
            self.version, self.engine, self.version_id = version, engine, version.id
            self._plans = self._plan_sets.setdefault(version.id, {})

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
                data: Mapping[str, Any]) -> tuple[Outcome, datetime, dict[str, Any]]:
        """The outcome of `event` on `record`, the instant it was judged at, and what the history
        row keeps to judge it again (`workflows/replay.py`: `record_inputs`)."""
        clock = record["clock"]
        now = self.real_now if clock is None else self.clock_times.get(clock)
        if now is None:
            now = self.now_of(clock)
        if self._choices is not None:
            self.judge_at(now)
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
        try:
            outcome = self.engine.decide(snapshot, event, data, now)
        except (TollgateError, *_INFRASTRUCTURE_ERRORS):
            raise
        except Exception as error:  # the rules themselves failed (e.g. an expression on a missing field)
            raise RulesFailed(record["workflow"], record["id"], event, error) from error
        inputs = record_inputs(self.engine, record["workflow"], event, record["context"], account,
                               account_mode is True, gathered, outcome.reasons)
        return outcome, now, inputs

    def record_attempt(self, record: Mapping[str, Any], outcome: Outcome, actor: str, at: datetime,
                       inputs: Mapping[str, Any] | None = None) -> None:
        self._history(record["id"], record["history_seq"] + 1, outcome.event, outcome.source, outcome.target,
                      "applied" if outcome.applied else "denied", outcome.reasons, outcome.notes,
                      outcome.data, at, actor, inputs)

    def apply(self, instance_id: str, event: str, data: Mapping[str, Any], actor: str,
              depth: int = 0) -> Outcome:
        """Judge and apply one event; a denial is recorded, then raised as GuardDenied."""
        record = self.records.get(instance_id)
        if record is None:
            record = self.get(instance_id)
        outcome, now, inputs = self._decide(record, event, data)
        seq = record["history_seq"] + 1
        applied = outcome.applied
        self._history(instance_id, seq, outcome.event, outcome.source, outcome.target,
                      "applied" if applied else "denied", outcome.reasons, outcome.notes, outcome.data,
                      now, actor, inputs)
        updated = record.copy()
        updated["history_seq"] = seq
        changed = applied
        # The outcome's context and secrets are the engine's own fresh dicts (its Step's copies),
        # never mutated afterwards: the record takes them as they are.
        if outcome.context_changed:
            context = outcome.context
            updated["context"] = context if type(context) is dict else dict(context)
            changed = True
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
            if record["workflow"] in self.keys:  # its declared keys may move (`storage/keys.py`)
                self.rekeyed.setdefault(instance_id, record)
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
        self.judge_at(now)
        secret = self.engine.definition(record["workflow"]).secret_fields
        self._history(record["id"], record["history_seq"] + 1, event, record["state"], record["state"],
                      "denied", failure.reasons, (), redact(data, secret), now, actor, UNREPLAYABLE_SEND)
        self._replace(dict(record, history_seq=record["history_seq"] + 1))

    def record_rules_failure(self, instance_id: str, event: str, data: Mapping[str, Any], actor: str,
                             failure: RulesFailed, timer: tuple[str, str, str, Any] | None = None) -> None:
        """After `rollback_to`, keep an attempt the rules failed on in the history as `failed`
        (state unchanged, the error in its reason's detail); the timer that fired it, if any
        (instance, name, event, due_at as read), is parked in `failed_timers` by `write`."""
        record = self.get(instance_id)
        now = self.now_of(record["clock"])
        self.judge_at(now)
        secret = self.engine.definition(record["workflow"]).secret_fields
        reason = Reason("rules_failed", "정책 규칙을 평가하는 중 오류가 발생하여 적용하지 않았습니다.",
                        "The rules failed while judging this event; nothing was applied.",
                        failure.message)
        self._history(record["id"], record["history_seq"] + 1, event, record["state"], record["state"],
                      "failed", (reason,), (), redact(data, secret), now, actor, UNREPLAYABLE_FAILURE)
        self._replace(dict(record, history_seq=record["history_seq"] + 1))
        name = None
        if timer is not None:
            name, due_at = timer[1], timer[3]
            self.parked_rows.append((instance_id, name, timer[2], self._ts(due_at),
                                     record["clock"], failure.error, self._ts(now), self.version_id))
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
            armed_at, armed_seq = ts(now), record["history_seq"]  # the row that armed them
            for timer in outcome.timers_set:
                key = (instance_id, timer.name)
                journal.append(("timer", key, ops.get(key, _MISSING)))
                ops[key] = (instance_id, timer.name, timer.event, ts(timer.at), clock, armed_at, armed_seq)
        if outcome.notifications:
            js, created_at, rows = self._js, self._ts(now), self.notification_rows
            for note in outcome.notifications:
                payload = note.payload
                journal.append(_NOTIFICATION)
                rows.append((instance_id, note.template, note.channel, note.recipient,
                             js(payload if type(payload) is dict else dict(payload)), created_at))


class Units:
    """Opens the unit of work of a transaction, judging under the active rules version."""

    def __init__(self, versions: RulesVersions, now: Callable[[], datetime], *, row_locks: bool) -> None:
        self.versions = versions
        self.now = now
        #: Whether units load instances `FOR UPDATE` (PostgreSQL; SQLite serialises its writers).
        self.row_locks = row_locks
        #: The keys each workflow declares (storage keeps them in `instance_keys`).
        self.keys = {d.name: tuple(d.keys.values()) for d in definitions().values() if d.keys}

    def open(self, conn: Connection, *, optimistic: bool = False, lock: bool | None = None) -> EventUnit:
        """A unit on `conn` under the versions in force in it (`lock=False`: no row locks, for
        reads); it starts under the one in effect at real time."""
        schedule = self.versions.schedule(conn)
        version, engine = schedule.entries[0]
        uow = EventUnit(conn, version, engine, now=self.now, lock=self.row_locks if lock is None else lock,
                        keys=self.keys, optimistic=optimistic, schedule=schedule)
        if not schedule.single:
            uow.judge_at(uow.now_of(None))
        return uow
