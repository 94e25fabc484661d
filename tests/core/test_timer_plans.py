"""`replan_due`: the due time a timer would get if armed again, through the engine's own path."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import yaml

from tollgate.service.application.policy_files import load_policy
from tollgate.workflows.engine import Engine
from tollgate.workflows.policy import Policy
from tollgate.workflows.timer_plans import replan_due


def _policy(rules_data: Callable[[], dict[str, Any]], edit: Callable[[dict[str, Any]], None]) -> Policy:
    data = rules_data()
    edit(data)
    return load_policy(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "candidate.yaml")


def test_replan_under_the_arming_version_gives_the_armed_due_time(
        policy: Policy, engine: Engine, kst: Callable[..., datetime]) -> None:
    armed_at = kst(2026, 11, 3, 14)
    created = engine.create("signup", {}, armed_at)
    [(name, due)] = [(t.name, t.at) for t in created.timers_set]
    assert replan_due(policy, "signup", name, "type_selection", created.context, None, armed_at) == due
    # the timer covers later states too: the same plan in each of them
    assert replan_due(policy, "signup", name, "password_setup", {}, None, armed_at) == due


def test_replan_under_a_candidate_moves_the_due_time(
        rules_data: Callable[[], dict[str, Any]], kst: Callable[..., datetime]) -> None:
    candidate = _policy(rules_data, lambda d: d["params"]["signup"].update(abandon_after_hours=48))
    armed_at = kst(2026, 11, 3, 14)
    assert replan_due(candidate, "signup", "signup_abandoned", "login_info", {}, None, armed_at) == \
        kst(2026, 11, 5, 14).astimezone(UTC)


def test_no_due_time_for_a_timer_gone_a_state_it_does_not_cover_or_a_failing_when(
        policy: Policy, rules_data: Callable[[], dict[str, Any]], kst: Callable[..., datetime]) -> None:
    armed_at = kst(2026, 11, 3, 14)
    assert replan_due(policy, "signup", "no_such_timer", "login_info", {}, None, armed_at) is None
    assert replan_due(policy, "signup", "signup_abandoned", "active", {}, None, armed_at) is None
    assert replan_due(policy, "nowhere", "signup_abandoned", "login_info", {}, None, armed_at) is None
    removed = _policy(rules_data, lambda d: d["timers"].pop("signup_abandoned"))
    assert replan_due(removed, "signup", "signup_abandoned", "login_info", {}, None, armed_at) is None
    invoice = {"usage_month": "2026-10"}
    # autopay_next_day: `when: local_day(now) < last autopay day (14)` — both sides of the boundary
    assert replan_due(policy, "invoice", "autopay_next_day", "autopay", invoice, None,
                      kst(2026, 11, 13, 0)) == kst(2026, 11, 14, 0).astimezone(UTC)
    assert replan_due(policy, "invoice", "autopay_next_day", "autopay", invoice, None,
                      kst(2026, 11, 14, 0)) is None
