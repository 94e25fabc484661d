"""Policy changes need no code: modified copies of rules.yaml change behaviour on their own.

Each test edits the parsed bundled rules.yaml, dumps it back to YAML text and loads it through
`load_policy`, exactly as a policy editor's file would be, then shows the old and new verdicts.
"""

from __future__ import annotations

import pytest

from tollgate.workflows.calendar import parse_instant

CONSENT = {"agree_payment_info": True, "agree_recurring": True}
APPLY = {"service_area": "web_service", "signup_path": "search", "marketing_consent": True}


@pytest.fixture
def registering(snapshot, account):
    def build(method="check_card", channel="web"):
        return snapshot(
            "payment_method",
            "consent",
            {"channel": channel, "method": method},
            account=account(state="payment_method_required"),
        )

    return build


# ── restricted hours 22:00–08:00 ─────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def earlier_hours(engine_with):
    def edit(rules):
        rules["params"]["payment"]["restricted_hours"].update(start="22:00", end="08:00")

    return engine_with(edit)


@pytest.mark.parametrize(
    ("hms", "bundled", "changed"),
    [
        pytest.param((21, 59, 59), True, True, id="21:59:59"),
        pytest.param((22, 0, 0), True, False, id="22:00-now-denied"),
        pytest.param((22, 59, 59), True, False, id="22:59:59-now-denied"),
        pytest.param((7, 59, 59), False, False, id="07:59:59"),
        pytest.param((8, 0, 0), False, True, id="08:00-now-allowed"),
        pytest.param((8, 30, 0), False, True, id="08:30-now-allowed"),
        pytest.param((9, 0, 0), True, True, id="09:00"),
    ],
)
def test_restricted_hours_moved_to_2200_0800(
    engine, earlier_hours, registering, kst, denied_by, hms, bundled, changed
):
    now = kst(2026, 12, 1, *hms)
    for judge, allowed in ((engine, bundled), (earlier_hours, changed)):
        outcome = judge.decide(registering("bank_account"), "register", CONSENT, now)
        if allowed:
            assert outcome.applied
        else:
            denied_by(outcome, "restricted_hours")
    assert earlier_hours.decide(registering("credit_card"), "register", CONSENT, now).applied


def test_restricted_hours_message_interpolates_the_new_params(earlier_hours, registering, kst):
    outcome = earlier_hours.decide(registering(), "register", CONSENT, kst(2026, 12, 1, 22))
    (reason,) = outcome.reasons
    assert "22:00~08:00" in reason.ko and "23:00" not in reason.ko
    assert "between 22:00 and 08:00" in reason.en


def test_restricted_methods_list_is_policy_too(engine_with, registering, kst, denied_by):
    changed = engine_with(
        lambda r: r["params"]["payment"]["restricted_hours"].update(methods=["bank_account"])
    )
    now = kst(2026, 12, 1, 23, 30)
    assert changed.decide(registering("check_card"), "register", CONSENT, now).applied
    denied_by(changed.decide(registering("bank_account"), "register", CONSENT, now), "restricted_hours")


# ── credit 200,000 KRW for 6 months ──────────────────────────────────────────────────────────


def test_credit_200000_for_6_months(engine, engine_with, snapshot, account, kst):
    def edit(rules):
        rules["params"]["credit"].update(amount=200_000, valid_months=6)

    changed = engine_with(edit)
    snap = snapshot("credit", "offered", {}, account=account(), facts={"credit_granted": False})
    granted_at = kst(2026, 8, 31, 10)
    before = engine.decide(snap, "apply", APPLY, granted_at)
    after = changed.decide(snap, "apply", APPLY, granted_at)
    assert before.context["amount"] == 100_000
    assert parse_instant(before.context["expires_at"]) == kst(2026, 11, 30, 10)
    assert after.context["amount"] == after.context["balance"] == 200_000
    assert parse_instant(after.context["expires_at"]) == kst(2027, 2, 28, 10)  # clamped
    assert after.timers_set[0].at == kst(2027, 2, 28, 10)


# ── issue day 5 ──────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def issue_on_5th(engine_with):
    return engine_with(lambda rules: rules["params"]["billing"].update(issue_day=5))


def test_issue_day_5_moves_the_issue_timer(issue_on_5th, account, kst):
    outcome = issue_on_5th.create(
        "invoice",
        {"account": "acct-1", "usage_month": "2026-12"},
        kst(2026, 12, 1),
        instance_id="inv-1",
        account=account(),
    )
    assert [(t.name, t.at) for t in outcome.timers_set] == [("invoice_issue", kst(2027, 1, 5))]


def test_issue_day_5_moves_the_issue_guard_and_pay_now_window(
    engine, issue_on_5th, snapshot, account, kst, denied_by
):
    opened = snapshot(
        "invoice",
        "open",
        {"usage_month": "2026-11", "usage": 10_000},
        account=account(),
        facts={"credits": [], "payable_methods": 1},
    )
    denied_by(issue_on_5th.decide(opened, "issue", {}, kst(2026, 12, 3)), "issue_day_reached")
    issued = issue_on_5th.decide(opened, "issue", {}, kst(2026, 12, 5))
    assert issued.applied
    assert parse_instant(issued.notifications[0].payload["pay_now_from"]) == kst(2026, 12, 5, 14)

    snap = snapshot("invoice", "issued", dict(issued.context), account=account())
    pay = {"amount": 10_000}
    assert engine.decide(snap, "pay_now", pay, kst(2026, 12, 3, 14)).applied  # bundled: the 3rd
    denied = issue_on_5th.decide(snap, "pay_now", pay, kst(2026, 12, 5, 13, 59, 59))
    denied_by(denied, "pay_now_window")
    assert "5일 14:00" in denied.reasons[0].ko and "day 5" in denied.reasons[0].en
    denied_by(issue_on_5th.decide(snap, "pay_now", pay, kst(2026, 12, 3, 14)), "pay_now_window")
    assert issue_on_5th.decide(snap, "pay_now", pay, kst(2026, 12, 5, 14)).applied


