"""`tollgate rules check`: every problem printed as file:line:column path: message, exit 1; valid
rules summarised, exit 0; `TOLLGATE_RULES` read by default; a missing file reported."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.core.test_rules_check import RULES, edit
from tollgate.service.cli import main

LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<column>\d+) (?P<path>\$\S*): (?P<message>.+)$")


def test_check_command_prints_every_problem_and_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = edit(tmp_path, RULES, ('      start: "23:00"', '      start: "25:61"'),
                  ("    min_age: 19", "    min_age: nineteen"))
    assert main(["rules", "check", str(broken.path)]) == 1
    out = capsys.readouterr().out.splitlines()
    parsed = [LINE.match(line) for line in out[:-1]]
    assert all(parsed), out
    line, column = broken.position('"25:61"')
    assert parsed[1] is not None and parsed[1].groupdict() == {
        "file": str(broken.path), "line": str(line), "column": str(column),
        "path": "$.params.payment.restricted_hours.start", "message": "'25:61' is not a time HH:MM"}
    assert out[-1] == f"{broken.path}: 2 problems; the rules cannot be activated."


def test_check_command_summarises_valid_rules_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(RULES)]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(rf"{re.escape(str(RULES))}: OK — version [0-9a-f]{{12}}, \d+ rules "
                        r"\(\d+ guards, \d+ routes\), \d+ timers\n", out), out


def test_check_command_reads_tollgate_rules_by_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    broken = edit(tmp_path, RULES, ("    event: issue\n", "    event: isue\n"))
    monkeypatch.setenv("TOLLGATE_RULES", str(broken.path))
    assert main(["rules", "check"]) == 1
    assert "$.timers.invoice_issue.event" in capsys.readouterr().out


def test_check_command_on_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot be read" in capsys.readouterr().out
