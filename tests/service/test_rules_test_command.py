"""`tollgate rules test`: scenarios run on the real runtime in memory; a failed expectation is
reported at its file:line with expected vs actual (exit 1); a bad scenario file is exit 2 with
file:line:column; `--junit` writes JUnit XML; nothing is left on disk."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT, RULES_PATH
from tollgate.service.application.scenarios import load_scenarios, run_files
from tollgate.service.cli import main

HEADER = "# yaml-language-server: $schema=../../schemas/scenario.schema.json\n"
SCENARIO = HEADER + """\
scenarios:
  - name: a check card at 23:00
    clock: "2026-09-28T23:00:00+09:00"
    steps:
      - account: {as: corp, member_type: business, with: no_payment_method}
      - create: {workflow: payment_method, as: card, context: {account: corp, channel: web}}
      - fire: {instance: card, event: select_method,
               data: {method: check_card, card_type: corporate, card_owner: corporation}}
        expect:
          denied: [restricted_hours]
          state: {card: method_selection}
  - name: an invoice issued on the 3rd
    clock: "2026-10-20T10:00:00+09:00"
    steps:
      - account: {as: minsu}
      - create: {workflow: invoice, as: oct, context: {account: minsu, usage_month: "2026-10"}}
        expect:
          timers: {oct: {invoice_issue: "2026-11-03T00:00:00+09:00"}}
