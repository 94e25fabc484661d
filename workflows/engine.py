"""The engine: `transitions` machines built once per rules version, driven by pure calls.

`Engine.decide(snapshot, event, data, now)` judges one event and returns an `Outcome`; it never
mutates its inputs, reads the clock, draws randomness of its own or does I/O (entropy and the
password hasher are the caller's, bound once when the engine is built: `workflows/ports.py`).
Each workflow has one `transitions.Machine` (`auto_transitions=False`) that no model is bound to:
a call hands it a small cursor on the snapshot's state and takes the event's transition, so calls
share nothing mutable and need no lock. Route rules are the machine's conditions; the event's
actions run once the transition has been taken.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from jsonschema import Draft202012Validator
from transitions import EventData

from tollgate.workflows.actions import ACTIONS, reads_account
from tollgate.workflows.calendar import as_utc
from tollgate.workflows.definitions import CREATE_EVENT, Definition, Transition
from tollgate.workflows.documents import data_problems
from tollgate.workflows.exceptions import BadRequest, InvalidTransition, Reason
from tollgate.workflows.guards import GuardSet, holds
from tollgate.workflows.machines import LeanMachine
from tollgate.workflows.outcome import Outcome, Snapshot, Step, TimerSpec
from tollgate.workflows.policy import Policy, TimerRule
from tollgate.workflows.ports import Entropy, SecretHasher
from tollgate.workflows.secrets import REDACTED as REDACTED  # re-exported: tests and callers name it here
from tollgate.workflows.secrets import redact, redact_reasons

# ── a fast path for data validation ─────────────────────────────────────────────────────────
#
# jsonschema costs ~7 µs for a two-field object, most of the core's budget. Event data and
# creation contexts use a small subset of JSON Schema, so each schema is also compiled into a
# check that answers "certainly valid" for the common case and "not sure" otherwise; only "not
# sure" runs the full validator, which alone decides and explains rejections. A fast check may
# therefore be strict (a float 5000.0 or a str subclass goes to jsonschema) but never lenient.

Check = Callable[[Any], bool]
_EXACT_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "boolean": (bool,),
                                             "number": (int, float), "null": (type(None),)}
_IGNORED = frozenset({"description", "title", "examples", "$comment", "writeOnly", "readOnly"})


def _number_bound(compare: Callable[[Any, Any], bool], bound: Any) -> Check:
    return lambda v: type(v) in (int, float) and compare(v, bound)


def _length_bound(compare: Callable[[Any, Any], bool], bound: Any) -> Check:
    return lambda v: type(v) is str and compare(len(v), bound)


def _value_check(schema: Mapping[str, Any], format_checker: Any) -> Check | None:
    """A check of one property's schema, or None if it uses a keyword not handled here."""
    if not isinstance(schema, Mapping) or set(schema) - _IGNORED - {
            "type", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "format"}:
        return None
    checks: list[Check] = []
    if "type" in schema:
        if not isinstance(schema["type"], str) or schema["type"] not in _EXACT_TYPES:
            return None
        types = _EXACT_TYPES[schema["type"]]
        checks.append(lambda v: type(v) in types)
    if "enum" in schema:
        if not all(type(x) is str for x in schema["enum"]):
            return None
        allowed = frozenset(schema["enum"])
        checks.append(lambda v: type(v) is str and v in allowed)
    for key, compare in (("minimum", operator.ge), ("maximum", operator.le)):
        if key in schema:
            checks.append(_number_bound(compare, schema[key]))
    for key, compare in (("minLength", operator.ge), ("maxLength", operator.le)):
        if key in schema:
            checks.append(_length_bound(compare, schema[key]))
    if "pattern" in schema:
        search = re.compile(schema["pattern"]).search
        checks.append(lambda v: type(v) is str and search(v) is not None)
    if "format" in schema:
        fmt = schema["format"]
        if format_checker is None:
            return None
        checks.append(lambda v: format_checker.conforms(v, fmt))
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(check(v) for check in checks)


def fast_check(validator: Draft202012Validator) -> Check | None:
    """For an object schema: a check whose True means valid (False: ask jsonschema)."""
    schema = validator.schema
    allowed = {"type", "required", "properties", "additionalProperties", "minProperties"}
    if not isinstance(schema, Mapping) or schema.get("type") != "object" or \
            set(schema) - _IGNORED - allowed:
        return None
    required = tuple(schema.get("required", ()))
    properties: list[tuple[str, Check]] = []
    for name, sub in schema.get("properties", {}).items():
        value_check = _value_check(sub, validator.format_checker)
        if value_check is None:
            return None
        properties.append((name, value_check))
    additional = schema.get("additionalProperties", True)
    if additional not in (True, False):
        return None
    known = frozenset(name for name, _ in properties)
    min_properties = schema.get("minProperties", 0)

    def check(data: Any) -> bool:
        if type(data) is not dict or len(data) < min_properties:
            return False
        for name in required:
            if name not in data:
                return False
        if additional is False and not known.issuperset(data):
            return False
        for name, ok in properties:  # noqa: SIM110 -- a plain loop beats all() on the hot path
            if name in data and not ok(data[name]):
                return False
        return True

    return check


