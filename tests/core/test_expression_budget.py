"""The expression budget: nothing a policy editor uploads may crash, panic or freeze a worker.

Here the budget rule by rule, result types, hostile text and Rust panics turned into ordinary
errors, in process; the reproductions of issue 11 item 4 through the API, each in a subprocess,
are tests/api/test_api_expression_budget.py.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import cel
import pytest

from tests.helpers.paths import RULES_PATH
from tollgate.service.application.policy_files import check, definitions, load_policy
from tollgate.workflows.exceptions import ExpressionError, Problem, RulesError
from tollgate.workflows.expression_budget import (
    MAX_AST_NODES,
    MAX_COMPREHENSION_NESTING,
    MAX_ESTIMATED_COST,
    MAX_EXPRESSION_CHARS,
    MAX_NESTING_DEPTH,
)
from tollgate.workflows.expressions import combine, compile_expression
from tollgate.workflows.guards import GuardSet, Rule

RULES_TEXT = RULES_PATH.read_text(encoding="utf-8")
ANCHOR = "guard: data.country in params.signup.countries"  # country_supported, fired by select_type

PARENS_70000 = "(" * 70_000 + "true" + ")" * 70_000
FOUR_HUNDRED = list(range(400))  # nested over itself: ~1.28 million, over the cost budget


def with_guard(guard: str, *, big: list[int] | None = None) -> str:
    """The bundled rules with country_supported's guard replaced, and `params.big` if given."""
    text = RULES_TEXT.replace(ANCHOR, "guard: " + json.dumps(guard), 1)
    if big is not None:
        text = text.replace("\nparams:\n", f"\nparams:\n  big: {json.dumps(big)}\n", 1)
    return text


def guard_line(text: str = RULES_TEXT) -> int:
    """The line of country_supported's guard in `text`."""
    return text[:text.index("guard:", text.index("country_supported:"))].count("\n") + 1


def only(text: str) -> Problem:
    found = check(text, "rules.yaml")
    assert len(found) == 1, "\n".join(map(str, found))
    assert found[0].path == "$.rules.country_supported.guard"
    assert found[0].line == guard_line(text)
    return found[0]


# ── the budget, rule by rule (in process: the old code accepted these without crashing) ─────────


def test_a_long_operator_chain_is_refused_at_the_operator_past_the_depth_budget() -> None:
    guard = " + ".join(["1"] * (MAX_NESTING_DEPTH + 8)) + " > 0"
    problem = only(with_guard(guard))
    assert f"nested more than {MAX_NESTING_DEPTH} levels" in problem.message
    first = RULES_TEXT.splitlines()[guard_line() - 1].index("guard:") + len('guard: "') + 1
    plus = 4 * MAX_NESTING_DEPTH + 2  # the "+" whose sum would be one level too deep ("1 + " each)
    assert problem.column == first + plus


def test_deep_parentheses_are_refused_by_the_depth_budget() -> None:
    problem = only(with_guard("(" * 100 + "true" + ")" * 100))
    assert f"nested more than {MAX_NESTING_DEPTH} levels" in problem.message


def test_an_expression_over_the_character_budget_is_refused() -> None:
    problem = only(with_guard('data.country == "' + "K" * MAX_EXPRESSION_CHARS + '"'))
    assert f"at most {MAX_EXPRESSION_CHARS:,} are allowed" in problem.message


def test_an_expression_over_the_node_budget_is_refused() -> None:
    items = ", ".join(["[1]"] * (MAX_AST_NODES // 2 + 10))
    problem = only(with_guard(f"data.country in [{items}]"))
    assert f"more than {MAX_AST_NODES:,} parts" in problem.message


def test_nested_all_over_a_400_element_list_is_refused_by_its_estimated_cost() -> None:
    problem = only(with_guard("params.big.all(x, params.big.all(y, x != y || x == y))", big=FOUR_HUNDRED))
    assert "estimated cost is" in problem.message and f"{MAX_ESTIMATED_COST:,}" in problem.message


def test_map_of_map_over_a_400_element_list_is_refused_by_its_estimated_cost() -> None:
    problem = only(with_guard("size(params.big.map(x, params.big.map(y, [x, y, x + y]))) > 0",
                              big=FOUR_HUNDRED))
    assert "estimated cost is" in problem.message


def test_nested_all_over_a_thousand_element_list_is_refused_before_its_cost_is_known() -> None:
    thousand = "[" + ", ".join(map(str, range(1000))) + "]"
    problem = only(with_guard(f"{thousand}.all(x, {thousand}.all(y, x != y || x == y))"))
    assert f"at most {MAX_EXPRESSION_CHARS:,} are allowed" in problem.message
    problem = only(with_guard("params.big.all(x, params.big.all(y, x != y || x == y))",
                              big=list(range(1000))))
    assert "The parameter inlined here is too large" in problem.message


def test_comprehensions_nested_past_the_budget_are_refused() -> None:
    guard = "[1].all(a, [2].all(b, [3].all(c, a < b && b < c)))"
    problem = only(with_guard(guard))
    assert f"at most {MAX_COMPREHENSION_NESTING} are allowed" in problem.message


def test_a_comprehension_over_a_field_without_max_items_is_refused_and_names_the_fix() -> None:
    problem = only(with_guard("data.tags.all(t, t != 'spam')"))
    assert "declares no maxItems" in problem.message and "524,288" in problem.message


def test_max_items_in_the_event_data_schema_bounds_a_comprehension() -> None:
    signup = definitions()["signup"]
    event = signup.events["select_type"]
    schema = {**event.data_schema, "properties": {**event.data_schema["properties"],
                                                  "tags": {"type": "array", "maxItems": 20,
                                                           "items": {"type": "string", "maxLength": 30}}}}
    patched = {**definitions(), "signup": dataclasses.replace(
        signup, events={**signup.events, "select_type": dataclasses.replace(event, data_schema=schema)})}
    text = with_guard("data.tags.all(t, !t.contains('spam'))")
    policy = load_policy(text, "rules.yaml", patched)
    assert policy.rules["country_supported"].expression.type == "bool"
    with pytest.raises(RulesError):  # the same rule, with no bound declared
        load_policy(text, "rules.yaml")


def test_string_functions_cost_by_the_declared_max_length() -> None:
    # data.password declares maxLength 256: matches() on it is cheap; matches() on a string without
    # maxLength, 400 times, is not
    assert check(RULES_TEXT, "rules.yaml") == []
    problem = only(with_guard("params.big.all(x, data.country.matches('[A-Z]+' + string(x)))",
                              big=FOUR_HUNDRED))
    assert "declares no maxLength" in problem.message


# ── result types ───────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("guard", "kind"), [
    ("data.country", "string"),  # typed by the select_type data schema
    ("1 + 2", "int"),
    ("params.signup.min_age", "int"),  # params are inlined at load
    ("local_date(now)", "string"),
    ("'yes'", "string"),
    ("add_days(now, 1)", "timestamp"),
    ("[true]", "list"),
])
def test_a_guard_whose_result_is_not_a_boolean_is_refused_at_load(guard: str, kind: str) -> None:
    problem = only(with_guard(guard))
    article = "an" if kind[0] in "aeiou" else "a"
    assert problem.message.startswith(f"The expression gives {article} {kind}, not a bool")


