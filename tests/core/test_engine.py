"""The engine: what `Engine.decide` and `Engine.create` return, refuse and never touch."""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime
from random import Random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate.service.application.policy_files import definitions
from tollgate.workflows.actions import code_digest
from tollgate.workflows.engine import REDACTED, fast_check
from tollgate.workflows.exceptions import BadRequest, InvalidTransition
from tollgate.workflows.outcome import Snapshot

ISSUED = {"usage_month": "2026-10", "usage": 7000, "amount_due": 5000, "paid_amount": 0,
          "payer": "autopay", "credit_applied": []}


# ── refusals ──────────────────────────────────────────────────────────────────────────────────


def test_invalid_transition_lists_the_events_allowed_in_the_state(engine, snapshot, kst):
    with pytest.raises(InvalidTransition) as caught:
        engine.decide(snapshot("invoice", "paid", ISSUED), "pay_now", {"amount": 5000},
                      kst(2026, 11, 3, 14))
    assert caught.value.allowed == []
    with pytest.raises(InvalidTransition) as caught:
        engine.decide(snapshot("invoice", "open", {"usage_month": "2026-10"}), "pay_now",
                      {"amount": 5000}, kst(2026, 11, 3, 14))
    assert caught.value.allowed == ["add_usage", "issue"]
    assert "events valid there: add_usage, issue" in str(caught.value)


@pytest.mark.parametrize(("data", "path"), [
    ({"amount": "5000"}, "$.amount"),
    ({"amount": 0}, "$.amount"),
    ({"amount": True}, "$.amount"),
    ({}, "$"),
])
def test_bad_data_is_a_bad_request_with_its_json_path(engine, snapshot, kst, data, path):
    with pytest.raises(BadRequest) as caught:
        engine.decide(snapshot("invoice", "issued", ISSUED), "pay_now", data, kst(2026, 11, 3, 14))
    assert caught.value.problems[0].path == path
    assert f"The data of 'pay_now' is not valid: {path}:" in str(caught.value)


def test_data_that_is_not_an_object_and_unknown_events_are_bad_requests(engine, snapshot, kst):
    snap = snapshot("invoice", "issued", ISSUED)
    with pytest.raises(BadRequest, match="must be a JSON object"):
        engine.decide(snap, "pay_now", [5000], kst(2026, 11, 3, 14))  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="has no event 'pay_later'"):
        engine.decide(snap, "pay_later", {}, kst(2026, 11, 3, 14))


def test_a_float_amount_is_judged_by_jsonschema_like_before(engine, snapshot, kst):
    """The fast data check sends what it is unsure of (5000.0) to jsonschema, which accepts it
    as an integer; the guards then judge it."""
    outcome = engine.decide(snapshot("invoice", "issued", ISSUED), "pay_now", {"amount": 5000.0},
                            kst(2026, 11, 3, 14))
    assert outcome.event == "pay_now"


# ── denials ───────────────────────────────────────────────────────────────────────────────────


def test_denial_returns_every_failing_rule_in_rules_order(engine, snapshot, account, kst):
    snap = snapshot("payment_method", "method_selection", {"channel": "mobile"},
                    account=account(member_type="individual", country="US"))
    outcome = engine.decide(snap, "select_method", {"method": "bank_account"},
                            kst(2026, 11, 3, 23, 30))
    assert not outcome.applied
    assert outcome.target == outcome.source == "method_selection"
    assert [r.rule for r in outcome.reasons] == [
        "restricted_hours", "individual_credit_card_only", "mobile_card_types",
        "overseas_3ds_only"]
    assert outcome.timers_set == () and outcome.timers_cancelled == ()