class _Cursor:
    """The model one call hands its workflow's machine: the state it is in, the inputs its route
    conditions read and the route rules that held. One per call, so concurrent calls on the same
    machine share nothing they write (a slotted object costs about what a lock did)."""

    __slots__ = ("inputs", "notes", "state")

    def __init__(self, state: str, inputs: dict[str, Any]) -> None:
        self.state = state
        self.inputs = inputs
        self.notes: list[Reason | None] = []


@dataclass(frozen=True)
class _TimerPlan:
    """What a move from one state to another does to the workflow's timers, known at load time:
    each entry is (timer, was_in) to evaluate and arm, or (timer, None) to cancel."""

    steps: tuple[tuple[TimerRule, bool | None], ...]


class WorkflowMachine:
    """One workflow's `transitions.Machine` for one rules version.

    Everything a call can know before it sees data is computed here once: the branches and
    internal-ness of each (event, state), the fast data checks, the timer plan of each move.
    """

    def __init__(self, definition: Definition, policy: Policy) -> None:
        self.definition = definition
        self.policy = policy
        self.timers = policy.timers_of(definition.name)
        self.data_checks = {name: fast_check(e.validator) for name, e in definition.events.items()}
        self.context_check = fast_check(definition.context_validator)
        self.branches: dict[tuple[str, str], tuple[Transition, ...]] = {}
        for t in definition.transitions:
            self.branches[(t.event, t.source)] = (*self.branches.get((t.event, t.source), ()), t)
        self._timer_plans: dict[tuple[str | None, str], _TimerPlan] = {}
        # Whether staying in the source state is an internal transition (timers untouched).
        self.stays_internal = {key: all(b.dest is None for b in branches if b.target == key[1])
                               for key, branches in self.branches.items()}
        self.guards = {name: policy.guards(definition.name, name)
                       for name in (*definition.events, CREATE_EVENT)}
        transitions = []
        for t in definition.transitions:
            spec: dict[str, Any] = {"trigger": t.event, "source": t.source, "dest": t.dest}
            if t.when:
                spec["conditions"] = [self._route(t.when)]
            transitions.append(spec)
        self.machine = LeanMachine(model=None, states=list(definition.state_names),
                               initial=definition.initial, transitions=transitions,
                               auto_transitions=False, send_event=True, name=definition.name)
        self.actions = {name: tuple(ACTIONS[a] for a in e.actions)
                        for name, e in definition.events.items()}
        # The machine's transitions of each (event, state), in the order transitions tries them.
        self._paths = {(name, source): (event, tuple(candidates))
                       for name, event in self.machine.events.items()
                       for source, candidates in event.transitions.items()}

    def _route(self, rule_id: str) -> Any:
        rule = self.policy.rules.get(rule_id)

        def condition(event_data: EventData) -> bool:
            cursor = cast(_Cursor, event_data.model)
            if holds(rule, cursor.inputs):
                cursor.notes.append(rule.reason() if rule else None)
                return True
            return False
        condition.__name__ = f"route_{rule_id}"
        return condition

    def fire(self, state: str, event: str, step: Step,
             inputs: dict[str, Any]) -> tuple[str, list[Reason]]:
        """Take `event` from `state`; return the state reached and the route notes.

        This is `Event.trigger` without its generic layers (a partial, the machine's queue
        check, a state look-up by name, source validation, empty prepare/finalize callback
        lists): the caller has already checked that `state` has branches for `event`, and
        `transitions.Transition.execute` still evaluates the route conditions in order and
        changes the state with exit/enter. The event's actions run right after the transition
        that was taken, where an `after` callback would run them, without transitions' callback
        resolution.
        """
        trigger, candidates = self._paths[(event, state)]
        machine = self.machine
        cursor = _Cursor(state, inputs)
        event_data = EventData(machine.states[state], trigger, machine, cursor, (), {})
        for transition in candidates:
            event_data.transition = transition
            if transition.execute(event_data):
                event_data.result = True
                for action in self.actions[event]:
                    action(step)
                break
        return cursor.state, [n for n in cursor.notes if n is not None]

    def timer_plan(self, source: str | None, target: str) -> _TimerPlan:
        """The timers to evaluate or cancel when an instance moves from `source` to `target`."""
        plan = self._timer_plans.get((source, target))
        if plan is None:
            steps: list[tuple[TimerRule, bool | None]] = []
            for timer in self.timers:
                was_in = source in timer.states
                is_in = target in timer.states
                if is_in and (not was_in or source == target):
                    steps.append((timer, was_in))
                elif was_in and not is_in:
                    steps.append((timer, None))
            plan = self._timer_plans.setdefault((source, target), _TimerPlan(tuple(steps)))
        return plan