"""


def write(tmp_path: Path, text: str, name: str = "scenarios.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_passing_scenarios_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SCENARIO)
    assert main(["rules", "test", str(path), "--rules", str(RULES_PATH)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"✓ {path}: a check card at 23:00"
    assert out[1] == f"✓ {path}: an invoice issued on the 3rd"
    assert out[-1].startswith("2 passed, 0 failed")


def test_a_wrong_expectation_is_reported_at_its_line_with_expected_and_actual(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (SCENARIO.replace("denied: [restricted_hours]", "denied: [individual_credit_card_only]")
            .replace('invoice_issue: "2026-11-03T00:00:00', 'invoice_issue: "2026-11-04T00:00:00'))
    path = write(tmp_path, text)
    assert main(["rules", "test", str(path), "--rules", str(RULES_PATH)]) == 1
    out = capsys.readouterr().out.splitlines()
    denied, timers = line_of(text, "denied:"), line_of(text, "timers:")
    assert out[0] == f"✗ {path}: a check card at 23:00"
    assert out[1] == (f"    {path}:{denied}: expected denied by individual_credit_card_only, "
                      "got denied by restricted_hours")
    assert out[2] == f"✗ {path}: an invoice issued on the 3rd"
    assert out[3] == (f"    {path}:{timers}: expected oct's timers invoice_issue at "
                      "2026-11-04T00:00:00+09:00, got invoice_issue at 2026-11-03T00:00:00+09:00")
    assert out[-1].startswith("0 passed, 2 failed")


def test_state_and_context_failures_name_the_instance(tmp_path: Path) -> None:
    text = SCENARIO.replace("state: {card: method_selection}",
                            "state: {card: active}\n          context: {card: {method: check_card}}")
    results = run_files([load_scenarios(write(tmp_path, text))], RULES_PATH)
    messages = [f.message for f in results[0].failures]
    assert messages == ["expected card in state active, got method_selection",
                        "expected card.method = 'check_card', got no such field (fields: account, channel)"]
    assert [f.line for f in results[0].failures] == [line_of(text, "state:"), line_of(text, "context: {card")]
    assert results[1].passed


def test_a_schema_error_is_exit_2_with_file_line_column(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = SCENARIO.replace('clock: "2026-09-28T23:00:00+09:00"', 'clock: "yesterday"').replace(
        "event: select_method,", "event: select_method, colour: red,")
    path = write(tmp_path, text)
    assert main(["rules", "test", str(path)]) == 2
    out = capsys.readouterr().out.splitlines()
    clock = line_of(text, "yesterday")
    assert out[0] == (f"{path}:{clock}:12 $.scenarios[0].clock: 'yesterday' is not an RFC 3339 date-time "
                      "with an offset; write it like 2025-03-05T12:00:00+09:00")
    colour = line_of(text, "colour")
    assert re.match(rf"{re.escape(str(path))}:{colour}:\d+ \$\.scenarios\[0\]\.steps\[2\]\.fire"
                    r"\.colour: 'colour' was unexpected here", out[1]), out
    assert out[-1] == "2 problems in scenario files; nothing was run."


def test_a_yaml_syntax_error_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "scenarios: [\n")
    assert main(["rules", "test", str(path)]) == 2
    assert capsys.readouterr().out.startswith(f"{path}:")


def test_junit_writes_valid_xml_with_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = SCENARIO.replace("denied: [restricted_hours]", "denied: [mobile_card_types]")
    path = write(tmp_path, text)
    report = tmp_path / "junit.xml"
    assert main(["rules", "test", str(path), "--rules", str(RULES_PATH), "--junit", str(report)]) == 1
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "1"
    cases = root.findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == ["a check card at 23:00", "an invoice issued on the 3rd"]
    failure = cases[0].find("failure")
    expected = f"{path}:{line_of(text, 'denied:')}: expected denied by mobile_card_types"
    assert failure is not None and expected in (failure.get("message") or "")
    assert cases[1].find("failure") is None


def test_nothing_is_left_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "policy").mkdir()
    write(tmp_path / "policy", SCENARIO)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("TOLLGATE_RULES", raising=False)
    assert main(["rules", "test", str(tmp_path / "policy")]) == 0
    assert os.listdir(work) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["policy", "scenarios.yaml", "work"]


def test_without_paths_it_runs_tests_policy_or_says_what_to_give(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["rules", "test"]) == 2
    assert "No scenario files given and there is no tests/policy/ here" in capsys.readouterr().err
    (tmp_path / "tests" / "policy").mkdir(parents=True)
    write(tmp_path / "tests" / "policy", SCENARIO)
    assert main(["rules", "test", "--rules", str(RULES_PATH)]) == 0
    assert "2 passed, 0 failed (2 scenarios in 1 files" in capsys.readouterr().out


def test_pytest_collects_each_scenario_and_fails_with_the_runners_report(tmp_path: Path) -> None:
    """tests/policy/conftest.py, run over a copy: one item per scenario, failures as file:line."""
    folder = tmp_path / "policy"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "policy" / "conftest.py", folder / "conftest.py")
    text = SCENARIO.replace("state: {card: method_selection}", "state: {card: consent}")
    path = write(folder, text)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    expected = f"{path}:{line_of(text, 'state:')}: expected card in state consent, got method_selection"
    assert expected in run.stdout
    assert "1 failed, 1 passed" in run.stdout
    text = text.replace('clock: "2026-10-20T10:00:00+09:00"', "clock: soon")
    write(folder, text)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{path}:{line_of(text, 'soon')}:12 $.scenarios[1].clock:" in run.stdout


def test_the_runner_records_what_each_scenario_exercised(tmp_path: Path) -> None:
    """The raw material of coverage: rules seen failing and holding, transitions, timers fired."""
    first, second = run_files([load_scenarios(write(tmp_path, SCENARIO))], RULES_PATH)
    assert first.seen.failed == {("restricted_hours", "select_method")}
    assert {("individual_credit_card_only", "select_method"), ("corporate_card_owner", "select_method"),
            ("min_age", "select_type")} <= first.seen.held
    assert ("restricted_hours", "select_method") not in first.seen.held
    assert ("payment_method", "method_selection", "select_method", "phone_verification") \
        not in first.seen.transitions
    assert ("signup", "type_selection", "select_type", "login_info") in first.seen.transitions
    assert first.seen.timers_fired == set() and ("restricted_hours", "select_method") in second.seen.held


def test_a_step_that_cannot_run_is_reported_at_its_line_and_invalid_events_can_be_expected(
        tmp_path: Path) -> None:
    text = HEADER + """\
scenarios:
  - name: an event out of turn, expected once and then not
    clock: "2026-03-15T10:00:00+09:00"
    steps:
      - create: {workflow: signup, as: minsu}
      - fire: {instance: minsu, event: verify_email, data: {code: "123456"}}
        expect: {invalid: true}
      - fire: {instance: minsu, event: verify_email, data: {code: "123456"}}
      - fire: {instance: minsoo, event: select_type, data: {country: KR, member_type: business}}
"""
    results = run_files([load_scenarios(write(tmp_path, text))], RULES_PATH)
    failures = results[0].failures
    assert len(failures) == 1
    assert failures[0].line == line_of(text, "fire: {instance: minsu, event: verify_email") + 2
    assert failures[0].message.startswith("the step could not run: ")
    assert "verify_email" in failures[0].message