@pytest.mark.parametrize("guard", ["data.country == 'KR'", "has(data.birth_date) ? true : false",
                                   "data.undeclared_field",
                                   "data.country == 'KR' && data.undeclared_field", "[1].exists(x, x > 0)"])
def test_a_guard_that_is_or_may_be_boolean_loads(guard: str) -> None:
    assert check(with_guard(guard), "rules.yaml") == []


def test_a_route_and_a_timer_must_give_what_their_kind_needs() -> None:
    text = RULES_TEXT.replace("route: context.amount_due <= 0", "route: context.usage_month", 1).replace(
        "at: ts(context.expires_at)", "at: context.account", 1).replace(
        "when: local_day(now) < params.billing.autopay_days.last", "when: local_day(now)", 1)
    messages = {p.path: p.message for p in check(text, "rules.yaml")}
    assert set(messages) == {"$.rules.nothing_due.route", "$.timers.credit_validity_ends.at",
                             "$.timers.autopay_next_day.when"}
    assert messages["$.rules.nothing_due.route"].startswith("The expression gives a string, not a bool")
    assert messages["$.timers.credit_validity_ends.at"].startswith("The expression gives a string, "
                                                                   "not a timestamp")
    assert messages["$.timers.autopay_next_day.when"].startswith("The expression gives an int, not a bool")


# ── the parser itself is safe on hostile text ────────────────────────────────────────────────────


@pytest.mark.parametrize("text", [
    "(" * 4000, "[" * 4000, "{" * 4000, "!" * 4000 + "true", "-" * 4000 + "1", "." * 4000 + "a",
    "a." * 2000, "a[" * 2000, "f(" * 2000, "{1: " * 1000, "true ? " * 580 + "1", "'''" + "\\" * 4000,
    "x.all(y, " * 500, "1 " * 2000,
], ids=lambda t: repr(t[:8]))
def test_hostile_text_under_the_character_budget_is_an_expression_error_not_a_crash(text: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(text, maps=("data",), scalars=("now",))


# ── the engine wrapper turns a Rust panic into an ordinary error ────────────────────────────────


def _panic_type() -> type[BaseException]:
    try:
        cel.compile(PARENS_70000)
    except BaseException as error:  # pyo3's PanicException is a BaseException
        return type(error)
    raise AssertionError("the engine no longer panics on 70,000 parentheses")


def test_a_rust_panic_while_compiling_becomes_an_expression_error() -> None:
    expression = compile_expression("true")
    hostile = dataclasses.replace(expression, rewritten=PARENS_70000)
    with pytest.raises(ExpressionError, match="CEL engine"):
        combine([hostile])


def test_a_rust_panic_compiling_an_event_s_guards_together_refuses_the_rules(
        monkeypatch: pytest.MonkeyPatch) -> None:
    panic, compile_ = _panic_type(), cel.compile

    def panics_on_combined(text: str) -> Any:
        if text.startswith("[("):  # workflows.expressions.combine: every guard of one event
            raise panic("Formatting argument out of range")
        return compile_(text)

    monkeypatch.setattr(cel, "compile", panics_on_combined)
    with pytest.raises(RulesError) as refused:
        load_policy(RULES_TEXT, "rules.yaml")
    assert refused.value.problems[0].path.endswith(".guard")
    assert "CEL engine" in refused.value.problems[0].message


def test_a_rust_panic_while_evaluating_fails_the_guard_instead_of_the_worker() -> None:
    panic = _panic_type()

    class Panicking:
        def execute(self, variables: dict[str, Any]) -> Any:
            raise panic("Formatting argument out of range")

    expression = dataclasses.replace(compile_expression("true"), program=Panicking(), native=None)
    rule = Rule("panics", "guard", "signup", ("select_type",), expression, "실패", "fails")
    guards = GuardSet([rule])
    assert guards.program is not None
    guards.program = dataclasses.replace(guards.program, program=Panicking(), native=None)
    [reason] = guards.failures({"data": {}})
    assert reason.rule == "panics" and reason.detail is not None and "CEL engine failed" in reason.detail
