"""Fixtures of the delivery tests: real SMTP server processes (tests/helpers/smtp_server.py) and
a self-signed certificate for their TLS; each server is stopped after its test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.smtp_server import SmtpServer, StartSmtp, self_signed_certificate


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (skips, saying why, without the openssl command)."""
    made = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    if made is None:
        pytest.skip("the openssl command is not installed: no certificate for the TLS cases")
    return made


@pytest.fixture
def start_smtp(tmp_path: Path) -> Iterator[StartSmtp]:
    """`start_smtp(**options)`: a running SMTP server process (options of `SmtpServer.start`)."""
    servers: list[SmtpServer] = []

    def start(**options: object) -> SmtpServer:
        server = SmtpServer.start(tmp_path / f"smtp{len(servers)}", **options)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
