"""CEL `//` line comments in rules: the CEL language definition has them (`COMMENT ::= '//'
~NEWLINE* NEWLINE`, google/cel-spec doc/langdef.md), so a policy editor may explain a guard inside
it. They were refused before (the rewriter read the words of a comment as variables)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.helpers.paths import RULES_PATH
from tollgate.service.application.policy_files import load_policy_file
from tollgate.workflows.expression_rewrite import blank_comments
from tollgate.workflows.expressions import Expression, ExpressionError, combine, compile_expression
from tollgate.workflows.guards import helper_functions

HELPERS = helper_functions(ZoneInfo("Asia/Seoul"))


def compile_(source: str) -> Expression:
    return compile_expression(source, constants={"params": {"types": ["individual", "business"]}},
                              maps=("data",), scalars=("now",), functions=HELPERS)


def test_a_commented_guard_evaluates_as_without_its_comments() -> None:
    guard = compile_("// individual or business (sole proprietor or corporation)\n"
                     "data.member_type in params.types // the two types the form offers")
    assert guard.evaluate({"data": {"member_type": "business"}}) is True
    assert guard.evaluate({"data": {"member_type": "club"}}) is False
    assert "//" not in guard.rewritten and "//" in guard.source


def test_a_trailing_comment_does_not_swallow_the_next_guard_when_combined() -> None:
    both = combine([compile_("data.age >= 19 // 만 19세"), compile_("data.member_type in params.types")])
    assert both.evaluate({"data": {"age": 20, "member_type": "individual"}}) == [True, True]
    assert both.evaluate({"data": {"age": 18, "member_type": "club"}}) == [False, False]


def test_slashes_inside_strings_are_not_comments() -> None:
    assert blank_comments('data.url == "https://x" // a comment') == 'data.url == "https://x"' + " " * 13
    assert blank_comments("r'//' // raw") == "r'//'" + " " * 7
    guard = compile_('data.url.startsWith("https://") // only secure links')
    assert guard.evaluate({"data": {"url": "https://example.com"}}) is True
    assert guard.evaluate({"data": {"url": "http://example.com"}}) is False


def test_errors_after_a_comment_keep_their_line_and_column() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_("// first line explains\ndata.age >= 19 && nobody")
    assert (caught.value.line, caught.value.column) == (2, 19)


def test_the_bundled_rules_accept_a_commented_guard(tmp_path: Path) -> None:
    text = RULES_PATH.read_text(encoding="utf-8").replace(
        '    guard: data.member_type in ["individual", "business"]\n',
        '    guard: |-\n      // 개인 or 개인 사업자/법인 사업자\n'
        '      data.member_type in ["individual", "business"] // the form\'s two choices\n')
    assert "// the form" in text
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    policy = load_policy_file(str(path))
    guards = policy.guards("signup", "select_type")
    base = {"country": "KR", "birth_date": "1990-01-01"}
    now = datetime(2026, 3, 15, 1, tzinfo=UTC)
    ok = guards.failures({"data": {**base, "member_type": "individual"}, "context": {}, "facts": {},
                          "now": now})
    bad = guards.failures({"data": {**base, "member_type": "club"}, "context": {}, "facts": {},
                           "now": now})
    assert ok == [] and [r.rule for r in bad] == ["member_type_valid"]
