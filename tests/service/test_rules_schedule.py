"""Effective-dated versions below the API: migration 0010, several workers racing at a version's
instant (the re-planning happens once, every due timer fires once), immediate activations that
re-plan at once, and `tollgate rules activate --effective-at`, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select, text

from tests.helpers.kst import kst_instant
from tests.helpers.paths import RULES_PATH
from tests.helpers.real_time import RealTime
from tollgate.service.application.runtime import Runtime
from tollgate.service.storage.db import MIGRATIONS, Database
from tollgate.service.storage.tables import history, rules_state, timers

NOW = kst_instant(2026, 11, 30, 12)
T = NOW + timedelta(days=1)
HOUR = timedelta(hours=1)




@pytest.fixture
def real_time() -> RealTime:
    return RealTime(NOW)


@pytest.fixture
def runtime(database_url: str, real_time: RealTime) -> Iterator[Runtime]:
    built = Runtime(Database(database_url), now=real_time)
    built.bootstrap(RULES_PATH)
    yield built
    built.close()


def longer(hours: int = 73) -> str:
    text_ = RULES_PATH.read_text(encoding="utf-8")
    return text_.replace("abandon_after_hours: 72 ", f"abandon_after_hours: {hours} ", 1)


def due(runtime: Runtime, instance: str) -> datetime:
    [timer] = runtime.get_instance(instance)["timers"]
    return datetime.fromisoformat(timer["at"])


def test_migration_0010_dates_existing_versions_from_their_activation(database_url: str) -> None:
    db = Database(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        db.migrate()
        with db.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0008")
        activated = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        with db.engine.begin() as conn:
            for n in (1, 2):
                conn.execute(text("INSERT INTO rules_versions (sha256, yaml, source, activated_at, "
                                  "activated_by) VALUES (:s, 'x', 'api', :t, 'admin')"),
                             {"s": str(n) * 64, "t": activated})
        db.migrate()
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, effective_at, cancelled_at FROM rules_versions "
                                     "ORDER BY id")).all()
            state = conn.execute(select(rules_state.c.generation, rules_state.c.timers_version)).one()
        assert [(r.id, r.cancelled_at) for r in rows] == [(1, None), (2, None)]
        assert all(str(r.effective_at)[:19] == "2026-01-02 03:04:05" for r in rows)
        assert tuple(state) == (1, 2)  # real-time timers were armed under the newest version
    finally:
        with db.engine.begin() as conn:  # leave the database empty and migrated for the next test
            conn.execute(text("DELETE FROM rules_versions"))
            conn.execute(text("DELETE FROM rules_state"))
        db.dispose()


def test_an_immediate_activation_replans_real_time_timers_at_once(runtime: Runtime) -> None:
    signup = runtime.create_instance("signup", {})["id"]
    assert due(runtime, signup) == NOW + 72 * HOUR
    runtime.activate_rules(longer())
    assert due(runtime, signup) == NOW + 73 * HOUR
    runtime.reactivate_rules(1)  # back to 72 hours: re-planned again, from when it was armed
    assert due(runtime, signup) == NOW + 72 * HOUR


def test_a_timer_the_new_version_would_not_arm_is_removed(runtime: Runtime) -> None:
    signup = runtime.create_instance("signup", {})["id"]
    without = RULES_PATH.read_text(encoding="utf-8").replace(
        "states: [type_selection, login_info, email_verification, password_setup]",
        "states: [login_info, email_verification, password_setup]", 1)
    runtime.activate_rules(without, effective_at=T)
    assert len(runtime.get_instance(signup)["timers"]) == 1
    runtime.now.now = T  # type: ignore[attr-defined]
    runtime.run_due_timers()
    assert runtime.get_instance(signup)["timers"] == []


@pytest.mark.parametrize("workers", [3])
def test_workers_racing_at_the_instant_replan_once_and_fire_each_timer_once(
        runtime: Runtime, database_url: str, real_time: RealTime, workers: int,
        caplog: pytest.LogCaptureFixture) -> None:
    """Signups armed at NOW under 72 hours (due NOW+72h); version 2 (73 hours) takes effect at T.
    Several workers (separate runtimes, as `tollgate worker` processes) run their timer sweeps at
    T, then at NOW+72h (nothing due: re-planned), then at NOW+73h: each signup expires once,
    judged by version 2, and the re-planning was done by one of them."""
    signups = [runtime.create_instance("signup", {})["id"] for _ in range(30)]
    runtime.activate_rules(longer(), effective_at=T)
    errors: list[BaseException] = []
    fired: list[str] = []
    lock = threading.Lock()
    clocks = [RealTime(NOW) for _ in range(workers)]
    peers = [Runtime(Database(database_url), now=clock) for clock in clocks]
    caplog.set_level(logging.INFO, logger="tollgate.timers")
    caplog.clear()

    def run(instant: datetime) -> None:
        barrier = threading.Barrier(workers)

        def worker(peer: Runtime, clock: RealTime) -> None:
            try:
                clock.now = instant
                barrier.wait()
                while True:
                    entries = peer.run_due_timers(limit=7)
                    if not entries:
                        break
                    with lock:
                        fired.extend(e["instance"] for e in entries)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=worker, args=pair) for pair in zip(peers, clocks, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    try:
        run(T)
        run(NOW + 72 * HOUR)
        assert fired == []
        run(NOW + 73 * HOUR)
    finally:
        for peer in peers:
            peer.close()
    assert not errors
    assert sorted(fired) == sorted(signups)
    replanned = [r for r in caplog.records if "real-time timers re-planned" in r.getMessage()]
    assert len(replanned) == 1
    with runtime.db.read() as conn:
        rows = conn.execute(select(history.c.instance, history.c.rules_version)
                            .where(history.c.event == "expire")).all()
        assert conn.execute(select(timers.c.instance)).all() == []
    assert sorted(r.instance for r in rows) == sorted(signups)
    assert {r.rules_version for r in rows} == {2}


def test_cli_activate_schedules_a_file(database_url: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from tollgate.service.cli import main

    runtime = Runtime(Database(database_url))
    runtime.bootstrap(RULES_PATH)
    runtime.close()
    edited = tmp_path / "rules.yaml"
    edited.write_text(longer(), encoding="utf-8")
    at = "2199-12-01T00:00:00+09:00"
    assert main(["rules", "activate", str(edited), "--database", database_url, "--effective-at", at]) == 0
    out = capsys.readouterr().out
    assert "activated as rules version 2" in out and "in effect from 2199-11-30T15:00:00+00:00" in out
    check = Runtime(Database(database_url))
    try:
        assert [(v.id, v.status) for v in check.list_rules_versions()] == [(2, "scheduled"), (1, "active")]
        assert [v.id for v in check.scheduled_rules()] == [2]
    finally:
        check.close()
    assert main(["rules", "activate", str(edited), "--database", database_url, "--effective-at",
                 "next week"]) == 2
    assert "--effective-at" in capsys.readouterr().err
    assert main(["rules", "activate", str(edited), "--database", database_url, "--effective-at",
                 "2001-01-01T00:00:00+00:00"]) == 2
    assert "not in the future" in capsys.readouterr().err


def test_a_file_scheduled_for_later_is_not_taken_for_the_active_version(
        database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A restart keeps the scheduled file scheduled; `rules activate` of the same file without
    `--effective-at` activates it now (before, the newest version by number counted as active, so
    the activation was refused as "already the active version")."""
    from tollgate.service.cli import main

    runtime = Runtime(Database(database_url))
    runtime.bootstrap(RULES_PATH)
    runtime.close()
    edited = tmp_path / "rules.yaml"
    edited.write_text(longer(), encoding="utf-8")
    assert main(["rules", "activate", str(edited), "--database", database_url, "--effective-at",
                 "2199-12-01T00:00:00+09:00"]) == 0
    restarted = Runtime(Database(database_url))
    try:
        version, imported = restarted.import_rules_file(edited)  # what a start does with the file
        assert (version.id, imported) == (1, False)
    finally:
        restarted.close()
    capsys.readouterr()
    assert main(["rules", "activate", str(edited), "--database", database_url]) == 0
    assert "activated as rules version 3" in capsys.readouterr().out
    check = Runtime(Database(database_url))
    try:
        statuses = [(v.id, v.status) for v in check.list_rules_versions()]
        assert statuses[:2] == [(3, "active"), (2, "scheduled")]
    finally:
        check.close()
