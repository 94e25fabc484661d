"""Payment-method registration (결제수단 등록): every rule of the payment_method workflow."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tollgate.workflows.exceptions import BadRequest, InvalidTransition

CONSENT = {"agree_payment_info": True, "agree_recurring": True}
PERSONAL_CREDIT = {"method": "credit_card", "card_type": "personal", "card_owner": "person"}
PERSONAL_CHECK = {"method": "check_card", "card_type": "personal", "card_owner": "person"}
CORPORATE_CREDIT = {
    "method": "credit_card",
    "card_type": "corporate",
    "card_owner": "corporation",
    "named": True,
}
BANK = {"method": "bank_account"}


@pytest.fixture
def at_noon(kst):
    return kst(2026, 12, 1, 12)


@pytest.fixture
def consent_state(snapshot, account):
    """A business member's registration waiting for consent, with `method` chosen."""

    def build(method="check_card", *, channel="web", **account_overrides):
        context = {"channel": channel, "method": method}
        return snapshot(
            "payment_method",
            "consent",
            context,
            account=account(state="payment_method_required", **account_overrides),
        )

    return build


@pytest.fixture
def selecting(snapshot, account):
    def build(*, channel="web", **account_overrides):
        return snapshot(
            "payment_method",
            "method_selection",
            {"channel": channel},
            account=account(state="payment_method_required", **account_overrides),
        )

    return build


# ── restricted_hours ─────────────────────────────────────────────────────────────────────────


@pytest.mark.cases("restricted_hours")
def test_restricted_hours_at_register(engine, consent_state, kst, denied_by, case):
    hour, minute, second = (int(part) for part in case["at"].split(":"))
    outcome = engine.decide(
        consent_state(case["method"]), "register", CONSENT, kst(2026, 12, 1, hour, minute, second)
    )
    if case["allowed"]:
        assert outcome.applied and outcome.target == "active"
    else:
        denied_by(outcome, "restricted_hours")


def test_restricted_hours_denies_check_card_at_2300(engine, consent_state, kst, denied_by):
    outcome = engine.decide(consent_state("check_card"), "register", CONSENT, kst(2026, 12, 1, 23))
    denied_by(outcome, "restricted_hours")
    assert "23:00~09:00" in outcome.reasons[0].ko
    assert "between 23:00 and 09:00" in outcome.reasons[0].en


def test_restricted_hours_is_judged_in_kst_not_utc(engine, consent_state, kst, denied_by):
    """14:00 UTC is 23:00 KST: denied; 23:00 UTC is 08:00 KST: denied; 00:00 UTC is 09:00 KST."""
    denied_by(
        engine.decide(
            consent_state("bank_account"),
            "register",
            CONSENT,
            datetime(2026, 12, 1, 14, 0, tzinfo=UTC),
        ),
        "restricted_hours",
    )
    denied_by(
        engine.decide(
            consent_state("bank_account"),
            "register",
            CONSENT,
            datetime(2026, 12, 1, 23, 0, tzinfo=UTC),
        ),
        "restricted_hours",
    )
    assert engine.decide(
        consent_state("bank_account"), "register", CONSENT, datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
    ).applied


def test_restricted_hours_also_checked_at_select_method(engine, selecting, kst, denied_by):
    denied_by(
        engine.decide(selecting(), "select_method", PERSONAL_CHECK, kst(2026, 12, 1, 23)),
        "restricted_hours",
    )
    assert engine.decide(
        selecting(), "select_method", PERSONAL_CHECK, kst(2026, 12, 1, 22, 59, 59)
    ).applied
    assert engine.decide(
        selecting(), "select_method", PERSONAL_CREDIT, kst(2026, 12, 1, 23)
    ).applied


# ── individual_credit_card_only ──────────────────────────────────────────────────────────────


@pytest.mark.parametrize("data", [PERSONAL_CHECK, BANK], ids=["check_card", "bank_account"])
def test_individual_credit_card_only_denies_other_methods(
    engine, selecting, at_noon, denied_by, data
):
    outcome = engine.decide(selecting(member_type="individual"), "select_method", data, at_noon)
    denied_by(outcome, "individual_credit_card_only")


def test_individual_credit_card_only_allows_credit_card(engine, selecting, at_noon):
    outcome = engine.decide(
        selecting(member_type="individual"), "select_method", PERSONAL_CREDIT, at_noon
    )
    assert outcome.applied and outcome.target == "phone_verification"
    assert outcome.context["method"] == "credit_card"