def test_on_denied_actions_change_the_context(engine, snapshot, kst):
    context = {"email": "a@b.co", "email_code_hash": code_digest("123456"),
               "email_code_expires_at": "2026-11-03T05:10:00+00:00", "email_code_attempts": 1}
    snap = snapshot("signup", "email_verification", context)
    outcome = engine.decide(snap, "verify_email", {"code": "654321"}, kst(2026, 11, 3, 14, 1))
    assert [r.rule for r in outcome.reasons] == ["email_code"]
    assert outcome.context_changed
    assert outcome.context["email_code_attempts"] == 2
    assert snap.context["email_code_attempts"] == 1


# ── timers ────────────────────────────────────────────────────────────────────────────────────


def test_internal_transitions_keep_timers(engine, snapshot, kst):
    outcome = engine.decide(snapshot("invoice", "open", {"usage_month": "2026-10"}), "add_usage",
                            {"amount": 1200}, kst(2026, 10, 20))
    assert outcome.applied and outcome.target == "open"
    assert outcome.context["usage"] == 1200
    assert outcome.timers_set == () and outcome.timers_cancelled == ()
    failed = engine.decide(snapshot("invoice", "autopay", ISSUED), "charge_failed",
                           {"reason": "insufficient funds"}, kst(2026, 11, 10, 9))
    assert failed.target == "autopay"
    assert failed.timers_set == () and failed.timers_cancelled == ()


def test_external_self_transition_rearms_timers(engine, snapshot, kst):
    outcome = engine.decide(snapshot("invoice", "autopay", ISSUED, facts={"payable_methods": 1}),
                            "start_autopay", {}, kst(2026, 11, 11))
    assert outcome.target == "autopay"
    assert {t.name: t.at for t in outcome.timers_set} == {
        "autopay_next_day": kst(2026, 11, 12).astimezone(UTC),
        "overdue_after_autopay": kst(2026, 11, 15).astimezone(UTC),
    }
    last = engine.decide(snapshot("invoice", "autopay", ISSUED, facts={"payable_methods": 1}),
                         "start_autopay", {}, kst(2026, 11, 14))
    assert [t.name for t in last.timers_set] == ["overdue_after_autopay"]
    assert last.timers_cancelled == ("autopay_next_day",)


def test_leaving_a_state_cancels_its_timers(engine, snapshot, kst):
    outcome = engine.decide(snapshot("invoice", "issued", ISSUED), "pay_now", {"amount": 5000},
                            kst(2026, 11, 3, 14))
    assert outcome.target == "paid"
    assert outcome.timers_set == ()
    assert outcome.timers_cancelled == ("autopay_first_day", "overdue_after_autopay")


def test_creation_arms_the_initial_timers(engine, account, kst):
    invoice = engine.create("invoice", {"account": "acct-1", "usage_month": "2026-10"},
                            kst(2026, 10, 1), account=account())
    assert invoice.applied and invoice.target == "open" and invoice.source is None
    assert [(t.name, t.event, t.at) for t in invoice.timers_set] == [
        ("invoice_issue", "issue", kst(2026, 11, 3).astimezone(UTC))]
    signup = engine.create("signup", {}, kst(2026, 11, 3, 14))
    assert [(t.name, t.at) for t in signup.timers_set] == [
        ("signup_abandoned", kst(2026, 11, 6, 14).astimezone(UTC))]


def test_creation_with_a_bad_context_is_a_bad_request(engine, kst):
    with pytest.raises(BadRequest) as caught:
        engine.create("invoice", {"account": "acct-1", "usage_month": "2026-13"}, kst(2026, 10, 1))
    assert caught.value.problems[0].path == "$.usage_month"
    with pytest.raises(BadRequest, match="no workflow 'bill'"):
        engine.create("bill", {}, kst(2026, 10, 1))


# ── data hygiene ──────────────────────────────────────────────────────────────────────────────


