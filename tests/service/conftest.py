"""The service layer's fixtures: an empty database on each backend (a SQLite file, or the session's
PostgreSQL database emptied; its half skips with the reason when PostgreSQL does not answer).

Runtimes are built by each module over `database_url`, since modules need different ones (worker
pools, several runtimes on one database, other rules).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.helpers.postgres import BACKENDS, empty_database_url
from tollgate.service.storage.db import Database


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend (SQLite file, or the emptied PostgreSQL test database)."""
    return empty_database_url(request, tmp_path)


@pytest.fixture(params=BACKENDS)
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database with no schema at all, for the migration tests (PostgreSQL: the session's
    database with its schema dropped, then migrated again afterwards for the other tests)."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    else:
        db = Database(request.getfixturevalue("postgres_database"))
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    yield db
    if not db.is_sqlite:  # leave the shared PostgreSQL test database migrated for other tests
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        db.migrate()
    db.dispose()
