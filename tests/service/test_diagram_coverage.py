"""`tollgate diagram WORKFLOW --coverage RESULT`: the transitions a coverage result says no
scenario takes are marked (red, dashed, `✗ untested`, with a legend) in Mermaid, DOT and SVG; the
tested ones are not. The marking is the pure core's (`workflows/diagrams.py`, given the set); the
file is read by the command."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers.paths import RULES_PATH
from tollgate.service.application.policy_files import load_policy_file
from tollgate.service.application.scenario_coverage import measure
from tollgate.service.application.scenarios import Seen
from tollgate.service.cli import main
from tollgate.workflows.diagrams import UNTESTED_COLOR, UNTESTED_MARK, to_dot, to_mermaid, workflow_diagram
from tollgate.workflows.policy import Policy

SVG = "{http://www.w3.org/2000/svg}"
# The credit workflow with every transition taken but the internal `consume` (a partial use).
TAKEN = {("credit", "offered", "apply", "active"), ("credit", "active", "consume", "exhausted"),
         ("credit", "offered", "expire", "expired"), ("credit", "active", "expire", "expired"),
         ("credit", "active", "revoke", "revoked"), ("credit", "exhausted", "revoke", "revoked")}
UNTESTED = "active --> active : #10007; untested consume (otherwise, internal)"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy_file(str(RULES_PATH))


@pytest.fixture
def result(tmp_path: Path, policy: Policy) -> Path:
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps(measure(policy, [Seen(transitions=TAKEN)]).as_dict()), encoding="utf-8")
    return path


def test_mermaid_marks_the_untested_transition_and_not_the_tested_ones(policy: Policy) -> None:
    text = to_mermaid(workflow_diagram(policy, "credit", untested={("active", "active", "consume")}))
    assert f"    {UNTESTED}" in text.splitlines()
    assert "    active --> exhausted : consume (when credit_used_up)" in text.splitlines()
    assert text.count("untested") == 3  # the arrow, the count and the legend
    assert "        coverage: 1 of 7 transitions untested" in text.splitlines()


def test_dot_draws_the_untested_transition_red_and_dashed_with_a_legend(policy: Policy) -> None:
    text = to_dot(workflow_diagram(policy, "credit", untested={("active", "active", "consume")}))
    [untested] = [line for line in text.splitlines() if line.startswith('  "active" -> "active"')]
    assert f'label="{UNTESTED_MARK} consume (otherwise, internal)"' in untested
    assert f'color="{UNTESTED_COLOR}"' in untested and "style=dashed" in untested
    [tested] = [line for line in text.splitlines() if line.startswith('  "active" -> "exhausted"')]
    assert UNTESTED_COLOR not in tested and "untested" not in tested and "dashed" not in tested
    assert 'subgraph "cluster_legend"' in text


def test_without_coverage_nothing_is_marked_and_there_is_no_legend(policy: Policy) -> None:
    for text in (to_dot(workflow_diagram(policy, "credit")), to_mermaid(workflow_diagram(policy, "credit"))):
        assert "untested" not in text and "legend" not in text and "coverage" not in text
    full = to_mermaid(workflow_diagram(policy, "credit", untested=frozenset()))
    assert "every one of the 7 transitions is taken by a scenario" in full and "#10007; untested" \
        not in full.split("note left of")[0]


def test_the_command_reads_the_result_file(result: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "credit", "--coverage", str(result), "--rules", str(RULES_PATH)]) == 0
    captured = capsys.readouterr()
    assert f"    {UNTESTED}" in captured.out.splitlines()
    assert captured.err == ""


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_the_svg_shows_the_untested_mark_and_the_legend(result: Path, tmp_path: Path) -> None:
    target = tmp_path / "credit.svg"
    assert main(["diagram", "credit", "--coverage", str(result), "--rules", str(RULES_PATH),
                 "-o", str(target)]) == 0
    root = ET.fromstring(target.read_bytes())
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert f"{UNTESTED_MARK} consume (otherwise, internal)" in texts
    assert "consume (when credit_used_up)" in texts
    assert any(t.startswith(f"{UNTESTED_MARK}: no scenario takes it") for t in texts)
    strokes = [p.get("stroke") for p in root.iter(f"{SVG}path") if p.get("stroke-dasharray")]
    assert UNTESTED_COLOR in strokes


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot be read"),
    ("{not json", "is not JSON"),
    ('{"transitions": []}', "is not a coverage result of `tollgate rules test --coverage-json`"),
])
def test_a_file_that_is_not_a_coverage_result_is_exit_1_saying_why(
        tmp_path: Path, content: str | None, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "coverage.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["diagram", "credit", "--coverage", str(path), "--rules", str(RULES_PATH)]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_a_result_of_other_rules_is_used_with_a_note(
        result: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "rules.yaml"
    other.write_text(RULES_PATH.read_text(encoding="utf-8").replace("amount: 100000", "amount: 50000"),
                     encoding="utf-8")
    assert main(["diagram", "credit", "--coverage", str(result), "--rules", str(other)]) == 0
    captured = capsys.readouterr()
    assert "was measured on rules" in captured.err and f"    {UNTESTED}" in captured.out.splitlines()