@pytest.mark.parametrize(
    "data",
    [PERSONAL_CHECK, BANK, PERSONAL_CREDIT],
    ids=["check_card", "bank_account", "credit_card"],
)
def test_individual_credit_card_only_does_not_bind_business_members(
    engine, selecting, at_noon, data
):
    assert engine.decide(selecting(member_type="business"), "select_method", data, at_noon).applied


# ── mobile_card_types ─────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(PERSONAL_CREDIT, id="personal-credit-card"),
        pytest.param(CORPORATE_CREDIT, id="named-corporate-card"),
    ],
)
def test_mobile_card_types_allows_personal_credit_and_named_corporate(
    engine, selecting, at_noon, data
):
    assert engine.decide(selecting(channel="mobile"), "select_method", data, at_noon).applied


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({**CORPORATE_CREDIT, "named": False}, id="unnamed-corporate-card"),
        pytest.param(
            {k: v for k, v in CORPORATE_CREDIT.items() if k != "named"},
            id="corporate-named-unknown",
        ),
        pytest.param(PERSONAL_CHECK, id="personal-check-card"),
        pytest.param(BANK, id="bank_account"),
    ],
)
def test_mobile_card_types_denies_the_rest_on_mobile(engine, selecting, at_noon, denied_by, data):
    denied_by(
        engine.decide(selecting(channel="mobile"), "select_method", data, at_noon),
        "mobile_card_types",
    )


def test_mobile_card_types_does_not_bind_the_web(engine, selecting, at_noon):
    unnamed = {**CORPORATE_CREDIT, "named": False}
    assert engine.decide(selecting(channel="web"), "select_method", unnamed, at_noon).applied
    assert engine.decide(selecting(channel="web"), "select_method", BANK, at_noon).applied


# ── overseas_3ds_only ─────────────────────────────────────────────────────────────────────────

OVERSEAS_3DS = {**PERSONAL_CREDIT, "issued_overseas": True, "three_d_secure": True}


def test_overseas_3ds_only_allows_overseas_3ds_credit_card(engine, selecting, at_noon):
    assert engine.decide(selecting(country="US"), "select_method", OVERSEAS_3DS, at_noon).applied


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({**OVERSEAS_3DS, "three_d_secure": False}, id="not-3d-secure"),
        pytest.param({**OVERSEAS_3DS, "issued_overseas": False}, id="issued-in-korea"),
        pytest.param(PERSONAL_CREDIT, id="issuer-unknown"),
        pytest.param(
            {**PERSONAL_CHECK, "issued_overseas": True, "three_d_secure": True},
            id="overseas-3ds-check-card",
        ),
        pytest.param(BANK, id="bank_account"),
    ],
)
def test_overseas_3ds_only_denies_members_abroad(engine, selecting, at_noon, denied_by, data):
    denied_by(
        engine.decide(selecting(country="JP"), "select_method", data, at_noon), "overseas_3ds_only"
    )


def test_overseas_3ds_only_does_not_bind_domestic_members(engine, selecting, at_noon):
    assert engine.decide(selecting(country="KR"), "select_method", PERSONAL_CREDIT, at_noon).applied


def test_every_failing_rule_is_listed(engine, selecting, kst, denied_by):
    """An individual abroad choosing a check card at night breaks four rules at once."""
    outcome = engine.decide(
        selecting(channel="mobile", member_type="individual", country="US"),
        "select_method",
        PERSONAL_CHECK,
        kst(2026, 12, 1, 23, 30),
    )
    denied_by(
        outcome,
        "restricted_hours",
        "individual_credit_card_only",
        "mobile_card_types",
        "overseas_3ds_only",
    )


# ── corporate_card_owner ──────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("card_type", "card_owner"), [("corporate", "person"), ("personal", "corporation")]
)
def test_corporate_card_owner_denies_mismatched_owner(
    engine, selecting, at_noon, denied_by, card_type, card_owner
):
    data = {"method": "credit_card", "card_type": card_type, "card_owner": card_owner}
    denied_by(engine.decide(selecting(), "select_method", data, at_noon), "corporate_card_owner")


@pytest.mark.parametrize(
    ("card_type", "card_owner"), [("corporate", "corporation"), ("personal", "person")]
)
def test_corporate_card_owner_allows_matching_owner(
    engine, selecting, at_noon, card_type, card_owner
):
    data = {"method": "credit_card", "card_type": card_type, "card_owner": card_owner}
    assert engine.decide(selecting(), "select_method", data, at_noon).applied


def test_corporate_card_owner_requires_card_type_and_owner(engine, selecting, at_noon, denied_by):
    denied_by(
        engine.decide(selecting(), "select_method", {"method": "credit_card"}, at_noon),
        "corporate_card_owner",
    )
    assert engine.decide(selecting(), "select_method", BANK, at_noon).applied


