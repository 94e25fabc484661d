"""Property-based tests: the policy's verdicts against independent reference implementations,
and invariants of the invoice lifecycle driven by its own timers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from tollgate.workflows import calendar
from tollgate.workflows.exceptions import InvalidTransition
from tollgate.workflows.outcome import Snapshot

KST = ZoneInfo("Asia/Seoul")
KST_OFFSET = timedelta(hours=9)  # Korea has kept UTC+9 without daylight saving since 1988
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.just(UTC)
)
months = st.builds(lambda y, m: f"{y:04d}-{m:02d}", st.integers(1900, 2200), st.integers(1, 12))
clock_times = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
METHODS = ("credit_card", "check_card", "bank_account")
CONSENT = {"agree_payment_info": True, "agree_recurring": True}


def kst_wall_clock(instant: datetime) -> datetime:
    """The naive KST wall-clock time of an instant, by a fixed offset (not zoneinfo)."""
    return (instant.astimezone(UTC) + KST_OFFSET).replace(tzinfo=None)


# ── restricted hours ─────────────────────────────────────────────────────────────────────────


def restricted_reference(instant: datetime, method: str) -> bool:
    """bank_account and check_card are refused from 23:00:00 to 08:59:59 KST."""
    local = kst_wall_clock(instant)
    return method in ("bank_account", "check_card") and (local.hour >= 23 or local.hour < 9)


@SETTINGS
@given(instant=instants, method=st.sampled_from(METHODS))
def test_restricted_hours_verdict_matches_reference(engine, snapshot, account, denied_by, instant, method):
    snap = snapshot(
        "payment_method",
        "consent",
        {"channel": "web", "method": method},
        account=account(state="payment_method_required"),
    )
    outcome = engine.decide(snap, "register", CONSENT, instant)
    if restricted_reference(instant, method):
        denied_by(outcome, "restricted_hours")
    else:
        assert outcome.applied


def window_reference(minute_of_day: int, start: str, end: str) -> bool:
    """Inside [start, end) on a 24-hour circle: the distance from start is less than the width."""
    to_minutes = lambda text: int(text[:2]) * 60 + int(text[3:])  # noqa: E731
    begin, finish = to_minutes(start), to_minutes(end)
    return (minute_of_day - begin) % 1440 < (finish - begin) % 1440


@SETTINGS
@given(instant=instants, start=clock_times, end=clock_times)
def test_in_daily_window_matches_reference(instant, start, end):
    local = kst_wall_clock(instant)
    expected = window_reference(local.hour * 60 + local.minute, start, end)
    assert calendar.in_daily_window(instant, start, end, KST) is expected


# ── minimum age ──────────────────────────────────────────────────────────────────────────────


def age_reference(born: date, instant: datetime) -> int:
    """Completed years on the KST date; a 29 February birthday comes on 1 March in common
    years, because (3, 1) is the first (month, day) not before (2, 29)."""
    today = kst_wall_clock(instant).date()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


birth_dates = st.one_of(
    st.dates(min_value=date(1950, 1, 1), max_value=date(2026, 12, 31)),
    st.sampled_from([date(2000, 2, 29), date(2004, 2, 29), date(2008, 2, 29), date(2012, 2, 29)]),
)


@SETTINGS
@given(born=birth_dates, instant=instants)
def test_age_on_matches_reference(born, instant):
    assert calendar.age_on(born.isoformat(), instant, KST) == age_reference(born, instant)


@SETTINGS
@given(born=birth_dates, days=st.integers(-3, 3))
def test_min_age_verdict_matches_reference_around_the_19th_birthday(engine, snapshot, denied_by, born, days):
    # Instants around the 19th birthday in KST, where the verdict flips.
    birthday = (
        born.replace(year=born.year + 19) if (born.month, born.day) != (2, 29) else date(born.year + 19, 3, 1)
    )
    instant = datetime.combine(birthday + timedelta(days=days), datetime.min.time(), tzinfo=KST)
    instant -= timedelta(seconds=1) if days <= 0 else timedelta(0)
    snap = snapshot("signup", "type_selection", {})
    data = {"country": "KR", "member_type": "individual", "birth_date": born.isoformat()}
    outcome = engine.decide(snap, "select_type", data, instant)
    if age_reference(born, instant) >= 19:
        assert outcome.applied
    else:
        denied_by(outcome, "min_age")


# ── every denial names a rule with ko and en messages ────────────────────────────────────────

card_data = st.fixed_dictionaries(
    {"method": st.sampled_from(METHODS)},
    optional={
        "card_type": st.sampled_from(["personal", "corporate"]),
        "card_owner": st.sampled_from(["person", "corporation"]),
        "named": st.booleans(),
        "issued_overseas": st.booleans(),
        "three_d_secure": st.booleans(),
    },
)
accounts = st.fixed_dictionaries(
    {
        "id": st.just("acct-1"),
        "state": st.sampled_from(["payment_method_required", "active"]),
        "country": st.sampled_from(["KR", "US", "JP"]),
        "member_type": st.sampled_from(["individual", "business"]),
        "partner": st.booleans(),
    }
)


@SETTINGS
@given(
    data=card_data,
    account=accounts,
    channel=st.sampled_from(["web", "mobile"]),
    instant=instants,
    consents=st.tuples(st.booleans(), st.booleans()),
)
def test_every_denial_names_a_rule_with_messages(
    engine, bilingual, data, account, channel, instant, consents
):
    snap = Snapshot(
        "payment_method",
        "method_selection",
        {"account": "acct-1", "channel": channel},
        id="pm-1",
        account=account,
    )
    outcome = engine.decide(snap, "select_method", data, instant)
    if not outcome.applied:
        bilingual(outcome)
        return
    assert outcome.target == "phone_verification"
    snap = Snapshot("payment_method", "consent", dict(outcome.context), id="pm-1", account=account)
    outcome = engine.decide(snap, "register", dict(zip(CONSENT, consents, strict=True)), instant)
    if outcome.applied:
        expected = "pending_support" if account["partner"] else "active"
        assert outcome.target == expected
        assert [s.event for s in outcome.sends] == ["payment_method_registered"]
    else:
        bilingual(outcome)


@SETTINGS
@given(password=st.text(max_size=24), confirm=st.one_of(st.none(), st.text(max_size=24)))
def test_every_password_denial_names_a_rule(engine, snapshot, bilingual, password, confirm):
    snap = snapshot("signup", "password_setup", {})
    data = {"password": password, "password_confirm": password if confirm is None else confirm}
    outcome = (
        engine.decide(snap, "set_password", data, datetime(2026, 12, 1, tzinfo=UTC))
        if not _would_hash(password, data["password_confirm"])
        else None
    )
    if outcome is not None:
        assert not outcome.applied
        bilingual(outcome)


def _would_hash(password: str, confirm: str) -> bool:
    """Whether the password passes every rule (then argon2 runs: too slow for 200 examples)."""
    return (
        password == confirm
        and 8 <= len(password) <= 16
        and any("A" <= c <= "Z" or "a" <= c <= "z" for c in password)
        and any("0" <= c <= "9" for c in password)
        and any(not ("A" <= c <= "Z" or "a" <= c <= "z" or "0" <= c <= "9") for c in password)
    )


# ── invoice lifecycle driven by its own timers ───────────────────────────────────────────────

credit_facts = st.lists(st.tuples(st.integers(0, 150_000), st.integers(0, 200)), max_size=3).map(
    lambda drawn: [
        {
            "id": f"credit-{i}",
            "balance": balance,
            "expires_at": (datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=days)).isoformat(),
        }
        for i, (balance, days) in enumerate(drawn)
    ]
)
CUSTOMER_EVENTS = ("add_usage", "pay_now", "deposit", "charge_succeeded", "charge_failed")


def customer_data(draw, event, context, now):
    remaining = int(context.get("amount_due", 0)) - int(context.get("paid_amount", 0))
    if event == "add_usage":
        return {"amount": draw(st.integers(0, 200_000))}
    if event == "pay_now":
        return {"amount": draw(st.sampled_from([max(remaining, 1), 1, max(remaining, 1) + 1]))}
    if event == "deposit":
        lag = timedelta(seconds=draw(st.integers(0, 6 * 3600)))
        return {
            "amount": draw(st.sampled_from([max(remaining, 1), max(remaining // 2, 1)])),
            "deposited_at": (now - lag).isoformat(),
        }
    if event == "charge_succeeded":
        return {"payment_ref": "pg-1"}
    return {"reason": "declined"}


@SETTINGS
@given(
    data=st.data(),
    usage_month=st.sampled_from(["2026-01", "2026-03", "2026-11", "2026-12", "2028-01"]),
    payable_methods=st.integers(0, 1),
    credits=credit_facts,
    usage=st.integers(0, 300_000),
)
def test_invoice_never_suspended_without_overdue_and_grace(
    engine, account, bilingual, data, usage_month, payable_methods, credits, usage
):
    """Fire the earliest due timer or a random customer event, applying each outcome as the
    service would: state ← target, context ← outcome.context, timers ← set/cancel."""
    acct = account()
    facts = {"credits": credits, "payable_methods": payable_methods}
    now = calendar.at_local(usage_month, 1, "00:00", KST)
    created = engine.create(
        "invoice", {"account": acct["id"], "usage_month": usage_month}, now, instance_id="inv-1", account=acct
    )
    state, context = created.target, {**created.context, "usage": usage}
    timers = {t.name: t for t in created.timers_set}
    visited = [state]
    for _ in range(40):
        if state == "paid" or (state == "suspended" and not timers):
            break
        earliest = min(timers.values(), key=lambda t: t.at) if timers else None
        if earliest is not None and data.draw(st.integers(0, 5), label="kind") > 0:
            del timers[earliest.name]
            now, event, event_data = max(now, earliest.at), earliest.event, {}
            timed = True
        else:
            step = timedelta(seconds=data.draw(st.integers(0, 12 * 86400), label="wait"))
            now = min(now + step, earliest.at) if earliest else now + step
            event = data.draw(st.sampled_from(CUSTOMER_EVENTS), label="event")
            event_data = customer_data(data.draw, event, context, now)
            timed = False
        snap = Snapshot("invoice", state, context, id="inv-1", account=acct, facts=facts)
        try:
            outcome = engine.decide(snap, event, event_data, now)
        except InvalidTransition:
            assert not timed, f"timer event {event} fired in {state}, where it is not valid"
            continue
        if not outcome.applied:
            bilingual(outcome)
            continue
        for name in outcome.timers_cancelled:
            timers.pop(name, None)
        timers.update({t.name: t for t in outcome.timers_set})
        assert all(t.at >= now for t in outcome.timers_set), "a timer armed in the past"
        if outcome.target == "suspended":
            assert now >= calendar.parse_instant(context["suspend_after"])
        state, context = outcome.target, dict(outcome.context)
        visited.append(state)
        if state == "paid":
            assert int(context.get("paid_amount", 0)) >= int(context["amount_due"])
            assert not timers, f"timers left on a paid invoice: {sorted(timers)}"
    note_event(f"ends {state}")
    if "suspended" in visited:
        before = visited[: visited.index("suspended")]
        assert "overdue" in before and "grace" in before
        assert before.index("overdue") < before.index("grace")


@settings(max_examples=30, deadline=None)
@given(
    usage_month=st.sampled_from(["2026-01", "2026-04", "2026-11", "2026-12", "2028-01"]),
    payable_methods=st.integers(0, 1),
)
def test_invoice_left_alone_ends_suspended_through_overdue_and_grace(
    engine, account, usage_month, payable_methods
):
    """With usage and no payment, the timers alone walk the invoice to suspension."""
    acct = account()
    facts = {"credits": [], "payable_methods": payable_methods}
    now = calendar.at_local(usage_month, 1, "00:00", KST)
    created = engine.create("invoice", {"account": "acct-1", "usage_month": usage_month}, now, account=acct)
    state, context = "open", {**created.context, "usage": 50_000}
    timers = {t.name: t for t in created.timers_set}
    visited = [state]
    while timers:
        timer = min(timers.values(), key=lambda t: t.at)
        del timers[timer.name]
        snap = Snapshot("invoice", state, context, id="inv-1", account=acct, facts=facts)
        outcome = engine.decide(snap, timer.event, {}, timer.at)
        if not outcome.applied:
            assert [r.rule for r in outcome.reasons] == ["autopay_method_available"]
            continue
        for name in outcome.timers_cancelled:
            timers.pop(name, None)
        timers.update({t.name: t for t in outcome.timers_set})
        state, context = outcome.target, dict(outcome.context)
        visited.append(state)
    billing = calendar.add_months(usage_month, 1)
    autopay_days = ["autopay"] * 5 if payable_methods else []
    assert visited == ["open", "issued", *autopay_days, "overdue", "grace", "suspended"]
    if payable_methods:
        assert calendar.parse_instant(context["suspend_after"]) == calendar.at_local(
            calendar.add_months(billing, 1), 1, "00:00", KST
        )
    else:
        assert calendar.parse_instant(context["suspend_after"]) == calendar.at_local(
            billing, 31, "22:00", KST
        ) + timedelta(hours=3)


# ── month arithmetic ─────────────────────────────────────────────────────────────────────────


@SETTINGS
@given(month=months, a=st.integers(-600, 600), b=st.integers(-600, 600))
def test_add_months_composes_and_inverts(month, a, b):
    assert calendar.add_months(calendar.add_months(month, a), b) == calendar.add_months(month, a + b)
    assert calendar.add_months(calendar.add_months(month, a), -a) == month


@SETTINGS
@given(month=months)
def test_last_day_is_the_day_before_the_next_month(month):
    following = calendar.add_months(month, 1)
    first_next = date(int(following[:4]), int(following[5:]), 1)
    assert calendar.last_day(month) == (first_next - timedelta(days=1)).day
    assert 28 <= calendar.last_day(month) <= 31


@SETTINGS
@given(instant=instants, count=st.integers(-36, 36))
def test_add_calendar_months_clamps_to_month_end_and_keeps_the_time(instant, count):
    result = calendar.add_calendar_months(instant, count, KST)
    start, end = kst_wall_clock(instant), kst_wall_clock(result)
    target = calendar.add_months(f"{start.year:04d}-{start.month:02d}", count)
    assert f"{end.year:04d}-{end.month:02d}" == target
    assert end.day == min(start.day, calendar.last_day(target))
    assert end.time() == start.time()
    if count > 0:
        assert result > instant
    elif count < 0:
        assert result < instant