def test_secret_fields_are_redacted_from_the_outcome(engine, snapshot, kst):
    snap = snapshot("signup", "password_setup", {"email": "a@b.co"})
    outcome = engine.decide(snap, "set_password",
                            {"password": "Passw0rd!", "password_confirm": "Passw0rd!"},
                            kst(2026, 11, 3, 14))
    assert outcome.applied
    assert outcome.data == {"password": REDACTED, "password_confirm": REDACTED}
    assert "Passw0rd!" not in repr(outcome)
    assert outcome.secrets["password_hash"].startswith("$argon2")


_ACCOUNT = {"id": "acct-1", "state": "active", "country": "KR", "member_type": "business",
            "partner": True, "email": "m@example.com", "phone": "010-0000-0000"}
_NESTED = {"consumed": [{"invoice": "i0", "amount": 1, "at": "x"}],
           "deposits": [{"amount": 1, "deposited_at": "2026-11-04T00:00:00+00:00"}],
           "charge_failures": [{"reason": "r", "at": "x"}], "consents": {"recurring": False},
           "credit_applied": [{"credit": "c1", "amount": 2000}]}
_CONTEXTS = {
    "signup": {"country": "KR", "member_type": "business", "email": "a@b.co",
               "email_code_hash": code_digest("123456"), "email_code_attempts": 0,
               "email_code_expires_at": "2026-11-03T05:10:00+00:00"},
    "payment_method": {"account": "acct-1", "channel": "web", "method": "credit_card"},
    "credit": {"account": "acct-1", "balance": 3000, "amount": 100000,
               "expires_at": "2027-02-03T05:00:00+00:00"},
    "invoice": {"account": "acct-1", **ISSUED, "suspend_after": "2026-12-01T01:00:00+00:00"},
}
_DATA = {
    "select_type": {"country": "KR", "member_type": "business"},
    "submit_email": {"email": "new@b.co"}, "verify_email": {"code": "123456"},
    "set_password": {"password": "Passw0rd!", "password_confirm": "Passw0rd!"},
    "update_profile": {"name": "N", "phone": "010"}, "set_partner": {"partner": True},
    "restrict": {"reason": "abuse"},
    "select_method": {"method": "credit_card", "card_type": "corporate",
                      "card_owner": "corporation", "named": True},
    "verify_phone": {"owner_match": True},
    "register": {"agree_payment_info": True, "agree_recurring": True},
    "apply": {"service_area": "game", "signup_path": "search", "marketing_consent": True},
    "consume": {"amount": 100, "invoice": "inv-1"}, "revoke": {"reason": "platform_abuse"},
    "add_usage": {"amount": 10}, "charge_succeeded": {"payment_ref": "p1"},
    "charge_failed": {"reason": "r"}, "pay_now": {"amount": 5000},
    "deposit": {"amount": 100, "deposited_at": "2026-11-20T00:00:00+00:00"},
}
_FACTS = {"email_taken": False, "payable_methods": 1, "credit_granted": False,
          "credits": [{"id": "c1", "balance": 3000, "expires_at": "2027-01-01T00:00:00+09:00"}]}


_MOVES = sorted({(workflow, t.source, t.event) for workflow, definition in definitions().items()
                 for t in definition.transitions})


@pytest.mark.parametrize(("workflow", "state", "event"), _MOVES,
                         ids=[f"{w}-{e}-from-{s}" for w, s, e in _MOVES])
def test_decide_never_mutates_the_snapshot(engine, kst, workflow, state, event):
    """Copy-on-write: applied or denied, the snapshot's context (nested values included),
    account, facts, secrets and the event data are exactly as they were."""
    context = {**copy.deepcopy(_CONTEXTS[workflow]), **copy.deepcopy(_NESTED)}
    if workflow == "signup":
        context.pop("account", None)
    snap = Snapshot(workflow, state, context, id=f"{workflow}-1",
                    account=None if workflow == "signup" else copy.deepcopy(_ACCOUNT),
                    facts=copy.deepcopy(_FACTS), secrets={"password_hash": "h"})
    data = copy.deepcopy(_DATA.get(event, {}))
    before = copy.deepcopy((snap.context, snap.account, snap.facts, snap.secrets, data))
    for now in (kst(2026, 11, 3, 14, 1), kst(2026, 11, 14, 9), kst(2026, 12, 1, 11)):
        outcome = engine.decide(snap, event, data, now, rng=Random(7))
        assert (snap.context, snap.account, snap.facts, snap.secrets, data) == before
        assert outcome.context is not snap.context


