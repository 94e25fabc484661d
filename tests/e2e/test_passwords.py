"""A password sent to a real server is nowhere: responses, history, outbox, server output, database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.server import StartServer, TollgateServer
from sqlalchemy import create_engine, inspect, text

from service.db import normalise_url

pytestmark = pytest.mark.e2e

PASSWORD = "Qx7#vTn2!wLp"  # the one that is set: 12 characters, letters, digits and specials
MISMATCHED = "Jr4$mZk8@cYb"  # refused: the confirmation differs
TOO_SHORT = "Wq3#e"  # refused by password_policy


def database_dump(url: str) -> str:
    """Every row of every table, as text."""
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            names = inspect(conn).get_table_names()
            rows = [repr(tuple(row)) for name in names
                    for row in conn.execute(text(f'SELECT * FROM "{name}"'))]
            conn.rollback()
    finally:
        engine.dispose()
    return "\n".join(rows)


def database_files(url: str) -> Iterator[Path]:
    """The SQLite file and its WAL and shared-memory files, as far as they exist."""
    base = Path(url.removeprefix("sqlite:///"))
    yield from (p for p in (base, Path(f"{base}-wal"), Path(f"{base}-shm")) if p.exists())


def set_password(server: TollgateServer, account: str, password: str, confirm: str,
                 query: str = "", headers: dict[str, str] | None = None) -> Any:
    return server.client("operator").post(
        f"/instances/{account}/events{query}",
        {"event": "set_password", "data": {"password": password, "password_confirm": confirm}},
        headers=headers)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_password_never_appears_in_responses_history_outbox_logs_or_the_database(
        backend: str, start_server: StartServer) -> None:
    server = start_server(backend)
    op = server.client("operator")
    account = op.create("signup")["id"]
    op.fire(account, "select_type", {"country": "KR", "member_type": "business"})
    op.fire(account, "submit_email", {"email": f"{account}@example.com"})
    op.fire(account, "verify_email", {"code": op.notifications(account)[-1]["payload"]["code"]})

    responses = [
        set_password(server, account, TOO_SHORT, TOO_SHORT),
        set_password(server, account, MISMATCHED, PASSWORD),
        set_password(server, account, PASSWORD, PASSWORD, "?dry_run=true"),
        set_password(server, account, PASSWORD, PASSWORD, headers={"Idempotency-Key": f"pw-{account}"}),
        set_password(server, account, PASSWORD, PASSWORD, headers={"Idempotency-Key": f"pw-{account}"}),
        set_password(server, account, PASSWORD, PASSWORD),  # 409: already set
    ]
    assert [r.status for r in responses] == [422, 422, 200, 200, 200, 409], responses
    assert responses[4].headers.get("idempotent-replayed") == "true"
    assert op.instance(account)["state"] == "payment_method_required"
    responses += [op.get(path) for path in (
        f"/instances/{account}", f"/instances/{account}/history", "/instances?workflow=signup",
        f"/notifications?instance={account}", "/notifications")]
    attempts = [r for r in op.history(account) if r["event"] == "set_password"]
    assert [r["outcome"] for r in attempts] == ["denied", "denied", "applied"]
    for attempt in attempts:
        assert set(attempt["data"].values()) == {"[redacted]"}, attempt
    server.stop()  # flush and close everything the server writes

    secrets_ = (PASSWORD, MISMATCHED, TOO_SHORT, server.tokens["operator"], server.tokens["admin"])
    for response in responses:
        for secret in secrets_:
            assert secret.encode() not in response.body, (secret, response)
    output = server.output()
    assert f"/instances/{account}/events" in output  # the access log is there, without secrets
    for secret in secrets_:
        assert secret not in output, f"{secret!r} is in the server output"
    dump = database_dump(server.database_url)
    assert "$argon2" in dump  # stored as an argon2 hash, only
    for secret in secrets_[:3]:
        assert secret not in dump, f"{secret!r} is in the database"
    for path in database_files(server.database_url) if backend == "sqlite" else ():
        raw = path.read_bytes()
        for secret in secrets_[:3]:
            assert secret.encode() not in raw, f"{secret!r} is in {path.name}"