@dataclass(frozen=True, slots=True)
class _EventPlan:
    """What `decide` looks up for one (workflow, event), gathered once per rules version."""

    definition: Definition
    machine: WorkflowMachine
    check: Check | None
    guards: GuardSet
    prepare: tuple[Callable[[Step], None], ...]
    denied: tuple[Callable[[Step], None], ...]


class Engine:
    """Judges events for every workflow under one policy version."""

    def __init__(self, policy: Policy, *, entropy: Entropy, hasher: SecretHasher) -> None:
        """`entropy` draws the codes sent to people, `hasher` hashes passwords: the caller's
        (`service/application/passwords.py`), bound here once rather than passed with every event."""
        self.policy = policy
        self.version = policy.version
        self.entropy = entropy
        self.hasher = hasher
        self.machines = {name: WorkflowMachine(d, policy) for name, d in policy.definitions.items()}
        self._plans = {
            (name, event): _EventPlan(machine.definition, machine, machine.data_checks[event],
                                      machine.guards[event], tuple(ACTIONS[a] for a in spec.prepare),
                                      tuple(ACTIONS[a] for a in spec.on_denied))
            for name, machine in self.machines.items()
            for event, spec in machine.definition.events.items()}
        self._needs_account = {(name, event): self._reads_account(machine, event)
                               for name, machine in self.machines.items()
                               for event in machine.definition.events}

    # ── helpers ──────────────────────────────────────────────────────────────────────────────

    def definition(self, workflow: str) -> Definition:
        return self.policy.definitions[workflow]

    def needs_account(self, workflow: str, event: str) -> bool:
        """Whether judging `event` reads the referenced account: a guard, a route or a timer of
        the workflow names `account`, or one of the event's actions reads it (`reads_account`).
        A caller may then hand the account over lazily for the other events."""
        return self._needs_account.get((workflow, event), True)

    def _reads_account(self, machine: WorkflowMachine, event: str) -> bool:
        definition, policy = machine.definition, self.policy
        expressions = [rule.expression for rule in machine.guards[event].rules]
        expressions += [rule.expression for t in definition.transitions if t.event == event and t.when
                        if (rule := policy.rules.get(t.when)) is not None]
        for timer in machine.timers:
            expressions += [timer.at] if timer.when is None else [timer.at, timer.when]
        if any("account" in expression.roots for expression in expressions):
            return True
        spec = definition.events[event]
        return any(reads_account(ACTIONS[name]) for name in (*spec.prepare, *spec.actions, *spec.on_denied))

    def _step(self, snapshot: Snapshot, data: Mapping[str, Any], now: datetime,
              rng: Entropy | None) -> Step:
        # Copy-on-write: actions assign, pop or replace top-level keys and build new lists and
        # maps for nested values (workflows/actions.py), so a shallow copy keeps the snapshot's
        # context untouched; tests/test_engine.py checks this for every event.
        return Step(instance_id=snapshot.id, workflow=snapshot.workflow, data=data,
                    context=dict(snapshot.context), secrets=dict(snapshot.secrets),
                    account=snapshot.account, facts=snapshot.facts, now=now,
                    params=self.policy.params, zone=self.policy.zone, rng=rng or self.entropy,
                    hasher=self.hasher)

    @staticmethod
    def _timer_changes(plan: _TimerPlan, inputs: Mapping[str, Any]
                       ) -> tuple[tuple[TimerSpec, ...], tuple[str, ...]]:
        armed: list[TimerSpec] = []
        cancelled: list[str] = []
        for timer, was_in in plan.steps:
            if was_in is None:
                cancelled.append(timer.id)
                continue
            if timer.when is not None and timer.when.evaluate(inputs) is not True:
                if was_in:
                    cancelled.append(timer.id)
                continue
            at = timer.at.evaluate(inputs)
            if isinstance(at, datetime):
                armed.append(TimerSpec(timer.id, timer.event, as_utc(at)))
            elif was_in:
                cancelled.append(timer.id)
        return tuple(armed), tuple(cancelled)

    def validate_data(self, workflow: str, event: str, data: Any) -> None:
        definition = self.definition(workflow)
        spec = definition.events.get(event)
        if spec is None:
            raise BadRequest(f"The {workflow} workflow has no event '{event}'; its events: "
                             f"{', '.join(definition.events)}.")
        if type(data) is not dict and not isinstance(data, Mapping):
            raise BadRequest(f"The data of '{event}' must be a JSON object.")
        check = self.machines[workflow].data_checks[event]
        if (check is None or not check(data)) and not spec.validator.is_valid(data):
            problems = data_problems(spec.validator, data, f"{event}.data", definition.secret_fields)
            raise BadRequest(f"The data of '{event}' is not valid: {problems[0].path}: "
                             f"{problems[0].message}.", problems)

    # ── the two entry points ─────────────────────────────────────────────────────────────────

    def decide(self, snapshot: Snapshot, event: str, data: Mapping[str, Any], now: datetime,
               *, rng: Entropy | None = None) -> Outcome:
        """Judge `event` with `data` for the instance in `snapshot` at time `now`; `rng` replaces
        the engine's entropy for this one decision (a test's seeded `random.Random`)."""
        workflow, source = snapshot.workflow, snapshot.state
        plan = self._plans.get((workflow, event))
        if plan is None or type(data) is not dict or plan.check is None or not plan.check(data):
            self.validate_data(workflow, event, data)  # explains what is wrong, or passes
            plan = self._plans[(workflow, event)]
        definition, machine = plan.definition, plan.machine
        if (event, source) not in machine.branches:
            raise InvalidTransition(workflow, source, event, definition.events_from(source))
        now = as_utc(now)
        inputs: dict[str, Any] = {"data": data, "context": snapshot.context,
                                  "account": snapshot.account, "facts": snapshot.facts, "now": now}
        reasons = plan.guards.failures(inputs)
        step = self._step(snapshot, data, now, rng)
        redacted = redact(data, definition.secret_fields)
        if reasons:
            if definition.secret_fields:  # a denial only: an error's text may quote a secret
                reasons = redact_reasons(reasons, data, definition.secret_fields)
            for denied in plan.denied:
                denied(step)
            return Outcome(workflow=workflow, event=event, source=source, target=source,
                           applied=False, reasons=tuple(reasons), context=step.context,
                           context_changed=step.context != snapshot.context,
                           secrets=step.secrets, data=redacted, rules_version=self.version)
        for prepare in plan.prepare:
            prepare(step)
        inputs["context"] = step.context
        target, notes = machine.fire(source, event, step, inputs)
        internal = target == source and machine.stays_internal[(event, source)]
        armed: tuple[TimerSpec, ...] = ()
        cancelled: tuple[str, ...] = ()
        if not internal:
            inputs["context"] = step.context
            armed, cancelled = self._timer_changes(machine.timer_plan(source, target), inputs)
        return Outcome(workflow=workflow, event=event, source=source, target=target,
                       applied=True, notes=tuple(notes), context=step.context,
                       context_changed=step.context != snapshot.context, secrets=step.secrets,
                       timers_set=armed, timers_cancelled=cancelled,
                       notifications=tuple(step.notifications), sends=tuple(step.sends),
                       data=redacted, rules_version=self.version)

    def create(self, workflow: str, context: Mapping[str, Any], now: datetime, *,
               instance_id: str = "", account: Mapping[str, Any] | None = None,
               facts: Mapping[str, Any] | None = None) -> Outcome:
        """Judge the creation of an instance; the outcome's target is the initial state."""
        if workflow not in self.policy.definitions:
            raise BadRequest(f"There is no workflow '{workflow}'.")
        definition = self.definition(workflow)
        machine = self.machines[workflow]
        check = machine.context_check
        if not isinstance(context, Mapping) or (
                (check is None or not check(context))
                and not definition.context_validator.is_valid(context)):
            problems = data_problems(definition.context_validator, context, "context")
            raise BadRequest(f"The context of a new {workflow} instance is not valid: "
                             f"{problems[0].path}: {problems[0].message}.", problems)
        now = as_utc(now)
        inputs = {"data": {}, "context": context, "account": account, "facts": facts or {},
                  "now": now}
        reasons = machine.guards[CREATE_EVENT].failures(inputs)
        if reasons:
            return Outcome(workflow=workflow, event=CREATE_EVENT, source=None,
                           target=definition.initial, applied=False, reasons=tuple(reasons),
                           context=dict(context), rules_version=self.version)
        armed, _ = self._timer_changes(machine.timer_plan(None, definition.initial), inputs)
        return Outcome(workflow=workflow, event=CREATE_EVENT, source=None,
                       target=definition.initial, applied=True, context=dict(context),
                       context_changed=True, timers_set=armed, rules_version=self.version)
