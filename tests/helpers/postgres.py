"""PostgreSQL for the tests: the server's URL, a database of one's own (dropped after), emptying it.

`TOLLGATE_TEST_POSTGRES_URL` names the server (default: the local trust-auth `test` database).
When it does not answer, the PostgreSQL half of a test skips, saying so and how to run it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: Every test that runs on both databases: SQLite, and PostgreSQL marked `postgres`.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def postgres_base_url() -> str:
    return os.environ.get("TOLLGATE_TEST_POSTGRES_URL") or POSTGRES_URL


@contextlib.contextmanager
def fresh_postgres_database(skip: Callable[[str], NoReturn], prefix: str = "tollgate_t") -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards); `skip(reason)` when none answers."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = postgres_base_url()
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        skip(f"PostgreSQL at {base} does not answer ({' '.join(str(error).split())}); set "
             "TOLLGATE_TEST_POSTGRES_URL to run the tests on PostgreSQL too.")
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.close()


def empty_postgres(url: str) -> None:
    """Empty every table of the database at `url` but Alembic's (the schema stays)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")


def empty_database_url(request: pytest.FixtureRequest, directory: Path) -> str:
    """For a fixture parametrised by BACKENDS: a SQLite file in `directory`, or the session's
    PostgreSQL database (`postgres_database`, tests/conftest.py) emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{directory / 'tollgate.db'}"
    url: str = request.getfixturevalue("postgres_database")
    empty_postgres(url)
    return url
