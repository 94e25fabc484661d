"""Diagrams drawn outside the pure core: DOT rendered to SVG by Graphviz (well-formed, escaped, a
clear error without it) and the `tollgate diagram` command writing each format."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.core.test_diagrams import RULES, WORKFLOWS, hostile_diagram
from tollgate.service.application.policy_files import load_policy_file
from tollgate.service.cli import main
from tollgate.service.exceptions import DiagramUnavailable
from tollgate.service.svg import MISSING, render_svg
from tollgate.workflows.diagrams import to_dot, workflow_diagram
from tollgate.workflows.policy import Policy

SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz `dot` is not installed (Debian package graphviz)")


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy_file(RULES)


def svg_texts(svg: bytes) -> list[str]:
    """The text of every <text> element; parsing also proves the SVG is well-formed XML."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return [t.text or "" for t in root.iter(f"{SVG}text")]


@needs_dot
def test_dot_labels_are_escaped_and_survive_graphviz() -> None:
    texts = svg_texts(render_svg(to_dot(hostile_diagram())))
    assert 'odd "name" {x}' in texts
    assert any('pay;now: #1 %% "q" <b> {c} [*] --> x\\n' in t for t in texts), texts


@needs_dot
@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_dot_renders_with_graphviz_into_well_formed_svg(policy: Policy, workflow: str) -> None:
    diagram = workflow_diagram(policy, workflow, highlight=policy.definitions[workflow].initial)
    texts = svg_texts(render_svg(to_dot(diagram)))
    for state in policy.definitions[workflow].state_names:
        assert state in texts


def test_svg_without_graphviz_says_what_to_install() -> None:
    with pytest.raises(DiagramUnavailable) as caught:
        render_svg("digraph {}", dot="tollgate-no-such-dot")
    assert str(caught.value) == MISSING
    assert "apt-get install graphviz" in MISSING and caught.value.status == 503


@needs_dot
def test_svg_of_broken_dot_is_an_error() -> None:
    with pytest.raises(DiagramUnavailable, match="Graphviz `dot` failed"):
        render_svg("digraph { -> }")


# ── the command ──────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize(("fmt", "suffix", "start"), [
    ("mermaid", ".mmd", b"stateDiagram-v2\n"), ("dot", ".gv", b'digraph "invoice" {'),
    pytest.param("svg", ".svg", b"<?xml", marks=needs_dot)])
def test_cli_writes_each_format_to_a_file(tmp_path: Path, fmt: str, suffix: str, start: bytes,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"invoice{suffix}"
    argv = ["diagram", "invoice", "--format", fmt, "-o", str(out), "--state", "grace",
            "--rules", str(RULES)]
    assert main(argv) == 0
    assert out.read_bytes().startswith(start)
    assert capsys.readouterr().out == ""
    if fmt == "svg":
        assert "grace" in svg_texts(out.read_bytes())


def test_cli_takes_the_format_from_the_file_suffix(tmp_path: Path) -> None:
    out = tmp_path / "credit.dot"
    assert main(["diagram", "credit", "-o", str(out), "--rules", str(RULES)]) == 0
    assert out.read_text(encoding="utf-8").startswith('digraph "credit"')


def test_cli_prints_mermaid_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "payment_method", "--rules", str(RULES)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stateDiagram-v2\n") and "restricted_hours" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["diagram", "invoices"], "There is no workflow 'invoices'"),
    (["diagram", "invoice", "--state", "gracee"], "The invoice workflow has no state 'gracee'"),
])
def test_cli_unknown_workflow_or_state_exits_2(argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--rules", str(RULES)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err


def test_cli_diagram_with_broken_rules_lists_the_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.read_text(encoding="utf-8").replace('start: "23:00"', 'start: "25:61"'),
                     encoding="utf-8")
    assert main(["diagram", "invoice", "--rules", str(rules)]) == 1
    assert "is not a time HH:MM" in capsys.readouterr().out
