"""The cel_subset fast path against the CEL engine: same value whenever it answers, else Fallback.

Differential tests: every expression is compiled once, then evaluated by its closures and by the
CEL program on the same inputs. The closures may decline (Fallback) but never disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollgate.service.application.policy_files import load_policy_file
from tollgate.workflows.cel_subset import PURE, Fallback
from tollgate.workflows.expressions import Expression, compile_expression
from tollgate.workflows.guards import helper_functions

_KST = ZoneInfo("Asia/Seoul")
_HELPERS = helper_functions(_KST)
_MAPS = ("data", "context", "account", "facts")
_INT64 = 2 ** 63


def compile_(source: str) -> Expression:
    return compile_expression(source, maps=_MAPS, scalars=("now", "x", "y"), functions=_HELPERS)


def by_cel(expression: Expression, inputs: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "value", expression.program.execute(expression.variables(inputs))
    except Exception as error:
        return "error", type(error).__name__


def by_subset(expression: Expression, inputs: dict[str, Any]) -> tuple[str, Any]:
    assert expression.native is not None
    try:
        return "value", expression.native(inputs)
    except Fallback:
        return "fallback", None


def assert_agrees(expression: Expression, inputs: dict[str, Any]) -> str:
    """The subset declines or gives CEL's value, of CEL's type; returns what the subset did."""
    kind, value = by_subset(expression, inputs)
    if kind == "fallback":
        return kind
    cel_kind, cel_value = by_cel(expression, inputs)
    assert cel_kind == "value", (expression.rewritten, inputs, value, cel_value)
    assert type(value) is type(cel_value), (expression.rewritten, inputs, value, cel_value)
    assert value == cel_value, (expression.rewritten, inputs, value, cel_value)
    return kind


# ── values: the ordinary ones of the rules and the awkward ones ──────────────────────────────────

_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=-5)), _KST, None])
_TIMES = st.builds(lambda dt, tz: dt.replace(tzinfo=tz),
                   st.datetimes(datetime(2020, 1, 1), datetime(2030, 12, 31)), _ZONES)
_WORDS = st.sampled_from(["KR", "US", "individual", "business", "credit_card", "bank_account",
                          "check_card", "personal", "corporate", "person", "mobile", "web", "a", "",
                          "2026-10", "2026-11", "1990-05-17", "2007-11-27", "23:00", "09:00",
                          "2026-11-03T14:00:00+09:00", "Ünïcödé", "한국", "\ud800", "\x00"])
SCALARS = st.one_of(
    st.none(), st.booleans(), _WORDS, st.text(max_size=6),
    st.integers(-3, 30), st.integers(-_INT64 - 2, _INT64 + 2),
    st.sampled_from([_INT64 - 1, -_INT64, _INT64, -_INT64 - 1]),
    st.floats(allow_nan=False, allow_infinity=False, width=32), _TIMES,
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["a"]), st.integers(), max_size=1),
)


# ── each operator ────────────────────────────────────────────────────────────────────────────────

OPERATORS = [
    "x == y", "x != y", "x < y", "x <= y", "x > y", "x >= y", "x + y", "x - y", "x * y",
    "x + 1", "-x", "!x", "x && y", "x || y", "x ? y : 7", "x in ['KR', 'US']", "x in [1, 2, 3]",
    "x == null", "null != y", "x in []", "(x - y) * 2 == 4", "!(x == y) || x < y",
    "local_day(x) == y", "add_months(x, y)", "length(x) >= 8", "age_on(x, y) >= 19",
    "in_daily_window(x, '23:00', '09:00')", "local_at(x, 3, '14:00') <= y", "ts(x) <= y",
    "add_days(x, 1) > y", "is_email(x)", "-9223372036854775808 == x", "\"a\\tb\" == x", "\"\\u00e9\" == x",
]


@pytest.mark.parametrize("source", OPERATORS)
def test_each_operator_is_inside_the_subset(source: str) -> None:
    assert compile_(source).native is not None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=SCALARS, y=SCALARS)
@pytest.mark.parametrize("source", OPERATORS)
def test_each_operator_agrees_with_cel(source: str, x: Any, y: Any) -> None:
    assert_agrees(compile_(source), {"x": x, "y": y})


@pytest.mark.parametrize(("source", "x", "y", "expected"), [
    ("x == y", 3, 3, True), ("x != y", "a", "b", True), ("x < y", "a", "b", True),
    ("x >= y", datetime(2026, 1, 1, 9, tzinfo=timezone(timedelta(hours=9))),
     datetime(2026, 1, 1, tzinfo=UTC), True),
    ("x == null", None, 0, True), ("x == y", None, "a", False), ("x != y", "a", None, True),
    ("x in ['KR', 'US']", "KR", 0, True), ("x in ['KR', 'US']", None, 0, False),
    ("x - y", 5000, 1000, 4000), ("x && y", False, "not a bool", False),
    ("x || y", True, "not a bool", True), ("x ? y : 7", False, "a", 7),
])
def test_the_subset_answers_ordinary_inputs_itself(source: str, x: Any, y: Any, expected: Any) -> None:
    expression = compile_(source)
    assert by_subset(expression, {"x": x, "y": y}) == ("value", expected)
    assert by_cel(expression, {"x": x, "y": y}) == ("value", expected)


@pytest.mark.parametrize(("source", "x", "y"), [
    ("x == y", 1, 1.0),                       # CEL's numeric equality across types
    ("x < y", 1.5, 2),                        # doubles
    ("x + y", _INT64 - 1, 1),                 # int64 overflow: CEL raises
    ("x == y", _INT64, 0),                    # not an int64
    ("x && y", True, 1),                      # CEL raises
    ("x && y", 1, False),                     # CEL absorbs the error: false
    ("x == y", "\ud800", "a"),                # CEL cannot hold a lone surrogate
    ("x < y", datetime(2026, 1, 1, tzinfo=_KST), datetime(2026, 1, 1, tzinfo=UTC)),
    ("x < y", datetime(2026, 1, 1), datetime(2026, 1, 2)),
    ("ts(x) <= y", "not a time", datetime(2026, 1, 1, tzinfo=UTC)),  # the helper raises
    ("x == y", [1], [1]),
])
def test_unusual_inputs_are_left_to_cel(source: str, x: Any, y: Any) -> None:
    assert by_subset(compile_(source), {"x": x, "y": y}) == ("fallback", None)


@pytest.mark.parametrize("source", [
    "size(x) == 1",                  # CEL's size counts bytes in cel 0.10.0
    "x.matches('[0-9]')", "x.startsWith('a')", "x / 2 == 1", "x % 2 == 0", "1.5 < x",
    "{'a': 1}['a'] == x", "[1, 2].exists(v, v == x)", "x[0] == 1", "b'a' == x", "r'a' == x",
    "'''a''' == x", "'\\x41' == x", "'a\\'' == x", "x in [1, 'a']", "x in y", "1u == x",
    "0x10 == x", "timestamp(x) < y", "int(x) == 1",
])
def test_what_the_subset_does_not_cover_has_no_fast_path(source: str) -> None:
    assert compile_(source).native is None


# ── the bundled rules ────────────────────────────────────────────────────────────────────────────

POLICY = load_policy_file("rules.yaml")
EXPRESSIONS = {f"rule {r.id}": r.expression for r in POLICY.rules.values()} | {
    f"timer {t.id}.{part}": expression
    for workflow in POLICY.definitions for t in POLICY.timers_of(workflow)
    for part, expression in (("at", t.at), ("when", t.when)) if expression is not None}


def test_every_bundled_expression_but_the_password_pattern_has_a_fast_path() -> None:
    slow = sorted(name for name, expression in EXPRESSIONS.items() if expression.native is None)
    assert slow == ["rule password_policy"]


@st.composite
def rule_inputs(draw: st.DrawFn, expression: Expression) -> dict[str, Any]:
    inputs: dict[str, Any] = {root: {} if draw(st.integers(0, 9)) else None for root in _MAPS}
    for binding in expression.bindings:
        if binding.field is None or inputs.get(binding.root) is None:
            continue
        if draw(st.integers(0, 5)) > 0:
            inputs[binding.root][binding.field] = draw(SCALARS)
    inputs["now"] = draw(st.one_of(_TIMES, st.just(datetime(2026, 11, 3, 14, tzinfo=UTC))))
    return inputs


@pytest.mark.parametrize("name", sorted(n for n, e in EXPRESSIONS.items() if e.native is not None))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_bundled_expression_agrees_with_cel(name: str, data: st.DataObject) -> None:
    expression = EXPRESSIONS[name]
    assert_agrees(expression, data.draw(rule_inputs(expression)))


def test_the_bundled_guards_of_a_pay_now_are_answered_without_cel() -> None:
    guards = POLICY.guards("invoice", "pay_now")
    inputs = {"data": {"amount": 5000}, "context": {"usage_month": "2026-10", "amount_due": 5000,
                                                    "paid_amount": 0},
              "account": {}, "facts": {}, "now": datetime(2026, 11, 3, 5, tzinfo=UTC)}
    assert [by_subset(r.expression, inputs) for r in guards.rules] == [("value", True)] * 2
    inputs["now"] = datetime(2026, 11, 3, 4, 59, 59, tzinfo=UTC)  # 13:59:59 KST
    assert [r.rule for r in guards.failures(inputs)] == ["pay_now_window"]


def test_the_bundled_expressions_are_answered_by_the_subset_on_ordinary_inputs() -> None:
    """Realistic values (the strings the rules compare with, small ints, UTC instants): every
    expression agrees with CEL and is answered by its closures at least some of the time."""
    import random
    import re

    rng = random.Random(20261126)
    answered = {}
    for name, expression in EXPRESSIONS.items():
        if expression.native is None:
            continue
        words = [*re.findall(r'"([^"]*)"', expression.rewritten),
                 "2026-10", "2026-11", "1990-05-17", "2026-11-20T00:00:00+09:00"]
        answered[name] = 0
        for _ in range(300):
            inputs: dict[str, Any] = {root: {} for root in _MAPS}
            for binding in expression.bindings:
                if binding.field is not None and rng.random() < 0.9:
                    inputs[binding.root][binding.field] = rng.choice(
                        [rng.choice(words), rng.randint(-2, 20), rng.random() < 0.5])
            minutes = rng.randint(0, 60 * 24 * 40)
            inputs["now"] = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=minutes)
            answered[name] += assert_agrees(expression, inputs) == "value"
    assert min(answered.values()) > 0, answered


def test_a_pure_helper_call_remembers_only_an_identical_latest_call() -> None:
    calls: list[Any] = []

    def shift(ts: Any, n: Any) -> Any:
        calls.append((ts, n))
        return ts + timedelta(days=n)

    setattr(shift, PURE, True)
    expression = compile_expression("shift(x, y)", scalars=("x", "y"), functions={"shift": shift})
    late = datetime(2026, 11, 30, 15, tzinfo=UTC)
    seoul = late.astimezone(timezone(timedelta(hours=9)))  # the same instant in another zone
    cases = [(late, 1), (late, 1), (seoul, 1), (late, 2), (late, 1), (late, True)]
    answers = [by_subset(expression, {"x": x, "y": y}) for x, y in cases]
    assert calls == [(late, 1), (seoul, 1), (late, 2), (late, 1), (late, True)]
    assert [type(n) for _, n in calls] == [int, int, int, int, bool]
    assert answers == [by_cel(expression, {"x": x, "y": y}) for x, y in cases]
    assert expression.native({"x": seoul, "y": 1}).tzinfo == seoul.tzinfo  # type: ignore[misc]


def test_an_impure_helper_is_called_every_time() -> None:
    calls: list[Any] = []
    expression = compile_expression("count(x) > 0", scalars=("x",),
                                    functions={"count": lambda x: calls.append(x) or len(calls)})
    for _ in range(3):
        assert expression.evaluate({"x": 1}) is True
    assert calls == [1, 1, 1]
