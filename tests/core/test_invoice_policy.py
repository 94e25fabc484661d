"""The monthly invoice (요금 납부, 미납): issue, pay-now, autopay, overdue, grace, suspension.

Usage month 2026-11 is billed in December 2026 unless a test says otherwise: issued on 3 Dec,
pay-now from 3 Dec 14:00, autopay 10–14 Dec, overdue from 15 Dec, grace until 31 Dec.
"""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from tollgate.workflows.calendar import add_months, at_local, parse_instant
from tollgate.workflows.exceptions import InvalidTransition

KST = ZoneInfo("Asia/Seoul")


@pytest.fixture
def invoice(snapshot, account):
    """`invoice(state, usage_month="2026-11", *, credits=(), payable_methods=1, **context)`."""

    def build(state, usage_month="2026-11", *, credits=(), payable_methods=1, **context):
        return snapshot(
            "invoice",
            state,
            {"usage_month": usage_month, **context},
            account=account(),
            id="inv-1",
            facts={"credits": list(credits), "payable_methods": payable_methods},
        )

    return build


@pytest.fixture
def issued(invoice):
    """An issued invoice of 70,000 KRW (`payer` autopay unless given)."""

    def build(
        state="issued", usage_month="2026-11", *, amount_due=70_000, paid_amount=0, payer="autopay", **context
    ):
        return invoice(
            state,
            usage_month,
            usage=amount_due,
            credit_applied=[],
            amount_due=amount_due,
            paid_amount=paid_amount,
            payer=payer,
            issued_at="2026-12-02T15:00:00+00:00",
            **context,
        )

    return build


def timers(outcome):
    return {t.name: (t.event, t.at) for t in outcome.timers_set}


# ── usage and issue ───────────────────────────────────────────────────────────────────────────


@pytest.mark.cases("invoice_schedule")
def test_invoice_issue_timer_on_the_3rd_of_the_billing_month(engine, account, kst, case):
    outcome = engine.create(
        "invoice",
        {"account": "acct-1", "usage_month": case["usage_month"]},
        kst(2026, 11, 1),
        instance_id="inv-1",
        account=account(),
    )
    assert outcome.applied and outcome.target == "open"
    assert timers(outcome) == {"invoice_issue": ("issue", kst(*case["issue"]))}


@pytest.mark.cases("invoice_schedule")
def test_invoice_issue_arms_autopay_and_overdue_timers(engine, invoice, kst, case):
    snap = invoice("open", case["usage_month"], usage=50_000)
    outcome = engine.decide(snap, "issue", {}, kst(*case["issue"]))
    assert outcome.applied and outcome.target == "issued"
    assert timers(outcome) == {
        "autopay_first_day": ("start_autopay", kst(*case["autopay"])),
        "overdue_after_autopay": ("mark_overdue", kst(*case["overdue"])),
    }
    assert outcome.timers_cancelled == ("invoice_issue",)


def test_add_usage_accumulates(engine, invoice, advance, kst):
    snap, _ = advance(invoice("open"), "add_usage", {"amount": 12_000}, kst(2026, 11, 5))
    snap, outcome = advance(snap, "add_usage", {"amount": 8_000}, kst(2026, 11, 30, 23, 59))
    assert snap.state == "open" and snap.context["usage"] == 20_000
    assert outcome.timers_set == () and outcome.timers_cancelled == ()


def test_issue_day_reached_not_before_the_3rd(engine, invoice, kst, denied_by):
    snap = invoice("open", usage=50_000)
    denied_by(engine.decide(snap, "issue", {}, kst(2026, 12, 2, 23, 59, 59)), "issue_day_reached")
    assert engine.decide(snap, "issue", {}, kst(2026, 12, 3)).applied


def test_issue_notifies_by_email_and_sms(engine, invoice, kst):
    outcome = engine.decide(invoice("open", usage=50_000), "issue", {}, kst(2026, 12, 3))
    channels = {(n.template, n.channel, n.recipient) for n in outcome.notifications}
    assert channels == {
        ("invoice_issued", "email", "member@example.com"),
        ("invoice_issued", "sms", "010-0000-0000"),
    }
    payload = outcome.notifications[0].payload
    assert payload["amount_due"] == 50_000
    assert parse_instant(payload["pay_now_from"]) == kst(2026, 12, 3, 14)
    assert outcome.context["payer"] == "autopay"


