"""Fixtures that run a real `tollgate serve` subprocess (see tests/helpers/server.py).

`server` is one server per test module and backend (SQLite file, or a fresh PostgreSQL database
dropped afterwards; the PostgreSQL half skips with the reason when no server answers).
`start_server(backend, **options)` starts extra servers inside one test (other rules, a restart
on the same database); every server is stopped at teardown, whatever happened, and its output is
printed so that a failing test shows what the server said.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.paths import RULES_PATH
from tests.helpers.postgres import BACKENDS, fresh_postgres_database
from tests.helpers.server import StartServer, TollgateServer


@contextlib.contextmanager
def database_url(backend: str, directory: Path) -> Iterator[str]:
    """An empty database of `backend` for one server: a SQLite file, or a new PostgreSQL database."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'tollgate.db'}"
    else:
        with fresh_postgres_database(pytest.skip, prefix="tollgate_e2e") as url:
            yield url


def _report(server: TollgateServer) -> None:
    """Shown by pytest only when the test failed: what the server printed, and no tracebacks."""
    output = server.output()
    print(f"── tollgate serve output ({server.database_url.split('@')[-1]}) ──\n{output[-4000:]}")
    for sign in ("Traceback", "Unhandled"):
        assert sign not in output, f"the server logged an unexpected error:\n{output[-4000:]}"


@contextlib.contextmanager
def running(backend: str, directory: Path, **options: Any) -> Iterator[TollgateServer]:
    with database_url(backend, directory) as url:
        server = TollgateServer(url, directory, **options)
        try:
            yield server.start()
        except BaseException:
            server.stop()
            print(f"── tollgate serve output ──\n{server.output()[-4000:]}")
            raise
        server.stop()
        _report(server)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TollgateServer]:
    """A server with the bundled rules, shared by the tests of one module on one backend."""
    with running(backend, tmp_path_factory.mktemp(f"server-{backend}")) as started:
        yield started


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """`start_server(backend="sqlite", **TollgateServer options)`: a server stopped at teardown."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(backend: str = "sqlite", **options: Any) -> TollgateServer:
            nonlocal count
            count += 1
            directory = tmp_path / f"server-{count}"
            directory.mkdir()
            return stack.enter_context(running(backend, directory, **options))

        yield start


@pytest.fixture
def rules_file(tmp_path: Path) -> Callable[[Callable[[dict[str, Any]], None]], Path]:
    """`rules_file(edit)`: a copy of rules.yaml changed by `edit(data)`, written to a file."""

    def write(edit: Callable[[dict[str, Any]], None]) -> Path:
        data = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
        edit(data)
        path = tmp_path / f"rules-{abs(hash(repr(data)))}.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    return write