# ── threads ───────────────────────────────────────────────────────────────────────────────────


def test_concurrent_decides_on_different_states_reach_their_own_targets(engine, snapshot, kst):
    """One cursor per machine, positioned under a lock: 4 threads × 500 decides on the same
    invoice machine from different states never see each other's state."""
    now = kst(2026, 11, 20, 12)
    jobs = [
        (snapshot("invoice", "issued", ISSUED), "pay_now", {"amount": 5000}, "paid"),
        (snapshot("invoice", "overdue", ISSUED), "begin_grace", {}, "grace"),
        (snapshot("invoice", "autopay", ISSUED), "charge_succeeded", {"payment_ref": "p"},
         "paid"),
        (snapshot("invoice", "open", {"usage_month": "2026-10"}), "add_usage", {"amount": 1},
         "open"),
    ]
    errors: list[Any] = []
    barrier = threading.Barrier(len(jobs))

    def run(snap, event, data, expected):
        barrier.wait()
        for _ in range(500):
            outcome = engine.decide(snap, event, data, now)
            if not outcome.applied or outcome.target != expected or outcome.source != snap.state:
                errors.append((event, outcome.source, outcome.target))

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# ── the fast data check agrees with jsonschema ───────────────────────────────────────────────

_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 6000), st.floats(allow_nan=False, width=32),
    st.sampled_from(["", "KR", "kr", "individual", "credit_card", "bank_account", "personal",
                     "corporation", "1990-05-17", "1990-02-30", "2026-11-03T05:00:00+00:00",
                     "2026-11-03 05:00", "x" * 33, "x" * 300, "search"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2))


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_fast_check_never_accepts_what_jsonschema_rejects(policy, data):
    definitions = list(policy.definitions.values())
    definition = data.draw(st.sampled_from(definitions))
    event = data.draw(st.sampled_from(list(definition.events.values())))
    keys = [*event.data_schema.get("properties", {}), "extra"]
    instance = data.draw(st.dictionaries(st.sampled_from(keys), _VALUES, max_size=len(keys)))
    check = fast_check(event.validator)
    assert check is not None, f"{definition.name}.{event.name} has no fast check"
    if check(instance):
        assert event.validator.is_valid(instance), (event.name, instance)
    context_check = fast_check(definition.context_validator)
    if context_check is not None and context_check(instance):
        assert definition.context_validator.is_valid(instance)


def test_fast_check_is_skipped_for_schemas_it_does_not_know(policy):
    from jsonschema import Draft202012Validator
    assert fast_check(Draft202012Validator({"type": "object", "oneOf": [{}]})) is None
    assert fast_check(Draft202012Validator({"type": "array"})) is None
    valid = fast_check(Draft202012Validator({"type": "object", "required": ["a"],
                                             "properties": {"a": {"type": "integer"}}}))
    assert valid is not None
    assert valid({"a": 1}) and not valid({"a": True}) and not valid({"a": 1.0})


def test_now_may_be_given_in_any_offset(engine, snapshot):
    """14:00 KST is 05:00 UTC: the pay-now window is open either way."""
    snap = snapshot("invoice", "issued", ISSUED)
    assert engine.decide(snap, "pay_now", {"amount": 5000}, datetime(2026, 11, 3, 5, tzinfo=UTC)
                         ).applied
    assert not engine.decide(snap, "pay_now", {"amount": 5000},
                             datetime(2026, 11, 3, 4, 59, 59, tzinfo=UTC)).applied