def test_issue_without_a_payable_method_makes_a_virtual_account_payer(engine, invoice, kst):
    outcome = engine.decide(invoice("open", usage=50_000, payable_methods=0), "issue", {}, kst(2026, 12, 3))
    assert outcome.context["payer"] == "virtual_account"


# ── credits applied at issue ─────────────────────────────────────────────────────────────────


def test_credits_applied_earliest_expiry_first_with_consume_sends(engine, invoice, kst):
    credits = [
        {"id": "credit-late", "balance": 50_000, "expires_at": "2027-03-01T00:00:00+00:00"},
        {"id": "credit-early", "balance": 30_000, "expires_at": "2027-02-01T00:00:00+00:00"},
    ]
    outcome = engine.decide(invoice("open", usage=150_000, credits=credits), "issue", {}, kst(2026, 12, 3))
    assert outcome.applied and outcome.target == "issued"
    assert outcome.context["credit_applied"] == [
        {"credit": "credit-early", "amount": 30_000},
        {"credit": "credit-late", "amount": 50_000},
    ]
    assert outcome.context["amount_due"] == 70_000
    assert [(s.instance, s.event, dict(s.data)) for s in outcome.sends] == [
        ("credit-early", "consume", {"amount": 30_000, "invoice": "inv-1"}),
        ("credit-late", "consume", {"amount": 50_000, "invoice": "inv-1"}),
    ]


def test_credits_earliest_expiry_compares_instants_not_text(engine, invoice, kst):
    """01 Mar 00:00 KST is 28 Feb 15:00 UTC: earlier than 28 Feb 20:00 UTC, whatever the text."""
    credits = [
        {"id": "credit-utc", "balance": 10_000, "expires_at": "2027-02-28T20:00:00+00:00"},
        {"id": "credit-kst", "balance": 10_000, "expires_at": "2027-03-01T00:00:00+09:00"},
    ]
    outcome = engine.decide(invoice("open", usage=10_000, credits=credits), "issue", {}, kst(2026, 12, 3))
    assert [s.instance for s in outcome.sends] == ["credit-kst"]


def test_credits_consume_only_what_the_usage_needs(engine, invoice, kst):
    credits = [
        {"id": "credit-1", "balance": 100_000, "expires_at": "2027-03-01T00:00:00+00:00"},
        {"id": "credit-2", "balance": 100_000, "expires_at": "2027-04-01T00:00:00+00:00"},
    ]
    outcome = engine.decide(invoice("open", usage=20_000, credits=credits), "issue", {}, kst(2026, 12, 3))
    assert [(s.instance, s.data["amount"]) for s in outcome.sends] == [("credit-1", 20_000)]


@pytest.mark.parametrize(
    ("usage", "credits"),
    [
        pytest.param(
            40_000,
            [{"id": "credit-1", "balance": 100_000, "expires_at": "2027-03-01T00:00:00+00:00"}],
            id="covered-by-credit",
        ),
        pytest.param(0, [], id="no-usage"),
    ],
)
def test_nothing_due_invoice_is_paid_at_issue(engine, invoice, kst, usage, credits):
    outcome = engine.decide(invoice("open", usage=usage, credits=credits), "issue", {}, kst(2026, 12, 3))
    assert outcome.applied and outcome.target == "paid"
    assert outcome.context["amount_due"] == 0
    assert [n.rule for n in outcome.notes] == ["nothing_due"]
    assert {n.channel for n in outcome.notifications} == {"email", "sms"}
    assert outcome.timers_set == () and outcome.timers_cancelled == ("invoice_issue",)


# ── pay_now_window, pay_now_full_amount ──────────────────────────────────────────────────────


