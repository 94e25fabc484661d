"""The rules file at start: imported once when it changed, never over a version activated by the API.

Every server, gunicorn worker and `tollgate worker` runs `Runtime.bootstrap(rules file)` when it
starts. A `PUT /rules` must survive all of them; a file edited since its last import becomes one
new version (whatever the number of processes starting together) that records where it came from;
`tollgate rules activate PATH` imports a file on purpose.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from tests.helpers.app import make_app
from tests.helpers.client import Client
from tollgate.service.application.runtime import Runtime
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import rules_file_imports, rules_versions
from tollgate.workflows.exceptions import RulesError

ROOT = Path(__file__).resolve().parents[2]
STARTS = 4  # processes (here: runtimes on threads, each with its own connections) starting at once


@pytest.fixture
def rules_path(tmp_path: Path, rules_text: str) -> Path:
    """A deployed copy of the bundled rules.yaml that a test may edit."""
    path = tmp_path / "deployed" / "rules.yaml"
    path.parent.mkdir()
    path.write_text(rules_text, encoding="utf-8")
    return path


@pytest.fixture
def edited(rules_data: Callable[[], dict[str, Any]]) -> Callable[..., str]:
    """`edited(min_age=20)`: the bundled rules as YAML text with one parameter of signup changed."""
    def text(**signup: Any) -> str:
        data = rules_data()
        data["params"]["signup"].update(signup)
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)

    return text


@pytest.fixture
def start(database_url: str) -> Iterator[Callable[[Path], Runtime]]:
    """`start(rules_path)`: a new process's runtime over the test database, bootstrapped."""
    started: list[Runtime] = []

    def run(path: Path) -> Runtime:
        runtime = Runtime(Database(database_url))
        started.append(runtime)
        runtime.bootstrap(path)
        return runtime

    yield run
    for runtime in started:
        runtime.db.dispose()


def versions(runtime: Runtime) -> list[tuple[int, str, str, str]]:
    with runtime.db.read() as conn:
        query = select(rules_versions.c.id, rules_versions.c.sha256, rules_versions.c.source,
                       rules_versions.c.activated_by).order_by(rules_versions.c.id)
        return [tuple(row) for row in conn.execute(query)]  # type: ignore[misc]


def test_restart_keeps_the_version_activated_over_the_api(start, rules_path, edited) -> None:
    first = start(rules_path)
    api = first.activate_rules(edited(min_age=20), source="api", actor="policy_editor")
    for _ in range(3):  # a server, a worker respawned after a crash, a `tollgate worker`
        restarted = start(rules_path)
        assert restarted.active_rules().id == api.id
    assert [v[0] for v in versions(first)] == [1, api.id]
    assert first.active_rules().source == "api"


def test_changed_file_is_imported_once_with_its_path_and_digest(start, rules_path, edited) -> None:
    first = start(rules_path)
    first.activate_rules(edited(min_age=20), source="api", actor="policy_editor")
    rules_path.write_text(edited(min_age=21), encoding="utf-8")

    for _ in range(3):
        start(rules_path)

    *_, (newest, sha, source, by) = rows = versions(first)
    assert len(rows) == 3, rows
    assert source == f"file:{rules_path}"
    assert by == "startup"
    assert first.active_rules().yaml == rules_path.read_text(encoding="utf-8")
    with first.db.read() as conn:
        recorded = conn.execute(select(rules_file_imports)).all()
    assert [(r.path, r.sha256, r.version) for r in recorded] == [(str(rules_path), sha, newest)]


