"""Member signup (회원 가입): every rule of the signup workflow, on both sides of its boundary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from random import Random

import pytest

from tollgate.service.application.passwords import verify_password
from tollgate.workflows.calendar import parse_instant
from tollgate.workflows.engine import REDACTED
from tollgate.workflows.exceptions import BadRequest, InvalidTransition

STRONG = "Abcdef1!"


@pytest.fixture
def noon(kst):
    return kst(2026, 12, 1, 12)


@pytest.fixture
def signup(snapshot):
    """`signup(state, **context)`: a signup instance in `state`, its email not taken."""
    return lambda state, **context: snapshot(
        "signup", state, context, id="signup-1", facts={"email_taken": False}
    )


@pytest.fixture
def emailed(engine, signup, noon):
    """A signup that has just been emailed a code at `noon`: (snapshot, code)."""
    snap = signup("login_info", country="KR", member_type="business")
    outcome = engine.decide(snap, "submit_email", {"email": "Member@Example.com"}, noon, rng=Random(7))
    assert outcome.applied and outcome.target == "email_verification"
    (notification,) = outcome.notifications
    snap = signup("email_verification", **outcome.context)
    return snap, notification.payload["code"]


def select_type(engine, snap, now, **data):
    return engine.decide(snap, "select_type", {"country": "KR", "member_type": "individual", **data}, now)


# ── country_supported, member_type_valid ─────────────────────────────────────────────────────


@pytest.mark.parametrize("country", ["KR", "US", "JP"])
def test_country_supported_allows_served_countries(engine, signup, noon, country):
    outcome = select_type(engine, signup("type_selection"), noon, country=country, member_type="business")
    assert outcome.applied and outcome.target == "login_info"
    assert outcome.context["country"] == country


def test_country_supported_denies_other_countries(engine, signup, noon, denied_by):
    outcome = select_type(engine, signup("type_selection"), noon, country="KP", member_type="business")
    denied_by(outcome, "country_supported")


@pytest.mark.parametrize("member_type", ["individual", "business"])
def test_member_type_valid_allows_individual_and_business(engine, signup, noon, member_type):
    outcome = select_type(
        engine, signup("type_selection"), noon, member_type=member_type, birth_date="1990-01-01"
    )
    assert outcome.applied


def test_member_type_valid_denies_other_types(engine, signup, noon, denied_by):
    outcome = select_type(engine, signup("type_selection"), noon, member_type="student")
    denied_by(outcome, "member_type_valid")


# ── min_age ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.cases("min_age")
def test_min_age_on_the_19th_birthday_in_kst(engine, signup, denied_by, case):
    outcome = select_type(
        engine, signup("type_selection"), parse_instant(case["now"]), birth_date=case["birth_date"]
    )
    if case["allowed"]:
        assert outcome.applied and outcome.context["birth_date"] == case["birth_date"]
    else:
        denied_by(outcome, "min_age")
        assert "19" in outcome.reasons[0].ko and "19" in outcome.reasons[0].en


def test_min_age_requires_a_birth_date_from_individuals(engine, signup, noon, denied_by):
    denied_by(select_type(engine, signup("type_selection"), noon), "min_age")


def test_min_age_does_not_bind_businesses(engine, signup, noon):
    assert select_type(engine, signup("type_selection"), noon, member_type="business").applied
    assert select_type(
        engine, signup("type_selection"), noon, member_type="business", birth_date="2015-01-01"
    ).applied


def test_min_age_a_malformed_birth_date_is_a_bad_request(engine, signup, noon):
    with pytest.raises(BadRequest):
        select_type(engine, signup("type_selection"), noon, birth_date="1 May 1990")


# ── email_format, email_unique ───────────────────────────────────────────────────────────────


@pytest.mark.parametrize("email", ["member@example.com", "first.last+tag@mail.example.co.kr"])
def test_email_format_allows_addresses(engine, signup, noon, email):
    outcome = engine.decide(signup("login_info"), "submit_email", {"email": email}, noon)
    assert outcome.applied and outcome.context["email"] == email.lower()


@pytest.mark.parametrize(
    "email",
    ["member", "member@", "@example.com", "member@example", "mem ber@example.com", "member@@example.com", ""],
)
def test_email_format_denies_non_addresses(engine, signup, noon, denied_by, email):
    outcome = engine.decide(signup("login_info"), "submit_email", {"email": email}, noon)
    denied_by(outcome, "email_format")
    assert outcome.notifications == ()


def test_email_unique_denies_a_taken_address(engine, snapshot, noon, denied_by):
    taken = snapshot("signup", "login_info", facts={"email_taken": True})
    outcome = engine.decide(taken, "submit_email", {"email": "member@example.com"}, noon)
    denied_by(outcome, "email_unique")
    assert outcome.notifications == ()
    free = snapshot("signup", "login_info", facts={"email_taken": False})
    assert engine.decide(free, "submit_email", {"email": "member@example.com"}, noon).applied


def test_email_unique_is_declared_as_a_fact_of_submit_email(policy):
    assert policy.definitions["signup"].facts_for("submit_email") == ("email_taken",)


def test_email_unique_fails_closed_without_the_fact(engine, snapshot, noon, denied_by):
    outcome = engine.decide(
        snapshot("signup", "login_info"), "submit_email", {"email": "member@example.com"}, noon
    )
    denied_by(outcome, "email_unique")


# ── email_code ────────────────────────────────────────────────────────────────────────────────


def test_email_code_is_emailed_and_stored_only_as_a_digest(engine, signup, noon):
    outcome = engine.decide(
        signup("login_info"), "submit_email", {"email": "Member@Example.com"}, noon, rng=Random(7)
    )
    (notification,) = outcome.notifications
    assert (notification.template, notification.channel) == ("email_verification", "email")
    assert notification.recipient == "member@example.com"
    code = notification.payload["code"]
    assert len(code) == 6 and code.isdigit()
    assert code not in str(outcome.context)
    assert parse_instant(outcome.context["email_code_expires_at"]) == noon + timedelta(minutes=10)
    same = engine.decide(
        signup("login_info"), "submit_email", {"email": "m@example.com"}, noon, rng=Random(7)
    )
    assert same.notifications[0].payload["code"] == code  # deterministic with a seeded rng


def test_email_code_accepts_the_right_code(engine, emailed, noon):
    snap, code = emailed
    outcome = engine.decide(snap, "verify_email", {"code": code}, noon + timedelta(minutes=9))
    assert outcome.applied and outcome.target == "password_setup"
    assert "email_code_hash" not in outcome.context
    assert outcome.data == {"code": REDACTED}


def test_email_code_denies_a_wrong_code_and_counts_the_attempt(engine, emailed, noon, denied_by):
    snap, code = emailed
    wrong = "000000" if code != "000000" else "111111"
    outcome = engine.decide(snap, "verify_email", {"code": wrong}, noon + timedelta(minutes=1))
    denied_by(outcome, "email_code")
    assert outcome.context["email_code_attempts"] == 1
    assert outcome.context_changed
    assert outcome.data == {"code": REDACTED}


def test_email_code_expires_at_exactly_the_ttl(engine, emailed, noon, denied_by):
    snap, code = emailed
    ttl = timedelta(minutes=10)
    just_before = engine.decide(snap, "verify_email", {"code": code}, noon + ttl - timedelta(seconds=1))
    assert just_before.applied
    at_ttl = engine.decide(snap, "verify_email", {"code": code}, noon + ttl)
    denied_by(at_ttl, "email_code")
    assert "10" in at_ttl.reasons[0].en


def test_email_code_attempts_limit_then_even_the_right_code_is_denied(
    engine, emailed, signup, noon, denied_by
):
    snap, code = emailed
    now = noon + timedelta(minutes=1)
    wrong = "000000" if code != "000000" else "111111"
    for attempt in range(1, 5):
        outcome = engine.decide(snap, "verify_email", {"code": wrong}, now)
        denied_by(outcome, "email_code")
        assert outcome.context["email_code_attempts"] == attempt
        snap = signup("email_verification", **outcome.context)
    assert engine.decide(snap, "verify_email", {"code": code}, now).applied  # 4 failures: still ok
    outcome = engine.decide(snap, "verify_email", {"code": wrong}, now)
    snap = signup("email_verification", **outcome.context)
    assert snap.context["email_code_attempts"] == 5
    denied_by(engine.decide(snap, "verify_email", {"code": code}, now), "email_code")


def test_email_code_a_new_code_replaces_the_old_one(engine, emailed, signup, noon, denied_by):
    snap, old_code = emailed
    resent = engine.decide(
        snap, "submit_email", {"email": "member@example.com"}, noon + timedelta(minutes=5), rng=Random(99)
    )
    assert resent.applied and resent.target == "email_verification"
    new_code = resent.notifications[0].payload["code"]
    assert new_code != old_code
    snap = signup("email_verification", **resent.context)
    later = noon + timedelta(minutes=14)  # the old code would have expired; the new one has not
    denied_by(engine.decide(snap, "verify_email", {"code": old_code}, later), "email_code")
    assert engine.decide(snap, "verify_email", {"code": new_code}, later).applied


# ── password_policy, password_confirmation ───────────────────────────────────────────────────


@pytest.mark.cases("password_policy")
def test_password_policy(engine, signup, noon, denied_by, case):
    password = case["password"]
    outcome = engine.decide(
        signup("password_setup"), "set_password", {"password": password, "password_confirm": password}, noon
    )
    if case["allowed"]:
        assert outcome.applied and outcome.target == "payment_method_required"
        assert verify_password(outcome.secrets["password_hash"], password)
    else:
        denied_by(outcome, "password_policy")
        assert "8" in outcome.reasons[0].ko and "16" in outcome.reasons[0].en


def test_password_is_never_returned_in_context_or_data(engine, signup, noon):
    outcome = engine.decide(
        signup("password_setup"), "set_password", {"password": STRONG, "password_confirm": STRONG}, noon
    )
    assert STRONG not in str(outcome.context) and STRONG not in str(outcome.data)
    assert outcome.data == {"password": REDACTED, "password_confirm": REDACTED}
    assert outcome.secrets["password_hash"].startswith("$argon2")


def test_password_confirmation_denies_a_mismatch(engine, signup, noon, denied_by):
    outcome = engine.decide(
        signup("password_setup"), "set_password", {"password": STRONG, "password_confirm": "Abcdef1?"}, noon
    )
    denied_by(outcome, "password_confirmation")
    assert outcome.secrets == {}


def test_password_policy_and_confirmation_both_listed(engine, signup, noon, denied_by):
    outcome = engine.decide(
        signup("password_setup"), "set_password", {"password": "short", "password_confirm": "other"}, noon
    )
    denied_by(outcome, "password_policy", "password_confirmation")


# ── immutable_profile ─────────────────────────────────────────────────────────────────────────


@pytest.fixture
def member(signup):
    return signup(
        "active",
        country="KR",
        member_type="business",
        business_number="123-45-67890",
        email="member@example.com",
    )


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"country": "US"}, id="country"),
        pytest.param({"member_type": "individual"}, id="member_type"),
        pytest.param({"business_number": "999-99-99999"}, id="business_number"),
        pytest.param({"name": "New name", "country": "JP"}, id="name-with-country"),
    ],
)
def test_immutable_profile_denies_changes(engine, member, noon, denied_by, change):
    outcome = engine.decide(member, "update_profile", change, noon)
    denied_by(outcome, "immutable_profile")
    assert outcome.context == member.context


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"name": "New name"}, id="name"),
        pytest.param({"phone": "010-1234-5678"}, id="phone"),
        pytest.param({"country": "KR", "member_type": "business", "name": "Same"}, id="unchanged-fields"),
    ],
)
def test_immutable_profile_allows_other_fields(engine, member, noon, change):
    outcome = engine.decide(member, "update_profile", change, noon)
    assert outcome.applied and outcome.target == "active"
    assert outcome.context["country"] == "KR"


def test_immutable_profile_a_first_business_number_may_be_set(engine, signup, noon):
    snap = signup("active", country="KR", member_type="business")
    outcome = engine.decide(snap, "update_profile", {"business_number": "123-45-67890"}, noon)
    assert outcome.applied and outcome.context["business_number"] == "123-45-67890"


# ── the path to an active account, and abandonment ───────────────────────────────────────────


def test_signup_path_to_active(engine, signup, advance, noon):
    snap, _ = advance(
        signup("type_selection"),
        "select_type",
        {"country": "KR", "member_type": "individual", "birth_date": "1990-05-05"},
        noon,
    )
    snap, outcome = advance(snap, "submit_email", {"email": "member@example.com"}, noon, rng=Random(1))
    code = outcome.notifications[0].payload["code"]
    snap, _ = advance(snap, "verify_email", {"code": code}, noon)
    snap, outcome = advance(snap, "set_password", {"password": STRONG, "password_confirm": STRONG}, noon)
    assert snap.state == "payment_method_required"
    assert outcome.timers_cancelled == ("signup_abandoned",)
    snap, _ = advance(snap, "payment_method_registered", {"payment_method": "pm-1"}, noon)
    assert snap.state == "active" and "activated_at" in snap.context
    again, outcome = advance(
        snap, "payment_method_registered", {"payment_method": "pm-2"}, noon + timedelta(days=1)
    )
    assert again.state == "active" and again.context == snap.context  # a no-op in active
    assert outcome.timers_set == () and outcome.timers_cancelled == ()


def test_signup_abandoned_timer_is_armed_at_creation(engine, noon):
    outcome = engine.create("signup", {}, noon, instance_id="signup-1")
    assert outcome.applied and outcome.target == "type_selection"
    (timer,) = outcome.timers_set
    assert (timer.name, timer.event) == ("signup_abandoned", "expire")
    assert timer.at == datetime(2026, 12, 4, 3, 0, tzinfo=UTC)  # 72 hours later


def test_signup_abandoned_timer_is_kept_while_the_signup_advances(engine, signup, noon):
    outcome = select_type(engine, signup("type_selection"), noon, member_type="business")
    assert outcome.timers_set == () and outcome.timers_cancelled == ()


@pytest.mark.parametrize("state", ["type_selection", "login_info", "email_verification", "password_setup"])
def test_signup_abandoned_expires_unfinished_signups(engine, signup, noon, state):
    outcome = engine.decide(signup(state), "expire", {}, noon)
    assert outcome.applied and outcome.target == "expired"
    assert outcome.timers_cancelled == ("signup_abandoned",)


@pytest.mark.parametrize("state", ["payment_method_required", "active", "restricted"])
def test_signup_abandoned_does_not_expire_finished_signups(engine, signup, noon, state):
    with pytest.raises(InvalidTransition):
        engine.decide(signup(state), "expire", {}, noon)


def test_restrict_and_lift_restriction(engine, member, advance, noon):
    snap, _ = advance(member, "restrict", {"reason": "credit revoked: cryptocurrency_mining"}, noon)
    assert snap.state == "restricted"
    assert snap.context["restriction_reason"] == "credit revoked: cryptocurrency_mining"
    snap, _ = advance(snap, "lift_restriction", {}, noon)
    assert snap.state == "active" and "restriction_reason" not in snap.context