def test_pay_now_window_opens_at_1400_on_the_issue_day(engine, issued, kst, denied_by):
    denied_by(
        engine.decide(issued(), "pay_now", {"amount": 70_000}, kst(2026, 12, 3, 13, 59, 59)), "pay_now_window"
    )
    outcome = engine.decide(issued(), "pay_now", {"amount": 70_000}, kst(2026, 12, 3, 14))
    assert outcome.applied and outcome.target == "paid"
    assert outcome.context["paid_by"] == "pay_now"
    assert set(outcome.timers_cancelled) == {"autopay_first_day", "overdue_after_autopay"}


def test_pay_now_window_in_january_for_december_usage(engine, issued, kst, denied_by):
    snap = issued(usage_month="2026-12")
    denied_by(
        engine.decide(snap, "pay_now", {"amount": 70_000}, kst(2027, 1, 3, 13, 59, 59)), "pay_now_window"
    )
    assert engine.decide(snap, "pay_now", {"amount": 70_000}, kst(2027, 1, 3, 14)).applied


@pytest.mark.parametrize("amount", [69_999, 70_001, 1])
def test_pay_now_full_amount_only(engine, issued, kst, denied_by, amount):
    denied_by(engine.decide(issued(), "pay_now", {"amount": amount}, kst(2026, 12, 5)), "pay_now_full_amount")


def test_pay_now_full_amount_is_what_remains_after_deposits(engine, issued, kst, denied_by):
    snap = issued(paid_amount=30_000)
    denied_by(engine.decide(snap, "pay_now", {"amount": 70_000}, kst(2026, 12, 5)), "pay_now_full_amount")
    assert engine.decide(snap, "pay_now", {"amount": 40_000}, kst(2026, 12, 5)).applied


def test_pay_now_both_rules_listed(engine, issued, kst, denied_by):
    denied_by(
        engine.decide(issued(), "pay_now", {"amount": 1}, kst(2026, 12, 3, 9)),
        "pay_now_window",
        "pay_now_full_amount",
    )


@pytest.mark.parametrize("state", ["autopay", "overdue", "grace", "suspended"])
def test_pay_now_settles_from_every_unpaid_state(engine, issued, kst, state):
    outcome = engine.decide(issued(state), "pay_now", {"amount": 70_000}, kst(2026, 12, 20))
    assert outcome.applied and outcome.target == "paid"


# ── autopay ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("day", "allowed"), [(9, False), (10, True), (14, True), (15, False)])
def test_autopay_window_days_10_to_14(engine, issued, kst, denied_by, day, allowed):
    outcome = engine.decide(issued(), "start_autopay", {}, kst(2026, 12, day))
    if allowed:
        assert outcome.applied and outcome.target == "autopay"
    else:
        denied_by(outcome, "autopay_window")


def test_autopay_window_edges_to_the_second(engine, issued, kst, denied_by):
    denied_by(engine.decide(issued(), "start_autopay", {}, kst(2026, 12, 9, 23, 59, 59)), "autopay_window")
    assert engine.decide(issued(), "start_autopay", {}, kst(2026, 12, 14, 23, 59, 59)).applied
    denied_by(engine.decide(issued("autopay"), "start_autopay", {}, kst(2026, 12, 15)), "autopay_window")


def test_autopay_window_is_in_the_billing_month_only(engine, issued, kst, denied_by):
    denied_by(engine.decide(issued(), "start_autopay", {}, kst(2027, 1, 10)), "autopay_window")
    denied_by(engine.decide(issued(), "start_autopay", {}, kst(2026, 11, 10)), "autopay_window")


def test_autopay_method_available(engine, issued, invoice, kst, denied_by):
    snap = issued()
    no_method = invoice(
        "issued", **{k: v for k, v in snap.context.items() if k != "account"}, payable_methods=0
    )
    denied_by(engine.decide(no_method, "start_autopay", {}, kst(2026, 12, 10)), "autopay_method_available")


