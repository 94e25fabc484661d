"""Re-planning an armed timer under another policy version (pure: no clock, no I/O).

A timer is armed by the transition that enters (or, not internally, re-enters) one of its
states, at that transition's instant: the engine evaluates its `when` and `at` on the event's
inputs then (`Engine._timer_changes` over `WorkflowMachine.timer_plan`). `replan_due` asks the
same question again — "what due time would this timer get if it were armed at `armed_at` for an
instance of `workflow` in `state` with this context?" — through that very code path, so a
re-plan under the version that armed a timer gives back its stored due time, and a re-plan
under a candidate version gives the due time the candidate would set.

What it cannot see: a timer whose `at` reads a context field that an action computed from params
when the state was entered (the bundled `grace_deadline` reads `context.suspend_after`, which
`start_grace` derives from `params.billing.grace_deadline`) keeps its due time here, since the
context is taken as it is; only replaying the arming event moves it (the impact report does
that when the history kept the event's inputs).

Used by the impact report (`service/application/impact.py`, the look-ahead) and by whatever
re-plans armed timers when a new version takes effect.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tollgate.workflows.calendar import as_utc
from tollgate.workflows.engine import Engine, WorkflowMachine
from tollgate.workflows.policy import Policy

#: One WorkflowMachine per (policy object, workflow): building one compiles a `transitions`
#: machine, far more than a re-plan costs. Entries go when their policy is collected.
_MACHINES: dict[tuple[int, str], WorkflowMachine] = {}


def _machine(policy: Policy, workflow: str) -> WorkflowMachine | None:
    key = (id(policy), workflow)
    machine = _MACHINES.get(key)
    if machine is None:
        definition = policy.definitions.get(workflow)
        if definition is None:
            return None
        machine = WorkflowMachine(definition, policy)
        if not any(k[0] == id(policy) for k in _MACHINES):
            weakref.finalize(policy, _forget, id(policy))
        machine = _MACHINES.setdefault(key, machine)
    return machine


def _forget(policy_id: int) -> None:
    for key in [k for k in _MACHINES if k[0] == policy_id]:
        _MACHINES.pop(key, None)


def replan_due(policy: Policy, workflow: str, timer: str, state: str, context: Mapping[str, Any],
               account: Mapping[str, Any] | None, armed_at: datetime, *,
               facts: Mapping[str, Any] | None = None,
               data: Mapping[str, Any] | None = None) -> datetime | None:
    """The due time (UTC) `timer` would get if armed at `armed_at` for an instance of `workflow`
    in `state` with `context` (and the referenced `account`) under `policy`; None when the
    policy has no such timer (or workflow), the timer does not apply to `state`, its `when` does
    not hold or its `at` gives no time.

    `facts` and `data` are the fact values and event data the arming transition saw; timers of
    the bundled policy read neither (empty by default). A rules error in `when` or `at` raises,
    as it does when the engine arms the timer.
    """
    machine = _machine(policy, workflow)
    if machine is None or state not in machine.definition.state_names:
        return None
    inputs: dict[str, Any] = {"data": data or {}, "context": context, "account": account,
                              "facts": facts or {}, "now": as_utc(armed_at)}
    # Entering `state` from outside: every timer of the state is evaluated and armed, as when
    # the instance entered it (a re-entry re-arms the same way: was_in only decides cancelling).
    armed, _ = Engine._timer_changes(machine.timer_plan(None, state), inputs)
    for spec in armed:
        if spec.name == timer:
            return spec.at
    return None
