"""The API layer's fixtures: the Flask app on each database, and the HTTP test client over it
(the same `Client` the end-to-end tests use against a real server, here over WSGI).

`app`, `client` and `api` run every API test on SQLite and on PostgreSQL. PostgreSQL gets one
fresh database per session (tests/conftest.py) whose tables are emptied before each test; when
the server does not answer, the PostgreSQL half skips with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers.app import dispose_app, make_app
from tests.helpers.client import Client
from tests.helpers.kst import kst_instant
from tests.helpers.postgres import BACKENDS, empty_database_url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend (SQLite file, or the emptied PostgreSQL test database)."""
    return empty_database_url(request, tmp_path)


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    built = make_app(database_url)
    yield built
    dispose_app(built)


@pytest.fixture(scope="module", params=BACKENDS)
def module_app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app per module and backend, for read-mostly tests (don't mix with `app` in a module)."""
    built = make_app(empty_database_url(request, tmp_path_factory.mktemp("db")))
    yield built
    dispose_app(built)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def api(client: FlaskClient) -> Client:
    """The shared HTTP test client (tests/helpers/client.py) in process, as `admin` by default."""
    return Client.wsgi(client)


@pytest.fixture
def clock(api: Client) -> str:
    """A test clock at 2025-03-05 12:00 KST."""
    return api.clock(kst_instant(2025, 3, 5, 12))
