"""`workflows/replay.py`: what a history row keeps for replay, and judging it again."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import yaml

from tollgate.service.application.policy_files import load_policy
from tollgate.workflows.engine import Engine
from tollgate.workflows.outcome import Snapshot
from tollgate.workflows.policy import Policy
from tollgate.workflows.replay import Unreplayable, Verdict, judge_again, record_inputs, replay_engine
from tollgate.workflows.secrets import redact


def _policy(rules_data: Callable[[], dict[str, Any]], edit: Callable[[dict[str, Any]], None]) -> Policy:
    data = rules_data()
    edit(data)
    return load_policy(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "candidate.yaml")


def _recorded(engine: Engine, snap: Snapshot, event: str, data: dict[str, Any], now: datetime,
              account_read: bool = False) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Judge as the service does; the outcome, and the row's (redacted) data and inputs as stored."""
    outcome = engine.decide(snap, event, data, now)
    inputs = record_inputs(engine, snap.workflow, event, snap.context, snap.account, account_read,
                           snap.facts, outcome.reasons)
    stored = json.loads(json.dumps(inputs))
    return outcome, dict(outcome.data), stored


def test_a_password_is_never_kept_only_whether_its_rules_held(
        engine: Engine, policy: Policy, snapshot: Callable[..., Snapshot],
        kst: Callable[..., datetime]) -> None:
    snap = snapshot("signup", "password_setup", {"email": "a@b.co", "email_code_hash": "digest"})
    for password, applied in (("Cloud#2026ok", True), ("short", False)):
        outcome, data, inputs = _recorded(engine, snap, "set_password",
                                          {"password": password, "password_confirm": password},
                                          kst(2026, 11, 3, 14))
        assert outcome.applied is applied
        kept = json.dumps([data, inputs])
        assert password not in kept and "email_code_hash" not in kept
        assert {rule: held for rule, (held, _digest) in inputs["secret"].items()} == {
            "password_policy": applied, "password_confirmation": True}
        again = judge_again(replay_engine(policy), "s-1", "signup", "set_password", "password_setup", data,
                            inputs, kst(2026, 11, 3, 14))
        assert isinstance(again, Verdict)
        assert again.key() == ("applied" if applied else "denied", outcome.target,
                               frozenset(n.rule for n in (outcome.notes if applied else outcome.reasons)))


def test_a_changed_rule_over_a_secret_is_not_guessed(
        engine: Engine, rules_data: Callable[[], dict[str, Any]], snapshot: Callable[..., Snapshot],
        kst: Callable[..., datetime]) -> None:
    snap = snapshot("signup", "password_setup", {"email": "a@b.co"})
    _, data, inputs = _recorded(engine, snap, "set_password",
                                {"password": "Cloud#2026ok", "password_confirm": "Cloud#2026ok"},
                                kst(2026, 11, 3, 14))
    longer = _policy(rules_data, lambda d: d["params"]["signup"]["password"].update(min_length=14))
    again = judge_again(replay_engine(longer), "s-1", "signup", "set_password", "password_setup", data,
                        inputs, kst(2026, 11, 3, 14))
    assert isinstance(again, Unreplayable) and "password_policy reads a secret" in again.why


def test_an_account_the_judging_version_did_not_read_is_not_guessed(
        engine: Engine, rules_data: Callable[[], dict[str, Any]], snapshot: Callable[..., Snapshot],
        kst: Callable[..., datetime]) -> None:
    snap = snapshot("payment_method", "phone_verification", {"channel": "web", "method": "credit_card"})
    assert not engine.needs_account("payment_method", "verify_phone")  # so the row keeps none
    _, data, inputs = _recorded(engine, snap, "verify_phone", {"owner_match": True}, kst(2026, 11, 3, 14))
    assert "account" not in inputs
    reading = _policy(rules_data, lambda d: d["rules"]["phone_owner"].update(
        guard='data.owner_match == true && account.country == "KR"'))
    again = judge_again(replay_engine(reading), "pm-1", "payment_method", "verify_phone",
                        "phone_verification", data, inputs, kst(2026, 11, 3, 14))
    assert isinstance(again, Unreplayable) and "reads the account" in again.why
    same = judge_again(replay_engine(engine.policy), "pm-1", "payment_method", "verify_phone",
                       "phone_verification", data, inputs, kst(2026, 11, 3, 14))
    assert isinstance(same, Verdict) and same.outcome == "applied"


def test_an_event_gone_from_the_state_is_not_allowed(
        engine: Engine, policy: Policy, snapshot: Callable[..., Snapshot],
        kst: Callable[..., datetime]) -> None:
    snap = snapshot("signup", "type_selection")
    data = {"country": "KR", "member_type": "business"}
    _, stored, inputs = _recorded(engine, snap, "select_type", data, kst(2026, 11, 3, 14))
    again = judge_again(replay_engine(policy), "s-1", "signup", "select_type", "active", stored, inputs,
                        kst(2026, 11, 3, 14))
    assert again == Verdict("invalid", "active", ("not from this state",))
    assert redact(data, ()) == stored
