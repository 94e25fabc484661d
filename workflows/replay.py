"""Judging a recorded attempt again, under the version that judged it or a candidate (pure).

A history row keeps the event, its (redacted) data, the state it left and its instant; since
migration 0009 it also keeps the rest of what the rules read (`inputs`, made by `record_inputs`
when the attempt is judged):

* `context` — the instance's context before the event, its secret fields left out;
* `account` — the referenced account as the guards saw it, only when the judging version read it
  (absent otherwise: a candidate that starts reading it cannot be replayed on that row);
* `facts` — the facts gathered for the event;
* `secret` — for each guard that reads a secret (a password, an email code, a code's digest):
  `[held, digest of the rule as compiled]`, never the secret. A candidate whose rule over a
  secret is new or changed cannot be judged on the row: `judge_again` says so instead of guessing.

`judge_again` then runs the engine's own steps (guards, the event's `prepare` actions, the
machine's routes and actions, the timer plan) on those inputs and returns a `Verdict`, or an
`Unreplayable` naming why it cannot. Replaying a row under the version that judged it gives back
the recorded verdict; the impact report checks that on every row it replays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tollgate.workflows.calendar import as_utc
from tollgate.workflows.definitions import CREATE_EVENT
from tollgate.workflows.engine import Engine
from tollgate.workflows.exceptions import Reason
from tollgate.workflows.guards import GuardSet, Rule
from tollgate.workflows.outcome import Snapshot
from tollgate.workflows.policy import Policy
from tollgate.workflows.secrets import SECRET_CONTEXT_FIELDS

#: Secret context fields of any workflow (an account's view is its signup's context).
_ANY_SECRET_CONTEXT = frozenset().union(*SECRET_CONTEXT_FIELDS.values())


@dataclass(frozen=True)
class Verdict:
    """What judging an attempt gave: `outcome` applied, denied, failed (the rules raised) or
    invalid (the event does not exist, or not from that state); the state reached; the rule ids
    that denied it (denied) or whose route was taken (applied); the timers it armed, by name."""

    outcome: str
    target: str
    rules: tuple[str, ...] = ()
    timers: Mapping[str, datetime] = field(default_factory=dict, compare=False)

    def key(self) -> tuple[str, str, frozenset[str]]:
        return self.outcome, self.target, frozenset(self.rules)


@dataclass(frozen=True)
class Unreplayable:
    """Why a row cannot be judged again under a policy (one sentence, for the report)."""

    why: str


class _ReplayEntropy:
    """Codes drawn while replaying are never sent: a constant will do (and stays pure)."""

    def randrange(self, stop: int, /) -> int:
        return 0


class _ReplayHasher:
    """Replay hashes nothing it keeps: no slow hash of a redacted value."""

    def hash(self, secret: str, /) -> str:
        return "replay"

    def verify(self, hashed: str, secret: str, /) -> bool:
        return False


def replay_engine(policy: Policy) -> Engine:
    """An engine for replay: the policy's machines and rules, a constant entropy, no hashing."""
    return Engine(policy, entropy=_ReplayEntropy(), hasher=_ReplayHasher())


def _reads_secret(rule: Rule, data_secrets: frozenset[str], context_secrets: frozenset[str]) -> bool:
    for binding in rule.expression.bindings:
        if binding.root == "data" and (binding.field is None or binding.field in data_secrets) \
                and data_secrets:
            return True
        if binding.root == "context" and context_secrets and (
                binding.field is None or binding.field in context_secrets):
            return True
        if binding.root == "account" and binding.field in _ANY_SECRET_CONTEXT:
            return True
    return False


def rule_digest(policy: Policy, rule: Rule) -> str:
    """A short digest of a rule as compiled (params inlined) in the policy's zone."""
    text = f"{policy.timezone}\n{rule.expression.rewritten}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class _SecretPlan:
    rules: tuple[tuple[Rule, str], ...]  # each guard of the event over a secret, with its digest


_PLANS: dict[tuple[int, str, str], _SecretPlan] = {}


def _secret_plan(engine: Engine, workflow: str, event: str) -> _SecretPlan:
    key = (id(engine), workflow, event)
    plan = _PLANS.get(key)
    if plan is None:
        policy = engine.policy
        definition = policy.definitions[workflow]
        guards = engine.machines[workflow].guards.get(event) or GuardSet([])
        data_secrets = definition.secret_fields if event != CREATE_EVENT else frozenset()
        context_secrets = SECRET_CONTEXT_FIELDS.get(workflow, frozenset())
        plan = _SecretPlan(tuple((r, rule_digest(policy, r)) for r in guards.rules
                                 if _reads_secret(r, frozenset(data_secrets), context_secrets)))
        if len(_PLANS) > 4096:  # engines come and go with versions: keep the cache bounded
            _PLANS.clear()
        plan = _PLANS.setdefault(key, plan)
    return plan


