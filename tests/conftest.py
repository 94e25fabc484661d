"""What every layer's tests share: the bundled rules (as text and as editable data) and the
session's PostgreSQL database, which skips with the reason when no server answers.

Each layer adds its own fixtures in its folder: tests/core (policy and engine), tests/service
(databases and runtimes), tests/api (the app and its HTTP client), tests/e2e (server processes).
Shared code that is not a fixture lives in tests/helpers. Markers are declared in pyproject.toml.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.helpers.paths import RULES_PATH
from tests.helpers.postgres import fresh_postgres_database


@pytest.fixture(scope="session")
def rules_text() -> str:
    """The bundled rules.yaml, as text."""
    return RULES_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def rules_data(rules_text: str) -> Callable[[], dict[str, Any]]:
    """A fresh, mutable copy of rules.yaml as data, for a test to edit."""
    parsed = yaml.safe_load(rules_text)
    return lambda: copy.deepcopy(parsed)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped after (`TOLLGATE_TEST_POSTGRES_URL`
    names the server); the test skips, saying why, when the server does not answer."""
    with fresh_postgres_database(pytest.skip) as url:
        yield url