def test_autopay_first_day_requests_a_charge_and_rearms_daily(engine, issued, kst):
    outcome = engine.decide(issued(), "start_autopay", {}, kst(2026, 12, 10))
    (charge,) = outcome.notifications
    assert (charge.template, charge.channel) == ("charge_request", "gateway")
    assert charge.payload["amount"] == 70_000 and charge.payload["attempt"] == 1
    assert timers(outcome) == {"autopay_next_day": ("start_autopay", kst(2026, 12, 11))}
    assert outcome.timers_cancelled == ("autopay_first_day",)


@pytest.mark.parametrize(("day", "next_day"), [(11, 12), (12, 13), (13, 14), (14, None)])
def test_autopay_next_day_rearms_until_the_last_day(engine, issued, kst, day, next_day):
    snap = issued("autopay", autopay_attempts=day - 10)
    outcome = engine.decide(snap, "start_autopay", {}, kst(2026, 12, day))
    assert outcome.applied and outcome.target == "autopay"
    assert outcome.notifications[0].payload["attempt"] == day - 9
    armed = timers(outcome)
    if next_day is None:
        assert "autopay_next_day" not in armed
        assert "autopay_next_day" in outcome.timers_cancelled
    else:
        assert armed["autopay_next_day"] == ("start_autopay", kst(2026, 12, next_day))
    # The overdue timer stays where it was: the 15th.
    assert armed.get("overdue_after_autopay", ("mark_overdue", kst(2026, 12, 15))) == (
        "mark_overdue",
        kst(2026, 12, 15),
    )


def test_charge_succeeded_pays(engine, issued, kst):
    outcome = engine.decide(
        issued("autopay"), "charge_succeeded", {"payment_ref": "pg-1"}, kst(2026, 12, 10, 0, 5)
    )
    assert outcome.applied and outcome.target == "paid"
    assert outcome.context["paid_by"] == "autopay" and outcome.context["paid_amount"] == 70_000
    assert set(outcome.timers_cancelled) == {"autopay_next_day", "overdue_after_autopay"}


def test_charge_failed_keeps_autopay_and_its_timers(engine, issued, kst):
    outcome = engine.decide(issued("autopay"), "charge_failed", {"reason": "limit"}, kst(2026, 12, 10, 0, 5))
    assert outcome.applied and outcome.target == "autopay"
    assert outcome.context["charge_failures"][0]["reason"] == "limit"
    assert outcome.timers_set == () and outcome.timers_cancelled == ()


# ── overdue, grace, suspension ───────────────────────────────────────────────────────────────


@pytest.mark.parametrize("state", ["issued", "autopay"])
def test_mark_overdue_only_after_the_last_autopay_day(engine, issued, kst, denied_by, state):
    denied_by(
        engine.decide(issued(state), "mark_overdue", {}, kst(2026, 12, 14, 23, 59, 59)),
        "overdue_after_autopay",
    )
    outcome = engine.decide(issued(state), "mark_overdue", {}, kst(2026, 12, 15))
    assert outcome.applied and outcome.target == "overdue"
    (notice,) = outcome.notifications
    assert (notice.template, notice.channel, notice.recipient) == (
        "invoice_overdue",
        "email",
        "member@example.com",
    )
    assert notice.payload["amount_due"] == 70_000
    assert timers(outcome) == {"grace_begins": ("begin_grace", kst(2026, 12, 15))}  # at once
    assert "overdue_after_autopay" in outcome.timers_cancelled


@pytest.mark.cases("grace_deadlines")
def test_grace_deadline(engine, issued, kst, case):
    billing_15th = at_local(add_months(case["usage_month"], 1), 15, "00:00", KST)
    snap = issued("overdue", case["usage_month"], payer=case["payer"])
    outcome = engine.decide(snap, "begin_grace", {}, billing_15th)
    assert outcome.applied and outcome.target == "grace"
    assert parse_instant(outcome.context["grace_deadline"]) == kst(*case["deadline"])
    assert parse_instant(outcome.context["suspend_after"]) == kst(*case["suspend_after"])
    assert timers(outcome) == {"grace_deadline": ("suspend", kst(*case["suspend_after"]))}
    assert outcome.timers_cancelled == ("grace_begins",)


