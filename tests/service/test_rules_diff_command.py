"""`tollgate rules diff OLD NEW`: files or database versions compared in policy terms, with diff's
exit codes — 0 the same policy, 1 changes, 2 trouble (a bad file, an unknown version)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.paths import RULES_PATH
from tollgate.service.application.runtime import Runtime
from tollgate.service.bootstrap import build_runtime
from tollgate.service.cli import main
from tollgate.service.settings import Settings

RULES = RULES_PATH.read_text(encoding="utf-8")
EARLIER = RULES.replace('      start: "23:00"', '      start: "22:00"', 1)


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_files_with_a_change_print_it_and_exit_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = _write(tmp_path, "new.yaml", EARLIER)
    assert main(["rules", "diff", str(RULES_PATH), new]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'param payment.restricted_hours.start: "23:00" → "22:00"; read by rule restricted_hours'
    assert any(line.startswith("affected payment_method register: consent → ") for line in out)
    assert out[-1] == f"{RULES_PATH} → {new}: 1 change (1 param); 2 workflow events affected."


def test_a_cosmetic_edit_is_no_change_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cosmetic = RULES.replace('      start: "23:00"', "      start: '23:00'  # bank rule", 1).replace(
        "params:\n", "# numbers\nparams:\n", 1)
    new = _write(tmp_path, "new.yaml", cosmetic)
    assert main(["rules", "diff", str(RULES_PATH), new]) == 0
    assert capsys.readouterr().out == f"{RULES_PATH} → {new}: No policy changes.\n"


def test_json_is_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = _write(tmp_path, "new.yaml", EARLIER)
    assert main(["rules", "diff", str(RULES_PATH), new, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["changes", "timezone", "params", "rules", "timers", "affected"]
    assert report["params"][0]["path"] == "payment.restricted_hours.start"
    assert main(["rules", "diff", str(RULES_PATH), str(RULES_PATH), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changes"] == 0


def test_a_bad_file_prints_its_problems_with_positions_and_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, "bad.yaml", RULES.replace("    min_age: 19", "    min_age: nineteen", 1))
    assert main(["rules", "diff", str(RULES_PATH), bad]) == 2
    out = capsys.readouterr().out
    line = RULES.splitlines().index("    min_age: 19") + 1
    assert re.search(rf"^{re.escape(bad)}:{line}:\d+ \$\.params\.signup\.min_age: ", out, re.M), out
    assert main(["rules", "diff", str(tmp_path / "missing.yaml"), str(RULES_PATH)]) == 2
    assert "cannot be read" in capsys.readouterr().out


def test_a_version_without_a_database_file_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["rules", "diff", "1", "2", "--database", url]) == 2
    assert "There is no SQLite database file" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()  # nothing created


def test_the_help_names_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "diff", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "0 the same policy, 1 changes, 2 trouble" in text


# ── versions of a database ───────────────────────────────────────────────────────────────────

@pytest.fixture
def versions(database_url: str) -> Iterator[str]:
    """A database with version 1 (the bundled rules) and version 2 (restricted hours from 22:00)."""
    runtime: Runtime = build_runtime(Settings.from_environment(database_url=database_url), batch_workers=1)
    runtime.db.migrate()
    runtime.activate_rules(RULES, actor="policy_editor")
    runtime.activate_rules(EARLIER, actor="policy_editor")
    runtime.db.dispose()
    yield database_url


def test_versions_of_a_database(versions: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "diff", "1", "2", "--database", versions]) == 1
    assert capsys.readouterr().out.startswith('param payment.restricted_hours.start: "23:00" → "22:00"')
    assert main(["rules", "diff", "2", "1", "--database", versions, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["params"][0]["new"] == "23:00"
    assert main(["rules", "diff", "2", "2", "--database", versions]) == 0
    assert "No policy changes." in capsys.readouterr().out


def test_a_file_against_a_version_read_from_the_environment(
        versions: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", versions)
    assert main(["rules", "diff", "1", str(RULES_PATH)]) == 0
    assert main(["rules", "diff", "2", str(RULES_PATH)]) == 1
    capsys.readouterr()


def test_an_unknown_version_is_one_sentence_and_exit_2(
        versions: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "diff", "1", "9", "--database", versions]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("tollgate rules diff: There is no rules version 9 in the database; its versions "
                            "are 1 to 2.\n")
