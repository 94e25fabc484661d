"""The new-subscriber discount credit (할인 크레딧): apply, validity, consumption, revocation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tollgate.workflows.calendar import parse_instant
from tollgate.workflows.exceptions import InvalidTransition

APPLY = {"service_area": "web_service", "signup_path": "search", "marketing_consent": True}


@pytest.fixture
def offered(snapshot, account):
    def build(*, granted=False, **account_overrides):
        return snapshot(
            "credit",
            "offered",
            {},
            account=account(**account_overrides),
            facts={"credit_granted": granted},
            id="credit-1",
        )

    return build


@pytest.fixture
def granted(snapshot, account):
    """An active credit with `balance` left."""

    def build(balance=100_000, state="active"):
        context = {
            "amount": 100_000,
            "balance": balance,
            "expires_at": "2027-02-28T01:00:00+00:00",
            "consumed": [],
        }
        return snapshot("credit", state, context, account=account(), id="credit-1")

    return build


# ── credit_required_fields, marketing_consent, credit_once, account_active ──────────────────


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"service_area": "farming"}, id="unknown-service-area"),
        pytest.param({"signup_path": "tv"}, id="unknown-signup-path"),
        pytest.param({"service_area": "", "signup_path": ""}, id="both-empty"),
    ],
)
def test_credit_required_fields_from_the_lists(engine, offered, kst, denied_by, change):
    outcome = engine.decide(offered(), "apply", {**APPLY, **change}, kst(2026, 12, 1, 12))
    denied_by(outcome, "credit_required_fields")


def test_credit_required_fields_present(engine, offered, kst):
    outcome = engine.decide(
        offered(),
        "apply",
        {**APPLY, "service_area": "ai_ml", "signup_path": "referral"},
        kst(2026, 12, 1, 12),
    )
    assert outcome.applied and outcome.target == "active"
    assert outcome.context["service_area"] == "ai_ml"


def test_marketing_consent_is_required(engine, offered, kst, denied_by):
    outcome = engine.decide(offered(), "apply", {**APPLY, "marketing_consent": False}, kst(2026, 12, 1, 12))
    denied_by(outcome, "marketing_consent")
    assert "마케팅" in outcome.reasons[0].ko


def test_credit_once_per_account(engine, offered, kst, denied_by):
    denied_by(engine.decide(offered(granted=True), "apply", APPLY, kst(2026, 12, 1, 12)), "credit_once")
    assert engine.decide(offered(granted=False), "apply", APPLY, kst(2026, 12, 1, 12)).applied


@pytest.mark.parametrize(
    "state", ["type_selection", "password_setup", "payment_method_required", "restricted", "expired"]
)
def test_account_active_is_required(engine, offered, kst, denied_by, state):
    denied_by(engine.decide(offered(state=state), "apply", APPLY, kst(2026, 12, 1, 12)), "account_active")


def test_every_failing_apply_rule_is_listed(engine, offered, kst, denied_by):
    data = {"service_area": "x", "signup_path": "y", "marketing_consent": False}
    outcome = engine.decide(offered(granted=True, state="restricted"), "apply", data, kst(2026, 12, 1, 12))
    denied_by(outcome, "credit_required_fields", "marketing_consent", "credit_once", "account_active")


# ── amount and validity ───────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("granted_at", "expires_at"),
    [
        pytest.param((2026, 11, 30, 10), (2027, 2, 28, 10), id="nov30-clamped-to-feb28"),
        pytest.param((2027, 11, 30, 10), (2028, 2, 29, 10), id="nov30-clamped-to-leap-feb29"),
        pytest.param((2026, 12, 15, 9), (2027, 3, 15, 9), id="dec15-to-mar15-across-year"),
        pytest.param((2026, 10, 31, 18), (2027, 1, 31, 18), id="oct31-to-jan31"),
        pytest.param((2026, 12, 31, 12), (2027, 3, 31, 12), id="dec31-to-mar31"),
        pytest.param((2027, 3, 31, 12), (2027, 6, 30, 12), id="mar31-clamped-to-jun30"),
        # 00:30 KST on 30 November is still 29 November in UTC: months are counted in KST.
        pytest.param((2026, 11, 30, 0, 30), (2027, 2, 28, 0, 30), id="nov30-0030-kst-is-nov29-utc"),
    ],
)
def test_credit_amount_and_validity(engine, offered, kst, granted_at, expires_at):
    outcome = engine.decide(offered(), "apply", APPLY, kst(*granted_at))
    assert outcome.applied and outcome.target == "active"
    assert outcome.context["amount"] == 100_000 and outcome.context["balance"] == 100_000
    assert parse_instant(outcome.context["expires_at"]) == kst(*expires_at)
    assert parse_instant(outcome.context["granted_at"]) == kst(*granted_at)
    (timer,) = outcome.timers_set
    assert (timer.name, timer.event, timer.at) == ("credit_validity_ends", "expire", kst(*expires_at))
    assert outcome.timers_cancelled == ("credit_offer_lapses",)


def test_credit_offer_lapses_timer_at_creation(engine, account, kst):
    outcome = engine.create(
        "credit", {"account": "acct-1"}, kst(2026, 12, 1, 12), instance_id="credit-1", account=account()
    )
    assert outcome.applied and outcome.target == "offered"
    (timer,) = outcome.timers_set
    assert (timer.name, timer.event, timer.at) == ("credit_offer_lapses", "expire", kst(2026, 12, 31, 12))


@pytest.mark.parametrize("state", ["offered", "active"])
def test_credit_expire_timer_ends_offer_or_validity(engine, offered, granted, kst, state):
    snap = offered() if state == "offered" else granted()
    outcome = engine.decide(snap, "expire", {}, kst(2027, 2, 28, 10))
    assert outcome.applied and outcome.target == "expired"


# ── consumption by invoices ──────────────────────────────────────────────────────────────────


def test_credit_consume_part_of_the_balance(engine, granted, kst):
    outcome = engine.decide(granted(), "consume", {"amount": 30_000, "invoice": "inv-1"}, kst(2027, 1, 3))
    assert outcome.applied and outcome.target == "active"
    assert outcome.context["balance"] == 70_000
    assert outcome.context["consumed"] == [
        {"invoice": "inv-1", "amount": 30_000, "at": "2027-01-02T15:00:00+00:00"}
    ]
    assert outcome.timers_set == () and outcome.timers_cancelled == ()  # validity timer kept


@pytest.mark.parametrize("amount", [70_000, 90_000])
def test_credit_used_up_is_exhausted(engine, granted, kst, amount):
    outcome = engine.decide(
        granted(70_000), "consume", {"amount": amount, "invoice": "inv-2"}, kst(2027, 2, 3)
    )
    assert outcome.applied and outcome.target == "exhausted"
    assert outcome.context["balance"] == 0
    assert outcome.context["consumed"][-1]["amount"] == 70_000  # never more than the balance
    assert [n.rule for n in outcome.notes] == ["credit_used_up"]
    assert outcome.timers_cancelled == ("credit_validity_ends",)


# ── revocation ────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("state", ["active", "exhausted"])
@pytest.mark.parametrize("reason", ["cryptocurrency_mining", "platform_abuse"])
def test_revocation_revokes_and_restricts_the_account(engine, granted, kst, state, reason):
    balance = 40_000 if state == "active" else 0
    outcome = engine.decide(granted(balance, state), "revoke", {"reason": reason}, kst(2027, 1, 20))
    assert outcome.applied and outcome.target == "revoked"
    assert outcome.context["balance"] == 0 and outcome.context["revoked_balance"] == balance
    (send,) = outcome.sends
    assert (send.instance, send.event) == ("acct-1", "restrict")
    assert reason in send.data["reason"]


def test_revocation_denies_other_reasons(engine, granted, kst, denied_by):
    outcome = engine.decide(granted(), "revoke", {"reason": "did not like it"}, kst(2027, 1, 20))
    denied_by(outcome, "revocation")
    assert outcome.sends == ()


def test_revocation_of_an_offer_is_invalid(engine, offered, kst):
    with pytest.raises(InvalidTransition):
        engine.decide(offered(), "revoke", {"reason": "cryptocurrency_mining"}, kst(2027, 1, 20))


def test_expired_credit_cannot_be_applied_again(engine, snapshot, kst):
    with pytest.raises(InvalidTransition):
        engine.decide(snapshot("credit", "expired", {}), "apply", APPLY, datetime(2027, 1, 1, tzinfo=UTC))
