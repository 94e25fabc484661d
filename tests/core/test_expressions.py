"""The CEL wrapper: how rules.yaml expressions are rewritten, checked and evaluated."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from tollgate.workflows import calendar
from tollgate.workflows.expressions import ExpressionError, combine, compile_expression
from tollgate.workflows.guards import helper_functions

PARAMS = {"billing": {"issue_day": 3, "pay_now_from": "14:00"}, "countries": ["KR", "US"]}
SEOUL = ZoneInfo("Asia/Seoul")
HELPERS = helper_functions(SEOUL)


def compile_(source, **kwargs):
    kwargs.setdefault("constants", {"params": PARAMS})
    kwargs.setdefault("maps", ("data", "context"))
    kwargs.setdefault("scalars", ("now",))
    kwargs.setdefault("functions", HELPERS)
    return compile_expression(source, **kwargs)


# ── params ────────────────────────────────────────────────────────────────────────────────────


def test_params_are_inlined_as_literals():
    expression = compile_("data.day == params.billing.issue_day && data.country in params.countries")
    assert "params" not in expression.rewritten
    assert "3" in expression.rewritten and '["KR", "US"]' in expression.rewritten
    assert expression.evaluate({"data": {"day": 3, "country": "US"}}) is True
    assert expression.evaluate({"data": {"day": 3, "country": "JP"}}) is False


def test_an_unknown_parameter_is_an_error_at_its_position():
    with pytest.raises(ExpressionError) as caught:
        compile_("data.day ==\n  params.billing.issue_dya")
    assert "'params.billing.issue_dya' does not exist" in caught.value.message
    assert "issue_day" in caught.value.message  # the keys that do exist
    assert (caught.value.line, caught.value.column) == (2, 18)


def test_strings_that_look_like_params_are_left_alone():
    expression = compile_('data.label == "params.billing.nope" || data.label == \'params.x\'')
    assert '"params.billing.nope"' in expression.rewritten
    assert "'params.x'" in expression.rewritten
    assert expression.evaluate({"data": {"label": "params.x"}}) is True


# ── flattening ────────────────────────────────────────────────────────────────────────────────


def test_field_reads_and_has_become_flat_variables():
    expression = compile_("has(data.birth) && data.birth != context.birth")
    assert expression.rewritten == "data__has__birth && data__birth != context__birth"
    assert {(b.name, b.root, b.field, b.presence) for b in expression.bindings} == {
        ("data__has__birth", "data", "birth", True),
        ("data__birth", "data", "birth", False),
        ("context__birth", "context", "birth", False),
    }
    assert expression.evaluate({"data": {"birth": "1990-01-01"}, "context": {}}) is True
    assert expression.evaluate({"data": {}, "context": {}}) is False
    assert expression.variables({"data": None})["data__has__birth"] is False


def test_a_map_used_whole_is_passed_whole():
    expression = compile_("size(data) > 1")
    assert [b.field for b in expression.bindings] == [None]
    assert expression.evaluate({"data": {"a": 1, "b": 2}}) is True


def test_comprehension_variables_are_allowed():
    schemas = {"data": [{"properties": {"items": {"type": "array", "maxItems": 100}}}]}
    expression = compile_("data.items.exists(item, item > params.billing.issue_day)", schemas=schemas)
    assert expression.evaluate({"data": {"items": [1, 4]}}) is True
    assert expression.evaluate({"data": {"items": [1, 2]}}) is False


def test_only_the_helpers_an_expression_calls_are_passed():
    expression = compile_("now >= local_at(add_months(context.month, 1), 3, '14:00')")
    assert set(expression.functions) == {"local_at", "add_months"}
    assert expression.plain == ("now",)
    assert expression.evaluate({"context": {"month": "2026-10"},
                                "now": datetime(2026, 11, 3, 5, tzinfo=UTC)}) is True


# ── errors ────────────────────────────────────────────────────────────────────────────────────


def test_an_unknown_variable_is_an_error_with_line_and_column():
    with pytest.raises(ExpressionError) as caught:
        compile_("data.a == 1 &&\n    acount.country == 'KR'")
    assert "'acount' is not known" in caught.value.message
    assert "account" not in caught.value.message.split("may use:")[0]
    assert (caught.value.line, caught.value.column) == (2, 5)


def test_an_unknown_function_is_an_error_with_line_and_column():
    with pytest.raises(ExpressionError) as caught:
        compile_("data.a == 1 && locl_at(data.m, 1, '00:00') < now")
    assert "'locl_at' is not known" in caught.value.message
    assert "local_at" in caught.value.message
    assert (caught.value.line, caught.value.column) == (1, 16)


def test_a_syntax_error_is_reported_with_its_position():
    with pytest.raises(ExpressionError) as caught:
        compile_("data.a ==")
    assert caught.value.message.startswith("The expression does not compile")
    assert caught.value.line == 1


def test_an_empty_expression_is_an_error():
    with pytest.raises(ExpressionError, match="empty"):
        compile_("  ")


# ── combine ───────────────────────────────────────────────────────────────────────────────────


def test_combine_evaluates_every_expression_in_one_program():
    first = compile_("data.amount == context.due")
    second = compile_("now >= local_at(context.month, params.billing.issue_day, '14:00')")
    both = combine([first, second])
    assert both.rewritten.startswith("[(") and both.rewritten.count("),") == 1
    assert {b.name for b in both.bindings} == {"data__amount", "context__due", "context__month"}
    assert set(both.functions) == {"local_at"}
    inputs = {"data": {"amount": 5}, "context": {"due": 5, "month": "2026-11"},
              "now": datetime(2026, 11, 3, 4, 59, tzinfo=UTC)}
    assert both.evaluate(inputs) == [True, False]


# ── helpers ───────────────────────────────────────────────────────────────────────────────────


def test_memoised_helpers_answer_like_the_calendar():
    assert HELPERS["local_at"]("2027-02", 31, "22:00") == calendar.at_local("2027-02", 31, "22:00",
                                                                            SEOUL)
    assert HELPERS["local_at"]("2027-02", 31, "22:00") == HELPERS["local_at"]("2027-02", 31.0,
                                                                              "22:00")
    assert HELPERS["add_months"]("2026-12", 1) == "2027-01"
    assert HELPERS["last_day"]("2028-02") == 29


def test_memoised_helpers_raise_like_the_calendar():
    with pytest.raises(ValueError, match="not a month"):
        HELPERS["add_months"]("2026-13", 1)
    with pytest.raises(ValueError) as memo:
        HELPERS["last_day"](["2026-01"])  # unhashable: bypasses the memo
    with pytest.raises(ValueError) as plain:
        calendar.last_day(["2026-01"])  # type: ignore[arg-type]
    assert str(memo.value) == str(plain.value)
