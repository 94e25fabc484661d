"""A password sent to a real server is nowhere: responses, history, outbox, server output, database
(also when a guard errors on it or its schema refuses it); nor is an email code shown to a viewer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, inspect, text

from tests.helpers.paths import RULES_PATH
from tests.helpers.server import StartServer, TollgateServer
from tollgate.service.storage.db import normalise_url

pytestmark = pytest.mark.e2e

PASSWORD = "Qx7#vTn2!wLp"  # the one that is set: 12 characters, letters, digits and specials
MISMATCHED = "Jr4$mZk8@cYb"  # refused: the confirmation differs
TOO_SHORT = "Wq3#e"  # refused by password_policy
PROBE = "Hv5%kRw8#q"  # 10 characters: the guard of `probe_rules` errors on it, quoting it
TOO_LONG = "Yf6&" * 70  # 280 characters: refused by the event's schema (maxLength 256)


def probe_rules(directory: Path) -> Path:
    """The bundled rules plus a guard that errors on a 10-character password (CEL's `||` absorbs
    the error for any other length), like a policy editor's careless rule."""
    rules = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    rules["rules"]["password_probe"] = {
        "workflow": "signup", "events": ["set_password"],
        "guard": "size(data.password) != 10 || ts(data.password) > now",
        "message": {"ko": "비밀번호 검사 규칙입니다.", "en": "The password probe rule."}}
    path = directory / "probe-rules.yaml"
    path.write_text(yaml.safe_dump(rules, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


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
        json={"event": "set_password", "data": {"password": password, "password_confirm": confirm}},
        headers=headers)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_password_never_appears_in_responses_history_outbox_logs_or_the_database(
        backend: str, start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(backend, rules=probe_rules(tmp_path))
    op, admin, viewer = server.client("operator"), server.client("admin"), server.client("viewer")
    account = op.create("signup")["id"]
    op.fire(account, "select_type", {"country": "KR", "member_type": "business"})
    op.fire(account, "submit_email", {"email": f"{account}@example.com"})
    code = admin.notifications(account)[-1]["payload"]["code"]  # real time: only an admin reads it
    outbox = f"/notifications?instance={account}"
    codes_seen = [viewer.get(outbox), op.get(outbox), viewer.get(f"/instances/{account}")]
    op.fire(account, "verify_email", {"code": code})

    responses = [
        set_password(server, account, TOO_LONG, TOO_LONG),
        set_password(server, account, PROBE, PROBE),
        set_password(server, account, PROBE, PROBE, "?dry_run=true"),
        set_password(server, account, TOO_SHORT, TOO_SHORT),
        set_password(server, account, MISMATCHED, PASSWORD),
        set_password(server, account, PASSWORD, PASSWORD, "?dry_run=true"),
        set_password(server, account, PASSWORD, PASSWORD, headers={"Idempotency-Key": f"pw-{account}"}),
        set_password(server, account, PASSWORD, PASSWORD, headers={"Idempotency-Key": f"pw-{account}"}),
        set_password(server, account, PASSWORD, PASSWORD),  # 409: already set
    ]
    assert [r.status_code for r in responses] == [400, 422, 200, 422, 422, 200, 200, 200, 409], responses
    assert [r["rule"] for r in responses[1].get_json()["reasons"]] == ["password_probe"]
    assert responses[2].get_json()["allowed"] is False
    assert responses[7].headers.get("idempotent-replayed") == "true"
    assert op.instance(account)["state"] == "payment_method_required"
    responses += [op.get(path) for path in (
        f"/instances/{account}", f"/instances/{account}/history", "/instances?workflow=signup",
        f"/notifications?instance={account}", "/notifications")]
    attempts = [r for r in op.history(account) if r["event"] == "set_password"]
    assert [r["outcome"] for r in attempts] == ["denied", "denied", "denied", "applied"]
    for attempt in attempts:
        assert set(attempt["data"].values()) == {"[redacted]"}, attempt
    server.stop()  # flush and close everything the server writes

    for response in codes_seen:
        assert response.status_code == 200 and code.encode() not in response.data, response
    secrets_ = (PASSWORD, MISMATCHED, TOO_SHORT, PROBE, TOO_LONG[:12], server.tokens["operator"],
                server.tokens["admin"])
    for response in responses:
        for secret in secrets_:
            assert secret.encode() not in response.data, (secret, response)
    output = server.output()
    assert f"/instances/{account}/events" in output  # the access log is there, without secrets
    for secret in secrets_:
        assert secret not in output, f"{secret!r} is in the server output"
    dump = database_dump(server.database_url)
    assert "$argon2" in dump  # stored as an argon2 hash, only
    for secret in secrets_[:5]:
        assert secret not in dump, f"{secret!r} is in the database"
    for path in database_files(server.database_url) if backend == "sqlite" else ():
        raw = path.read_bytes()
        for secret in secrets_[:5]:
            assert secret.encode() not in raw, f"{secret!r} is in {path.name}"