@pytest.mark.cases("grace_deadlines")
def test_grace_deadline_passed_before_suspension(engine, issued, kst, denied_by, case):
    suspend_after = kst(*case["suspend_after"])
    snap = issued(
        "grace",
        case["usage_month"],
        payer=case["payer"],
        grace_deadline=kst(*case["deadline"]).isoformat(),
        suspend_after=suspend_after.isoformat(),
    )
    denied_by(
        engine.decide(snap, "suspend", {}, suspend_after - timedelta(seconds=1)), "grace_deadline_passed"
    )
    outcome = engine.decide(snap, "suspend", {}, suspend_after)
    assert outcome.applied and outcome.target == "suspended"
    (notice,) = outcome.notifications
    assert (notice.template, notice.channel) == ("service_suspended", "email")
    assert outcome.timers_cancelled == ("grace_deadline",)


def test_autopay_payer_may_pay_now_until_the_end_of_the_last_day(engine, issued, kst):
    snap = issued(
        "grace",
        payer="autopay",
        grace_deadline=kst(2027, 1, 1).isoformat(),
        suspend_after=kst(2027, 1, 1).isoformat(),
    )
    outcome = engine.decide(snap, "pay_now", {"amount": 70_000}, kst(2026, 12, 31, 23, 59, 59))
    assert outcome.applied and outcome.target == "paid"
    assert outcome.timers_cancelled == ("grace_deadline",)


# ── deposits (virtual account) ───────────────────────────────────────────────────────────────


def deposit(amount, at):
    return {"amount": amount, "deposited_at": at.isoformat()}


def test_deposits_accumulate_partial_then_full(engine, issued, advance, kst):
    snap = issued(payer="virtual_account")
    snap, outcome = advance(snap, "deposit", deposit(30_000, kst(2026, 12, 4, 10)), kst(2026, 12, 4, 11))
    assert snap.state == "issued" and snap.context["paid_amount"] == 30_000
    assert outcome.timers_set == () and outcome.timers_cancelled == ()
    snap, outcome = advance(snap, "deposit", deposit(40_000, kst(2026, 12, 5, 10)), kst(2026, 12, 5, 12))
    assert snap.state == "paid" and snap.context["paid_amount"] == 70_000
    assert [n.rule for n in outcome.notes] == ["deposits_cover_due"]
    assert snap.context["paid_by"] == "deposit"
    assert parse_instant(snap.context["paid_at"]) == kst(2026, 12, 5, 10)  # when deposited
    assert [d["amount"] for d in snap.context["deposits"]] == [30_000, 40_000]


def test_deposit_not_in_future(engine, issued, kst, denied_by):
    denied_by(
        engine.decide(issued(), "deposit", deposit(70_000, kst(2026, 12, 5, 12, 0, 1)), kst(2026, 12, 5, 12)),
        "deposit_not_in_future",
    )


def test_deposit_lag_a_deposit_at_2159_reported_late_prevents_suspension(engine, issued, advance, kst):
    """Deposited at 21:59 on the last day, reported by the bank feed at 00:59: paid in grace."""
    snap, _ = advance(issued("overdue", payer="virtual_account"), "begin_grace", {}, kst(2026, 12, 15))
    assert parse_instant(snap.context["suspend_after"]) == kst(2027, 1, 1, 1)
    snap, _ = advance(snap, "deposit", deposit(70_000, kst(2026, 12, 31, 21, 59)), kst(2027, 1, 1, 0, 59))
    assert snap.state == "paid"


def test_deposit_after_suspension_still_pays(engine, issued, kst):
    snap = issued("suspended", payer="virtual_account")
    outcome = engine.decide(snap, "deposit", deposit(70_000, kst(2027, 1, 2, 9)), kst(2027, 1, 2, 10))
    assert outcome.applied and outcome.target == "paid"


def test_paid_invoice_takes_no_more_events(engine, issued, kst):
    with pytest.raises(InvalidTransition):
        engine.decide(issued("paid"), "deposit", deposit(1, kst(2026, 12, 5)), kst(2026, 12, 5))
