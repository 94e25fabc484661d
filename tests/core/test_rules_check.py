"""Policy checking and definition loading: every kind of broken policy is reported at the file,
line, column and JSON path where a policy editor has to fix it (the `tollgate rules check`
command that prints them: tests/service/test_rules_check_command.py).

Each case edits a copy of the real rules.yaml (or a workflow definition) as text, so the expected
line and column are computed from the edited text, not hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tollgate.service.application.policy_files import check, load_definition
from tollgate.workflows.exceptions import DefinitionError, Problem

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules.yaml"
DEFINITIONS = REPO / "workflows" / "definitions"


@dataclass(frozen=True)
class Broken:
    """An edited copy of a YAML file and where the edit landed."""

    path: Path
    text: str

    def position(self, needle: str, *, after: str = "") -> tuple[int, int]:
        """1-based (line, column) of `needle`, searching from the first `after`."""
        offset = self.text.index(needle, self.text.index(after) if after else 0)
        line = self.text.count("\n", 0, offset) + 1
        return line, offset - (self.text.rfind("\n", 0, offset) + 1) + 1


def edit(tmp_path: Path, source: Path, *edits: tuple[str, str]) -> Broken:
    """Copy `source` into tmp_path with each (old, new) text replaced once."""
    text = source.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text, f"the test's anchor {old!r} is no longer in {source.name}"
        text = text.replace(old, new, 1)
    path = tmp_path / source.name
    path.write_text(text, encoding="utf-8")
    return Broken(path, text)


def problems(broken: Broken) -> list[Problem]:
    return check(broken.text, str(broken.path))


def only(broken: Broken) -> Problem:
    found = problems(broken)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def assert_at(problem: Problem, broken: Broken, path: str, fragment: str,
              position: tuple[int, int]) -> None:
    assert problem.file == str(broken.path)
    assert problem.path == path
    assert fragment in problem.message
    assert (problem.line, problem.column) == position, str(problem)


# ── rules.yaml: each category of problem ──────────────────────────────────────────────────────

def test_yaml_syntax_error_points_at_the_bad_line(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ("timezone: Asia/Seoul", "timezone: Asia/Seoul: x"))
    line, _ = broken.position("timezone: Asia/Seoul: x")
    assert_at(only(broken), broken, "$", "YAML syntax error: mapping values are not allowed here",
              (line, len("timezone: Asia/Seoul") + 1))


def test_schema_violation_restricted_hours_start_is_not_a_time(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ('      start: "23:00"', '      start: "25:61"'))
    assert_at(only(broken), broken, "$.params.payment.restricted_hours.start",
              "'25:61' is not a time HH:MM", broken.position('"25:61"'))


def test_schema_violation_wrong_type(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ("    events: [select_type]\n    guard: data.country",
                                    "    events: [select_type]\n    enabled: maybe\n"
                                    "    guard: data.country"))
    assert_at(only(broken), broken, "$.rules.country_supported.enabled",
              "'maybe' is not of type 'boolean'", broken.position("maybe"))


def test_unknown_key_is_reported_at_the_key_itself(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ("    event: issue\n", "    event: issue\n    hour: 3\n"))
    assert_at(only(broken), broken, "$.timers.invoice_issue.hour", "'hour' was unexpected",
              broken.position("hour: 3"))


def test_expression_that_does_not_compile_points_inside_the_file(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ('guard: data.member_type in ["individual", "business"]',
                                    'guard: data.member_type in ["individual", "business"'))
    line, column = broken.position('guard: data.member_type in ["individual"')
    assert_at(only(broken), broken, "$.rules.member_type_valid.guard",
              "The expression does not compile", (line, column + len('guard: data.member_type in '
                                                                       '["individual", "business"')))


def test_unknown_variable(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ("guard: data.password == data.password_confirm",
                                    "guard: data.password == datum.password_confirm"))
    assert_at(only(broken), broken, "$.rules.password_confirmation.guard",
              "The variable 'datum' is not known", broken.position("datum"))


def test_unknown_function(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ("guard: is_email(data.email)", "guard: is_mail(data.email)"))
    assert_at(only(broken), broken, "$.rules.email_format.guard",
              "The function 'is_mail' is not known", broken.position("is_mail"))


def test_unknown_method_style_function_fails_at_load_not_at_fire_time(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ('data.password.matches("[0-9]")', 'data.password.matchez("[0-9]")'))
    assert_at(only(broken), broken, "$.rules.password_policy.guard",
              "The function 'matchez' is not known", broken.position("matchez"))


def test_unknown_params_path(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ("guard: data.country in params.signup.countries",
                                    "guard: data.country in params.signup.countriez"))
    assert_at(only(broken), broken, "$.rules.country_supported.guard",
              "The parameter 'params.signup.countriez' does not exist", broken.position("countriez"))


# Positions inside folded (`>-`) block scalars: YAML joins the lines with spaces, so a naive
# offset lands on the first line; these pin the error to the exact source line and column.
@pytest.mark.parametrize(("old", "new", "needle", "fragment", "path"), [
    pytest.param("age_on(data.birth_date, now) >=", "age_onn(data.birth_date, now) >=", "age_onn",
                 "The function 'age_onn' is not known", "$.rules.min_age.guard",
                 id="unknown-function-on-second-line"),
    pytest.param(">= params.signup.min_age)", ">= params.signup.min_agee)", "min_agee",
                 "'params.signup.min_agee' does not exist", "$.rules.min_age.guard",
                 id="unknown-param-at-line-end"),
    pytest.param("      && context.email_code_attempts <", "      && contexts.email_code_attempts <",
                 "contexts", "The variable 'contexts' is not known", "$.rules.email_code.guard",
                 id="unknown-variable-on-third-line"),
    pytest.param("context.email_code_attempts < params", "context.email_code_attempts <<< params",
                 "<< params", "does not compile", "$.rules.email_code.guard",
                 id="syntax-error-on-third-line"),
    pytest.param("context.email_code_attempts < params",
                 "(" * 40 + "context.email_code_attempts" + ")" * 40 + " < params",
                 "(" * 8 + "context.email_code_attempts", "nested more than 32 levels",
                 "$.rules.email_code.guard", id="over-the-depth-budget-on-third-line"),
])
def test_expression_errors_inside_folded_scalars_point_at_the_source(
        tmp_path: Path, old: str, new: str, needle: str, fragment: str, path: str) -> None:
    broken = edit(tmp_path, RULES, (old, new))
    assert_at(only(broken), broken, path, fragment, broken.position(needle))


@pytest.mark.parametrize("block", ["|", ">", ""], ids=["literal", "folded", "plain-multiline"])
def test_expression_errors_in_other_multiline_scalars(tmp_path: Path, block: str) -> None:
    head = f"guard: {block}\n      " if block else "guard: "
    broken = edit(tmp_path, RULES, ("guard: is_email(data.email)",
                                    f"{head}is_email(data.email)\n      && is_mail(data.email)"))
    assert_at(only(broken), broken, "$.rules.email_format.guard",
              "The function 'is_mail' is not known", broken.position("is_mail"))


def test_unknown_event_in_a_rule(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ("    events: [select_type]\n    guard: data.country",
                                    "    events: [select_typo]\n    guard: data.country"))
    assert_at(only(broken), broken, "$.rules.country_supported.events[0]",
              "The signup workflow has no event 'select_typo'", broken.position("select_typo"))


def test_route_rule_that_no_transition_uses(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ("\ntimers:\n", "  spare_route:\n    kind: route\n"
                                    "    workflow: invoice\n    route: context.amount_due > 0\n"
                                    '    message: {ko: "미사용", en: "Unused."}\n\ntimers:\n'))
    assert_at(only(broken), broken, "$.rules.spare_route",
              "The route rule 'spare_route' is not used", broken.position("spare_route:"))


def test_timer_naming_an_unknown_event(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ("    event: issue\n", "    event: isue\n"))
    assert_at(only(broken), broken, "$.timers.invoice_issue.event",
              "The invoice workflow has no event 'isue'", broken.position("isue"))


def test_timer_on_a_state_where_its_event_is_not_valid(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ("    event: issue\n    states: [open]",
                                    "    event: issue\n    states: [open, paid]"))
    assert_at(only(broken), broken, "$.timers.invoice_issue.states[1]",
              "would fire 'issue' in state 'paid', where that event is not valid",
              broken.position("paid]", after="invoice_issue:"))


@pytest.mark.parametrize(("old", "new", "path", "fragment", "needle"), [
    pytest.param("      first: 10", "      first: 3", "$.params.billing.autopay_days.first",
                 "must come after the issue day", "first: 3", id="autopay-first-not-after-issue"),
    pytest.param("      last: 14", "      last: 9", "$.params.billing.autopay_days.last",
                 "The last autopay day (9) is before the first (10)", "last: 9",
                 id="autopay-last-before-first"),
    pytest.param("      last: 14", "      last: 28", "$.params.billing.grace_deadline",
                 "is not after the overdue date", 'grace_deadline: "22:00"', id="grace-before-overdue"),
    pytest.param("      min_length: 8", "      min_length: 17", "$.params.signup.password.min_length",
                 "minimum password length is greater than the maximum", "min_length: 17",
                 id="password-min-over-max"),
])
def test_inconsistent_policy(tmp_path: Path, old: str, new: str, path: str, fragment: str,
                             needle: str) -> None:
    broken = edit(tmp_path, RULES, (old, new))
    line, column = broken.position(needle)
    assert_at(only(broken), broken, path, fragment, (line, column + needle.index(":") + 2))


def test_several_problems_are_all_reported_in_one_run(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES,
                  ("      first: 10", "      first: 3"),
                  ("guard: is_email(data.email)", "guard: is_mail(data.email)"),
                  ("    events: [select_type]\n    guard: data.country",
                   "    events: [select_typo]\n    guard: data.country"),
                  ("    event: issue\n", "    event: isue\n"))
    found = {p.path: p for p in problems(broken)}
    assert set(found) == {"$.params.billing.autopay_days.first", "$.rules.email_format.guard",
                          "$.rules.country_supported.events[0]", "$.timers.invoice_issue.event"}
    assert (found["$.rules.email_format.guard"].line,
            found["$.rules.email_format.guard"].column) == broken.position("is_mail")
    lines = [p.line or 0 for p in problems(broken)]
    assert lines == sorted(lines), "problems are listed in file order"


def test_several_schema_violations_are_all_reported(tmp_path: Path) -> None:
    broken = edit(tmp_path, RULES, ('      start: "23:00"', '      start: "25:61"'),
                  ("    issue_day: 3", "    issue_day: 31"),
                  ("    min_age: 19", "    min_age: nineteen"))
    paths = [p.path for p in problems(broken)]
    assert paths == ["$.params.signup.min_age", "$.params.payment.restricted_hours.start",
                     "$.params.billing.issue_day"]


# ── workflow definitions ─────────────────────────────────────────────────────────────────────

def definition_problems(broken: Broken) -> list[Problem]:
    with pytest.raises(DefinitionError) as caught:
        load_definition(broken.path)
    return caught.value.problems


def test_definition_unreachable_state(tmp_path: Path) -> None:
    broken = edit(tmp_path, DEFINITIONS / "invoice.yaml",
                  ("  - {name: paid,", "  - {name: limbo, description: Never entered., final: true}\n"
                                       "  - {name: paid,"))
    [problem] = definition_problems(broken)
    assert_at(problem, broken, "$.states[3]", "The state 'limbo' cannot be reached from 'open'",
              broken.position("{name: limbo"))


def test_definition_dead_end_state(tmp_path: Path) -> None:
    broken = edit(tmp_path, DEFINITIONS / "invoice.yaml",
                  ("{name: paid, description: Paid in full., final: true}",
                   "{name: paid, description: Paid in full.}"))
    [problem] = definition_problems(broken)
    assert_at(problem, broken, "$.states[3]", "The state 'paid' is a dead end",
              broken.position("{name: paid"))


def test_definition_unknown_action(tmp_path: Path) -> None:
    broken = edit(tmp_path, DEFINITIONS / "invoice.yaml",
                  ("    actions: [add_usage]", "    actions: [add_usagee]"))
    [problem] = definition_problems(broken)
    assert_at(problem, broken, "$.events.add_usage.actions[0]",
              "The action 'add_usagee' is not defined", broken.position("add_usagee"))


def test_definition_unknown_state_in_a_transition(tmp_path: Path) -> None:
    broken = edit(tmp_path, DEFINITIONS / "invoice.yaml",
                  ("{event: begin_grace, from: overdue, to: grace}",
                   "{event: begin_grace, from: overdue, to: grase}"))
    [problem] = definition_problems(broken)
    transitions = broken.text.split("\ntransitions:\n", 1)[1].splitlines()
    index = next(i for i, line in enumerate(transitions) if "to: grase" in line)
    assert_at(problem, broken, f"$.transitions[{index}].to", "The state 'grase' is not defined",
              broken.position("grase"))


BILLION_LAUGHS = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(9))


def test_an_alias_bomb_is_refused_not_expanded() -> None:
    """Nine lines of YAML aliases would expand to 9**9 values: refused with a clear problem."""
    problems = check(BILLION_LAUGHS, "bomb.yaml")
    assert len(problems) == 1
    assert "expands to more than 200,000 values through YAML aliases" in problems[0].message
    assert problems[0].file == "bomb.yaml" and problems[0].line is not None


def test_a_recursive_alias_is_refused() -> None:
    [problem] = check("timezone: &z [Asia/Seoul, *z]\n", "rec.yaml")
    assert "recursive alias" in problem.message and (problem.line, problem.path) == (1, "$")