def record_inputs(engine: Engine, workflow: str, event: str, context: Mapping[str, Any],
                  account: Mapping[str, Any] | None, account_read: bool, facts: Mapping[str, Any],
                  reasons: tuple[Reason, ...] | list[Reason]) -> dict[str, Any]:
    """The `inputs` a history row keeps for replay (see the module's docstring): `account_read`
    says whether the judging version read the account (then `account` is kept, even None)."""
    context_secrets = SECRET_CONTEXT_FIELDS.get(workflow)
    if context_secrets and any(k in context_secrets for k in context):
        context = {k: v for k, v in context.items() if k not in context_secrets}
    inputs: dict[str, Any] = {"context": context}
    if account_read:
        if account is not None and any(k in _ANY_SECRET_CONTEXT for k in account):
            account = {k: v for k, v in account.items() if k not in _ANY_SECRET_CONTEXT}
        inputs["account"] = account
    if facts:
        inputs["facts"] = facts
    plan = _secret_plan(engine, workflow, event)
    if plan.rules:
        failed = {r.rule for r in reasons}
        inputs["secret"] = {rule.id: [rule.id not in failed, digest] for rule, digest in plan.rules}
    return inputs


def judge_again(engine: Engine, instance_id: str, workflow: str, event: str, source: str | None,
                data: Mapping[str, Any], inputs: Mapping[str, Any], now: datetime) -> Verdict | Unreplayable:
    """Judge a recorded attempt again under `engine`'s policy (see the module's docstring)."""
    machine = engine.machines.get(workflow)
    if machine is None:
        return Verdict("invalid", source or "", ("no such workflow",))
    definition = machine.definition
    context = inputs.get("context") or {}
    facts = inputs.get("facts") or {}
    if "account" in inputs:
        account = inputs["account"]
    elif definition.references_account and (event == CREATE_EVENT
                                            or engine.needs_account(workflow, event)):
        return Unreplayable("the candidate reads the account here, which the version that judged "
                            "the attempt did not, so it was not kept")
    else:
        account = None
    now = as_utc(now)
    if event == CREATE_EVENT:
        source_state = None
        guards = machine.guards[CREATE_EVENT]
    else:
        if event not in definition.events:
            return Verdict("invalid", source or "", ("no such event",))
        if source is None or (event, source) not in machine.branches:
            return Verdict("invalid", source or "", ("not from this state",))
        source_state = source
        guards = machine.guards[event]
    values: dict[str, Any] = {"data": data, "context": context, "account": account, "facts": facts,
                              "now": now}
    secret_plan = _secret_plan(engine, workflow, event)
    try:
        if secret_plan.rules:
            kept = inputs.get("secret") or {}
            failed: list[str] = []
            judged = {rule.id for rule, _ in secret_plan.rules}
            for rule, digest in secret_plan.rules:
                result = kept.get(rule.id)
                if not isinstance(result, list) or len(result) != 2 or result[1] != digest:
                    return Unreplayable(f"the rule {rule.id} reads a secret (kept only as the results "
                                        "of the rules that judged it) and is new or changed")
                if result[0] is not True:
                    failed.append(rule.id)
            for rule in guards.rules:
                if rule.id not in judged and GuardSet._judge(rule, values) is not None:
                    failed.append(rule.id)
            order = {rule.id: i for i, rule in enumerate(guards.rules)}
            denied = sorted(failed, key=order.__getitem__)
        else:
            denied = [r.rule for r in guards.failures(values)]
        if denied:
            return Verdict("denied", source_state or definition.initial, tuple(denied))
        if source_state is None:
            armed, _ = Engine._timer_changes(machine.timer_plan(None, definition.initial), values)
            return Verdict("applied", definition.initial, (), {t.name: t.at for t in armed})
        snapshot = Snapshot(workflow=workflow, state=source_state, context=context, id=instance_id,
                            account=account, facts=facts, secrets={})
        step = engine._step(snapshot, data, now, None)
        plan = engine._plans[(workflow, event)]
        for prepare in plan.prepare:
            prepare(step)
        values["context"] = step.context
        target, notes = machine.fire(source_state, event, step, values)
        timers: dict[str, datetime] = {}
        if not (target == source_state and machine.stays_internal[(event, source_state)]):
            values["context"] = step.context
            armed, _ = Engine._timer_changes(machine.timer_plan(source_state, target), values)
            timers = {t.name: t.at for t in armed}
        return Verdict("applied", target, tuple(n.rule for n in notes), timers)
    except Exception:  # the rules raised: the attempt would be recorded as failed
        return Verdict("failed", source_state or definition.initial, ("rules_failed",))
