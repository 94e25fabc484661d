"""A rules version activated over the API survives every restart, and every process serves it.

Real `tollgate serve` processes (gunicorn master and workers) and `tollgate worker` processes on
one database: `kill -HUP` of the master, `kill -9` of a worker, a stop and start of the server,
several processes starting together after the rules file changed, and two servers sharing one
PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from tests.helpers.client import Client
from tests.helpers.paths import ROOT, RULES_PATH
from tests.helpers.server import StartServer, TollgateServer, poll
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import rules_versions

pytestmark = pytest.mark.e2e

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
ON_CLOCK = "2026-10-15T10:00:00+09:00"
NINETEEN = {"country": "KR", "member_type": "individual", "birth_date": "2007-01-01"}  # on ON_CLOCK
STARTING_WORKERS = 3  # `tollgate worker` processes started with the server


def _rules(**signup: Any) -> str:
    data = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    data["params"]["signup"].update(signup)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _deployed(tmp_path: Path) -> Path:
    path = tmp_path / "deployed-rules.yaml"
    path.write_text(RULES_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def _put(server: TollgateServer, text: str) -> dict[str, Any]:
    activated: dict[str, Any] = server.client("policy_editor").ok(
        "PUT", "/rules", data=text, content_type="application/yaml")
    return activated


def _versions(database_url: str) -> list[tuple[int, str, str]]:
    """Every rules version in the database: id, sha256, source."""
    db = Database(database_url)
    try:
        with db.read() as conn:
            query = select(rules_versions.c.id, rules_versions.c.sha256, rules_versions.c.source)
            rows = conn.execute(query.order_by(rules_versions.c.id))
            return [(row.id, row.sha256, row.source) for row in rows]
    finally:
        db.dispose()


def _judged_by(op: Client, clock: str) -> tuple[str, int]:
    """Whether a 19-year-old may sign up (min_age 19 bundled, 20 in the API's version) and the
    rules version that judged it."""
    account = op.create("signup", clock=clock)["id"]
    response = op.call("POST", f"/instances/{account}/events",
                       json={"event": "select_type", "data": NINETEEN})
    assert response.status_code in (200, 422), response
    row = op.history(account)[-1]
    return row["outcome"], row["rules_version"]


def _assert_serving(server: TollgateServer, version: dict[str, Any], outcome: str) -> None:
    """Every request (spread over the server's workers) reads and judges by `version`."""
    op = server.client("operator")
    clock = op.clock(ON_CLOCK)
    for _ in range(2 * server.workers):
        assert server.client("viewer").ok("GET", "/rules")["version"] == version["version"]
        assert _judged_by(op, clock) == (outcome, version["version"])


def _gunicorn_workers(master: int) -> set[int]:
    """Pids of the master's children that finished loading the app (their scheduler thread runs)."""
    loaded = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != master:
                continue
            threads = next(line for line in (entry / "status").read_text().splitlines()
                           if line.startswith("Threads:"))
            if int(threads.split()[1]) > 1:
                loaded.add(int(entry.name))
    return loaded


def _respawned(server: TollgateServer, gone: set[int]) -> set[int]:
    """Wait until the master runs all its workers again, loaded, none of them in `gone`."""
    assert server.process is not None
    master = server.process.pid

    def ready() -> set[int]:
        workers = _gunicorn_workers(master)
        return workers if len(workers) == server.workers and not workers & gone else set()

    workers: set[int] = poll(ready, timeout=90, what=f"{server.workers} new gunicorn workers loaded")
    return workers


@pytest.mark.parametrize("backend", BACKENDS)
def test_version_put_over_the_api_survives_hup_worker_kill_and_restart(
        backend: str, start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(backend, rules=_deployed(tmp_path))
    assert server.process is not None
    before = _versions(server.database_url)
    activated = _put(server, _rules(min_age=20))
    _assert_serving(server, activated, "denied")

    first = _respawned(server, set())
    os.kill(server.process.pid, signal.SIGHUP)  # gunicorn: new workers load the app, old ones stop
    second = _respawned(server, first)
    _assert_serving(server, activated, "denied")

    killed = min(second)
    os.kill(killed, signal.SIGKILL)  # a crashed worker: the master starts another
    _respawned(server, {killed})
    _assert_serving(server, activated, "denied")

    server.stop()
    server.start()
    _assert_serving(server, activated, "denied")
    assert _versions(server.database_url) == [*before, (activated["version"], activated["sha256"], "api")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_changed_file_is_imported_once_when_a_server_and_workers_start_together(
        backend: str, start_server: StartServer, tmp_path: Path) -> None:
    rules = _deployed(tmp_path)
    server = start_server(backend, rules=rules)
    activated = _put(server, _rules(min_age=20))
    server.stop()
    changed = _rules(min_age=18)
    rules.write_text(changed, encoding="utf-8")

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    logs = [tmp_path / f"worker-{n}.log" for n in range(STARTING_WORKERS)]
    workers = []
    for log in logs:
        with log.open("wb") as handle:
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "tollgate", "worker", "--once", "--database", server.database_url,
                 "--rules", str(rules)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=handle,
                stderr=subprocess.STDOUT))
    try:
        server.start()  # its master and its two workers start while the workers do
        codes = [worker.wait(120) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert codes == [0] * STARTING_WORKERS, [log.read_text(encoding="utf-8") for log in logs]

    *_, api, imported = versions = _versions(server.database_url)
    assert api == (activated["version"], activated["sha256"], "api")
    sha = hashlib.sha256(changed.encode()).hexdigest()
    assert imported == (activated["version"] + 1, sha, f"file:{rules}")
    assert len(versions) == activated["version"] + 1
    _assert_serving(server, {"version": imported[0]}, "applied")

    server.stop()  # and once more: the file has not changed since
    server.start()
    assert _versions(server.database_url) == versions


@pytest.mark.postgres
def test_a_version_put_on_one_server_is_served_by_another_on_the_next_request(
        start_server: StartServer, tmp_path: Path) -> None:
    one = start_server("postgresql", rules=_deployed(tmp_path))
    first = _put(one, _rules(min_age=20))
    directory = tmp_path / "second-server"
    directory.mkdir()
    two = TollgateServer(one.database_url, directory, rules=one.rules, tokens=one.tokens)
    try:
        two.start()  # starting after the PUT, it keeps the API's version
        _assert_serving(two, first, "denied")
        _assert_serving(one, first, "denied")

        second = _put(two, _rules(min_age=19, email_code_max_attempts=4))
        _assert_serving(one, second, "applied")
        _assert_serving(two, second, "applied")
    finally:
        two.stop()
        print(f"── second server output ──\n{two.output()[-4000:]}")
    assert "Traceback" not in two.output()