def test_processes_starting_together_import_a_changed_file_once(database_url, start, rules_path,
                                                                 edited) -> None:
    first = start(rules_path)
    first.activate_rules(edited(min_age=20), source="api", actor="policy_editor")
    rules_path.write_text(edited(min_age=21), encoding="utf-8")

    together = threading.Barrier(STARTS)
    runtimes = [Runtime(Database(database_url)) for _ in range(STARTS)]
    failures: list[BaseException] = []

    def boot(runtime: Runtime) -> None:
        together.wait()
        try:
            runtime.bootstrap(rules_path)
        except BaseException as error:  # reported below, with the thread's own traceback
            failures.append(error)

    threads = [threading.Thread(target=boot, args=(runtime,)) for runtime in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for runtime in runtimes:
        runtime.db.dispose()
    assert not failures, failures

    sha = first.active_rules().sha256
    imported = [v for v in versions(first) if v[1] == sha]
    assert len(imported) == 1, versions(first)
    assert imported[0][2] == f"file:{rules_path}"


def test_file_changed_back_to_the_active_text_is_recorded_not_activated_again(start, rules_path,
                                                                                edited) -> None:
    first = start(rules_path)
    api = first.activate_rules(edited(min_age=20), source="api", actor="policy_editor")
    rules_path.write_text(edited(min_age=20), encoding="utf-8")  # the editor commits what they sent
    assert start(rules_path).active_rules().id == api.id
    assert len(versions(first)) == 2


def test_a_database_from_before_the_import_record_keeps_its_api_version(start, rules_path,
                                                                         edited) -> None:
    """Upgrading: the file was imported by an older start (no import record) and replaced over
    the API since; the first start of the new code keeps the API's version."""
    first = start(rules_path)
    with first.db.transaction() as conn:
        conn.execute(rules_file_imports.delete())
        conn.execute(rules_versions.update().values(source="rules.yaml"))  # as older starts wrote it
    api = first.activate_rules(edited(min_age=20), source="rules.yaml", actor="policy_editor")
    assert start(rules_path).active_rules().id == api.id
    assert len(versions(first)) == 2


def test_operator_command_activates_the_file_even_when_unchanged(database_url, start, rules_path,
                                                                 edited) -> None:
    first = start(rules_path)
    file_version = first.active_rules()
    first.activate_rules(edited(min_age=20), source="api", actor="policy_editor")

    def activate() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tollgate", "rules", "activate", str(rules_path),
                               "--database", database_url], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, check=False)

    done = activate()
    assert done.returncode == 0, done.stderr
    active = first.active_rules()
    assert (active.id, active.sha256, active.source) == (3, file_version.sha256, f"file:{rules_path}")
    assert f"activated as rules version 3 ({file_version.sha256[:12]})" in done.stdout
    assert versions(first)[-1][3] == "cli"

    again = activate()  # already active: nothing new
    assert again.returncode == 0, again.stderr
    assert "is already the active rules version 3" in again.stdout
    assert len(versions(first)) == 3
    assert start(rules_path).active_rules().id == 3


def test_operator_command_refuses_broken_rules_with_every_problem(database_url, start, rules_path,
                                                                  edited, tmp_path) -> None:
    first = start(rules_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text(edited(min_age="nineteen", email_code_ttl_minutes=-5), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "tollgate", "rules", "activate", str(broken),
                           "--database", database_url], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1
    assert "$.params.signup.min_age" in done.stdout and "email_code_ttl_minutes" in done.stdout
    assert "2 problems; the rules cannot be activated" in done.stdout
    assert len(versions(first)) == 1


def test_every_start_logs_whether_it_imported_or_kept_the_rules(start, rules_path, edited,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tollgate.rules")
    first = start(rules_path)
    [imported] = [r.getMessage() for r in caplog.records if r.name == "tollgate.rules"]
    sha = first.active_rules().sha256
    assert f"rules file {rules_path} (sha256 {sha}) imported as rules version 1" in imported
    assert f"source file:{rules_path}" in imported

    caplog.clear()
    api = first.activate_rules(edited(min_age=20), source="api", actor="policy_editor")
    start(rules_path)
    activated, kept = [r.getMessage() for r in caplog.records if r.name == "tollgate.rules"]
    assert f"rules version 2 activated (sha256 {api.sha256}, source api, by policy_editor)" in activated
    assert f"not imported; kept rules version 2 (sha256 {api.sha256}, source api)" in kept
    assert "has not changed since its last import" in kept


def test_a_worker_restarted_while_the_file_has_problems_keeps_serving_the_active_version(
        database_url, start, rules_path, edited, caplog: pytest.LogCaptureFixture) -> None:
    first = start(rules_path)
    rules_path.write_text(edited(min_age="nineteen"), encoding="utf-8")  # an edit in progress
    with pytest.raises(RulesError):  # `tollgate serve` and `tollgate worker` refuse to start on it
        start(rules_path)

    app = make_app(database_url, RULES=str(rules_path))  # a gunicorn worker respawned after a crash
    try:
        response = Client.wsgi(app.test_client(), role=None).get("/healthz")
        assert (response.status_code, response.get_json()["rules_version"]) == (200, 1)
    finally:
        app.extensions["tollgate"].db.dispose()
    [logged] = [r for r in caplog.records if r.name == "tollgate.rules" and r.levelno == logging.ERROR]
    assert "$.params.signup.min_age" in logged.getMessage()
    assert "the active version keeps serving" in logged.getMessage()
    assert len(versions(first)) == 1


def test_a_rules_file_path_too_long_to_record_is_refused_by_name() -> None:
    from tollgate.service.application.rules_files import read_rules_file

    with pytest.raises(RulesError) as refused:
        read_rules_file("/" + "r" * 600 + ".yaml")
    [problem] = refused.value.problems
    assert "longer than 495 characters; move it to a shorter path" in problem.message
