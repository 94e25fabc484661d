"""When an armed timer would be due under another policy: the pure re-planning of one timer.

A timer is armed when its instance enters one of the timer's states, at the instant it entered
(`armed_at`): its `when` and `at` are judged with `now` = that instant, the instance's context and
its account (the same inputs the engine gave them, `Engine._timer_changes`). Re-planning asks the
same question of another policy: still armed, and due when? Used when a new rules version takes
effect (`on_new_version: replan`) and by the impact report's look ahead.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tollgate.workflows.calendar import as_utc
from tollgate.workflows.policy import Policy


def replan_due(policy: Policy, workflow: str, timer: str, state: str, context: Mapping[str, Any],
               account: Mapping[str, Any] | None, armed_at: datetime) -> datetime | None:
    """The due time of the timer `timer` of an instance of `workflow` in `state` under `policy`, had
    it been armed at `armed_at`; None when the policy would not have it armed (no such timer for
    the workflow, a state it does not watch, a `when` that is not true, an `at` that is no time)."""
    rule = policy.timers.get(timer)
    if rule is None or rule.workflow != workflow or state not in rule.states:
        return None
    inputs: dict[str, Any] = {"data": {}, "context": context, "account": account, "facts": {},
                              "now": as_utc(armed_at)}
    if rule.when is not None and rule.when.evaluate(inputs) is not True:
        return None
    at = rule.at.evaluate(inputs)
    return as_utc(at) if isinstance(at, datetime) else None