# ── phone_owner ───────────────────────────────────────────────────────────────────────────────


def test_phone_owner_denies_a_phone_not_in_the_card_owners_name(
    engine, snapshot, at_noon, denied_by
):
    snap = snapshot(
        "payment_method", "phone_verification", {"channel": "web", "method": "credit_card"}
    )
    denied_by(engine.decide(snap, "verify_phone", {"owner_match": False}, at_noon), "phone_owner")
    outcome = engine.decide(snap, "verify_phone", {"owner_match": True}, at_noon)
    assert outcome.applied and outcome.target == "consent"


# ── payment_consents ──────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            {"agree_payment_info": False, "agree_recurring": True}, id="no-payment-info-consent"
        ),
        pytest.param(
            {"agree_payment_info": True, "agree_recurring": False}, id="no-recurring-consent"
        ),
        pytest.param({"agree_payment_info": False, "agree_recurring": False}, id="neither"),
    ],
)
def test_payment_consents_are_both_required(engine, consent_state, at_noon, denied_by, data):
    denied_by(
        engine.decide(consent_state("credit_card"), "register", data, at_noon), "payment_consents"
    )


def test_payment_consents_given_registers(engine, consent_state, at_noon):
    outcome = engine.decide(consent_state("credit_card"), "register", CONSENT, at_noon)
    assert outcome.applied and outcome.target == "active"
    assert outcome.context["consents"]["payment_info"] is True
    assert outcome.context["consents"]["recurring"] is True


# ── partner_not_payable ───────────────────────────────────────────────────────────────────────


def test_partner_not_payable_routes_partner_to_pending_support(
    engine, consent_state, at_noon, bilingual
):
    snap = consent_state("credit_card", partner=True)
    outcome = engine.decide(snap, "register", CONSENT, at_noon)
    assert outcome.applied and outcome.target == "pending_support"
    assert [n.rule for n in outcome.notes] == ["partner_not_payable"]
    assert "파트너" in outcome.notes[0].ko and "support" in outcome.notes[0].en
    assert [(s.instance, s.event) for s in outcome.sends] == [
        ("acct-1", "payment_method_registered")
    ]


def test_partner_not_payable_leaves_non_partner_active(engine, consent_state, at_noon):
    outcome = engine.decide(
        consent_state("credit_card", partner=False), "register", CONSENT, at_noon
    )
    assert outcome.applied and outcome.target == "active"
    assert outcome.notes == ()
    assert [(s.instance, s.event) for s in outcome.sends] == [
        ("acct-1", "payment_method_registered")
    ]
    assert outcome.sends[0].data == {"payment_method": "payment_method-1"}


def test_partner_not_payable_support_enables_payment(engine, snapshot, account, at_noon):
    snap = snapshot(
        "payment_method",
        "pending_support",
        {"channel": "web", "method": "credit_card"},
        account=account(partner=True),
    )
    outcome = engine.decide(snap, "enable_payment", {}, at_noon)
    assert outcome.applied and outcome.target == "active"
    assert [(s.instance, s.event) for s in outcome.sends] == [
        ("acct-1", "payment_method_registered")
    ]


def test_partner_not_payable_denied_registration_sends_nothing(
    engine, consent_state, kst, denied_by
):
    outcome = engine.decide(
        consent_state("bank_account", partner=True), "register", CONSENT, kst(2026, 12, 1, 23, 30)
    )
    denied_by(outcome, "restricted_hours")
    assert outcome.sends == () and outcome.notes == ()


# ── structure ─────────────────────────────────────────────────────────────────────────────────


def test_full_registration_path(engine, selecting, advance, at_noon):
    snap, _ = advance(selecting(), "select_method", PERSONAL_CHECK, at_noon)
    snap, _ = advance(snap, "verify_phone", {"owner_match": True}, at_noon)
    snap, outcome = advance(snap, "register", CONSENT, at_noon)
    assert snap.state == "active" and outcome.context["method"] == "check_card"
    snap, _ = advance(snap, "remove", {}, at_noon)
    assert snap.state == "removed"


def test_register_before_choosing_a_method_is_an_invalid_transition(engine, selecting, at_noon):
    with pytest.raises(InvalidTransition):
        engine.decide(selecting(), "register", CONSENT, at_noon)


def test_unknown_method_is_a_bad_request(engine, selecting, at_noon):
    with pytest.raises(BadRequest):
        engine.decide(selecting(), "select_method", {"method": "cash"}, at_noon)
