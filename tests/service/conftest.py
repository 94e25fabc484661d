"""The service layer's fixtures: an empty database on each backend (a SQLite file, or the session's
PostgreSQL database emptied; its half skips with the reason when PostgreSQL does not answer).

Runtimes are built by each module over `database_url`, since modules need different ones (worker
pools, several runtimes on one database, other rules).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.postgres import BACKENDS, empty_database_url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend (SQLite file, or the emptied PostgreSQL test database)."""
    return empty_database_url(request, tmp_path)