# ── minimum age 20 ───────────────────────────────────────────────────────────────────────────


def test_minimum_age_20(engine, engine_with, snapshot, kst, denied_by):
    changed = engine_with(lambda rules: rules["params"]["signup"].update(min_age=20))
    snap = snapshot("signup", "type_selection", {})
    now = kst(2026, 12, 1, 12)

    def select(judge, birth_date):
        return judge.decide(
            snap, "select_type", {"country": "KR", "member_type": "individual", "birth_date": birth_date}, now
        )

    assert select(engine, "2007-12-01").applied  # 19 today
    denied = select(changed, "2007-12-01")
    denied_by(denied, "min_age")
    assert "20세" in denied.reasons[0].ko and "20 years" in denied.reasons[0].en
    denied_by(select(changed, "2006-12-02"), "min_age")  # 20 tomorrow
    assert select(changed, "2006-12-01").applied  # 20 today


# ── a rule disabled ──────────────────────────────────────────────────────────────────────────


def test_rule_disabled_lets_the_event_pass(engine, engine_with, registering, kst, denied_by):
    changed = engine_with(lambda rules: rules["rules"]["restricted_hours"].update(enabled=False))
    now = kst(2026, 12, 1, 23, 30)
    denied_by(engine.decide(registering(), "register", CONSENT, now), "restricted_hours")
    outcome = changed.decide(registering(), "register", CONSENT, now)
    assert outcome.applied and outcome.target == "active"


def test_rule_disabled_leaves_the_other_rules_of_the_event(engine_with, registering, kst, denied_by):
    changed = engine_with(lambda rules: rules["rules"]["restricted_hours"].update(enabled=False))
    outcome = changed.decide(
        registering(),
        "register",
        {"agree_payment_info": False, "agree_recurring": True},
        kst(2026, 12, 1, 23, 30),
    )
    denied_by(outcome, "payment_consents")


# ── a new rule on an existing event ──────────────────────────────────────────────────────────

NEW_RULE = {
    "workflow": "payment_method",
    "events": ["select_method"],
    "guard": 'context.channel != "web" || data.method != "check_card"',
    "message": {
        "ko": "웹에서는 체크카드를 등록할 수 없습니다.",
        "en": "Check cards cannot be registered on the web.",
    },
}


@pytest.fixture(scope="module")
def with_new_rule(engine_with):
    return engine_with(lambda rules: rules["rules"].update(web_no_check_card=NEW_RULE))


def test_new_rule_denies_with_its_own_message(engine, with_new_rule, snapshot, account, kst, denied_by):
    snap = snapshot(
        "payment_method",
        "method_selection",
        {"channel": "web"},
        account=account(state="payment_method_required"),
    )
    check = {"method": "check_card", "card_type": "personal", "card_owner": "person"}
    now = kst(2026, 12, 1, 12)
    assert engine.decide(snap, "select_method", check, now).applied
    outcome = with_new_rule.decide(snap, "select_method", check, now)
    denied_by(outcome, "web_no_check_card")
    assert outcome.reasons[0].ko == NEW_RULE["message"]["ko"]
    assert outcome.reasons[0].en == NEW_RULE["message"]["en"]
    assert with_new_rule.decide(snap, "select_method", {"method": "bank_account"}, now).applied


def test_new_rule_is_listed_with_the_existing_rules(with_new_rule, snapshot, account, kst, denied_by):
    snap = snapshot(
        "payment_method",
        "method_selection",
        {"channel": "web"},
        account=account(state="payment_method_required"),
    )
    check = {"method": "check_card", "card_type": "personal", "card_owner": "person"}
    denied_by(
        with_new_rule.decide(snap, "select_method", check, kst(2026, 12, 1, 23)),
        "restricted_hours",
        "web_no_check_card",
    )


def test_new_rule_with_a_new_param_for_some_countries(engine_with, snapshot, account, kst, denied_by):
    """A new rule may read a new parameter: bank accounts refused for listed countries."""

    def edit(rules):
        rules["params"]["payment"]["bank_account_blocked_countries"] = ["KR"]
        rules["rules"]["bank_account_country"] = {
            "workflow": "payment_method",
            "events": ["select_method"],
            "guard": '!(data.method == "bank_account" && account.country in '
            "params.payment.bank_account_blocked_countries)",
            "message": {
                "ko": "{params.payment.bank_account_blocked_countries} 거주 회원은 계좌이체를 "
                "등록할 수 없습니다.",
                "en": "Members residing in {params.payment.bank_account_blocked_countries} "
                "cannot register a bank account.",
            },
        }

    changed = engine_with(edit)
    snap = snapshot(
        "payment_method",
        "method_selection",
        {"channel": "web"},
        account=account(state="payment_method_required", country="KR"),
    )
    outcome = changed.decide(snap, "select_method", {"method": "bank_account"}, kst(2026, 12, 1, 12))
    denied_by(outcome, "bank_account_country")
    assert outcome.reasons[0].en == "Members residing in KR cannot register a bank account."


def test_bundled_engine_is_untouched_by_modified_copies(engine, earlier_hours, registering, kst):
    assert engine.policy.params["payment"]["restricted_hours"]["start"] == "23:00"
    assert earlier_hours.policy.params["payment"]["restricted_hours"]["start"] == "22:00"
    assert engine.policy.version != earlier_hours.policy.version
    assert engine.decide(registering(), "register", CONSENT, kst(2026, 12, 1, 22)).applied
