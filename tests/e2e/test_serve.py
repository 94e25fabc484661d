"""`tollgate serve` defaults and `tollgate worker` scale-out, as processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.paths import ROOT, RULES_PATH
from tests.helpers.server import StartServer, TollgateServer, poll

pytestmark = pytest.mark.e2e


def test_without_tokens_serve_prints_one_admin_token_once_and_listens_on_loopback_only(
        start_server: StartServer) -> None:
    server = start_server("sqlite", tokens={}, host="0.0.0.0")
    output = server.output()
    [token] = re.findall(r"Authorization: Bearer (\S+)", output)
    assert "listens on 127.0.0.1 only (not 0.0.0.0)" in output
    assert f"Listening at: http://127.0.0.1:{server.port}" in output
    assert "0.0.0.0:" not in output

    server.tokens = {"admin": token}
    anonymous, admin = server.client(None), server.client("admin")
    assert anonymous.get("/instances").status_code == 401
    assert admin.get("/instances").status_code == 200
    assert admin.post("/clocks", json={"now": "2026-10-15T10:00:00+09:00"}).status_code == 201
    server.stop()
    assert server.output().count(token) == 1, "the generated token is printed once, never logged"


def _expire_at_once(tmp_path: Path) -> Path:
    data = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    data["timers"]["signup_abandoned"]["at"] = "add_hours(now, 0)"
    path = tmp_path / "rules-expire-now.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@contextlib.contextmanager
def workers(server: TollgateServer, count: int, directory: Path) -> Iterator[list[Any]]:
    """`count` `tollgate worker` processes on the server's database and rules; always stopped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    started: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(count):
            with (directory / f"worker-{n}.log").open("wb") as log:
                started.append(subprocess.Popen(
                    [sys.executable, "-m", "tollgate", "worker", "--database", server.database_url,
                     "--rules", str(server.rules), "--batch", "4", "--interval", "0.2"],
                    cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))
        yield started
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_several_workers_fire_each_due_timer_exactly_once(
        backend: str, start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(backend, rules=_expire_at_once(tmp_path), scheduler=False)
    op = server.client("operator")
    signups = [op.create("signup")["id"] for _ in range(40)]
    assert {op.instance(s)["state"] for s in signups} == {"type_selection"}  # no scheduler in serve

    with workers(server, 3, tmp_path):
        poll(lambda: all(op.instance(s)["state"] == "expired" for s in signups), timeout=120,
             what="three workers expiring 40 abandoned signups")

    for signup in signups:
        rows = op.history(signup)
        assert [(r["event"], r["outcome"], r["actor"]) for r in rows[1:]] == [("expire", "applied", "timer")]
        assert op.instance(signup)["timers"] == []
    for log in tmp_path.glob("worker-*.log"):
        assert "Traceback" not in log.read_text(encoding="utf-8"), log.read_text(encoding="utf-8")


def _spawned_workers(group: int) -> list[int]:
    """Pids of the multiprocessing children (`spawn_main`) in a server's process group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getpgid(int(entry.name)) == group and b"spawn_main" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def test_by_default_the_server_judges_a_big_clock_advance_on_a_worker_process_per_core(
        start_server: StartServer) -> None:
    from bench.billing import CHARGED_AT, CLOCK, seed_month
    from tollgate.service.application.parallel import Workers, auto_workers

    if auto_workers() < 2:
        pytest.skip("one usable core: by default the server starts no worker process")
    server = start_server("sqlite", workers=1)
    assert server.process is not None
    group = server.process.pid
    n = Workers.PARALLEL_MIN_TIMERS + 1_000  # one instant big enough for the workers
    seed_month(server.database_url, n)  # accounts, invoices and their issue timers, on clock CLOCK
    assert _spawned_workers(group) == []  # none before a big advance needs them

    advanced = server.client("operator").ok("POST", f"/clocks/{CLOCK}/advance",
                                            json={"to": CHARGED_AT.isoformat()})

    assert len(_spawned_workers(group)) == auto_workers()
    assert advanced["counts"]["issue"] == {"applied": n}
    fired, cursor = advanced["fired"], advanced["next_cursor"]
    while cursor is not None:  # the reply holds the first page; the rest is read from the history
        page = server.client("operator").ok("GET", f"/clocks/{CLOCK}/fired?cursor={cursor}")
        fired, cursor = fired + page["fired"], page["next_cursor"]
    advanced["fired"] = fired
    issued = [f for f in advanced["fired"] if f["event"] == "issue"]
    assert len(issued) == n and {f["outcome"] for f in issued} == {"applied"}
    assert len({f["instance"] for f in issued}) == n  # each invoice issued once
    assert [f["at"] for f in advanced["fired"]] == sorted(f["at"] for f in advanced["fired"])
    server.stop()
    assert _spawned_workers(group) == []  # stopped with the server
