"""Schema changes go through Alembic migrations: each step upgrades a database that holds data."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import inspect, text

from tests.helpers.migrations import run_migration
from tollgate.service.storage.db import Database


def test_0002_backfills_history_seq_from_existing_history(empty_db: Database) -> None:
    run_migration(empty_db, "upgrade", "0001")
    now = datetime(2026, 11, 26, tzinfo=UTC)
    with empty_db.engine.begin() as conn:
        conn.execute(text("INSERT INTO instances (id, workflow, state, context, secrets, version, "
                          "created_at, updated_at) VALUES ('a1', 'signup', 'login_info', '{}', '{}', 2, "
                          ":t, :t)"), {"t": now})
        for seq in (1, 2, 3):
            conn.execute(text("INSERT INTO history (instance, seq, event, to_state, outcome, reasons, notes, "
                              "data, at, rules_version, actor) VALUES ('a1', :s, 'e', 'login_info', "
                              "'applied', '[]', '[]', '{}', :t, 1, 'test')"), {"s": seq, "t": now})
    run_migration(empty_db, "upgrade", "0002")
    with empty_db.engine.connect() as conn:
        row = conn.execute(text("SELECT history_seq, version FROM instances WHERE id = 'a1'")).one()
        assert tuple(row) == (3, 2)
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0002"


def test_downgrade_and_upgrade_again(empty_db: Database) -> None:
    empty_db.migrate()
    run_migration(empty_db, "downgrade", "0001")
    assert "history_seq" not in {c["name"] for c in inspect(empty_db.engine).get_columns("instances")}
    empty_db.migrate()
    assert "history_seq" in {c["name"] for c in inspect(empty_db.engine).get_columns("instances")}
