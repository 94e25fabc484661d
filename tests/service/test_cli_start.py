"""`tollgate serve` and `tollgate worker` refuse a broken rules file before they touch the database,
and pick the bundled policy when no rules file is given and none is in the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.paths import RULES_PATH
from tollgate import bundled
from tollgate.service.cli import main


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_broken_rules_file_leaves_no_database_behind(command: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOLLGATE_DATABASE_URL", raising=False)
    broken = tmp_path / "rules.yaml"
    broken.write_text(RULES_PATH.read_text(encoding="utf-8").replace("timezone:", "timezone: [", 1),
                      encoding="utf-8")
    assert main([command, "--rules", str(broken)]) == 1
    assert "the rules cannot be activated" in capsys.readouterr().out
    assert not (tmp_path / "tollgate.db").exists()


def test_the_default_rules_file_is_the_working_directory_s_else_the_bundled_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOLLGATE_RULES", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Path(bundled.default_rules_path()) == bundled.rules_path()
    (tmp_path / "rules.yaml").write_text("# mine\n", encoding="utf-8")
    assert bundled.default_rules_path() == "rules.yaml"
    monkeypatch.setenv("TOLLGATE_RULES", "/elsewhere/policy.yaml")
    assert bundled.default_rules_path() == "/elsewhere/policy.yaml"


def test_rules_init_writes_the_bundled_policy_and_refuses_to_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "rules.yaml"
    assert main(["rules", "init", str(target)]) == 0
    text = target.read_text(encoding="utf-8")
    schema_line, _, rest = text.partition("\n")
    schema = (Path(str(bundled.schemas())) / "rules.schema.json").resolve()
    assert schema_line == f"# yaml-language-server: $schema={schema.as_uri()}"
    assert rest == bundled.rules().read_text(encoding="utf-8").partition("\n")[2]
    assert main(["rules", "check", str(target)]) == 0
    target.write_text("# edited\n", encoding="utf-8")
    assert main(["rules", "init", str(target)]) == 1
    assert "--force" in capsys.readouterr().err
    assert target.read_text(encoding="utf-8") == "# edited\n"
    assert main(["rules", "init", str(target), "--force"]) == 0


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from tollgate import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tollgate {__version__}"


def test_rules_activate_without_database_uses_tollgate_database_url(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    chosen = tmp_path / "chosen.db"
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", f"sqlite:///{chosen}")
    assert main(["rules", "activate", str(RULES_PATH)]) == 0
    assert "chosen.db" in capsys.readouterr().out
    assert chosen.exists()
    assert not (tmp_path / "tollgate.db").exists()


def test_an_option_not_given_keeps_the_environment_s_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from tollgate.service.settings import Settings

    environ = {"TOLLGATE_DATABASE_URL": "sqlite:////srv/tollgate/state.db",
               "TOLLGATE_RULES": "/srv/rules.yaml"}
    settings = Settings.from_environment(environ, database_url=None, rules=None)
    assert (settings.database_url, settings.rules) == ("sqlite:////srv/tollgate/state.db", "/srv/rules.yaml")
    given = Settings.from_environment(environ, database_url="sqlite:///other.db", rules="mine.yaml")
    assert (given.database_url, given.rules) == ("sqlite:///other.db", "mine.yaml")
