"""Secrets stay secret: no password or email code in an answer, an error, a history row, a log line
or a stored digest; read-only roles (and operators on real time) read email codes redacted."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from sqlalchemy import inspect, select, text

from tests.helpers.app import make_app
from tests.helpers.client import Client
from tests.helpers.paths import RULES_PATH
from tollgate.service.storage.tables import idempotency

PASSWORD = "Kp4#vLq9"  # 8 characters: a brute-force search of this size takes under a second
LONG_PASSWORD = "Qz#9" * 75  # 300 characters, over the schema's maxLength of 256
PROBE = "Boom#2026x"  # 10 characters: the probe guard below errors on it (and on no other password here)


def _at_password_setup(api: Client, clock: str | None = None) -> str:
    """A signup waiting for its password (the email code read by the admin)."""
    account = str(api.create("signup", **({"clock": clock} if clock else {}))["id"])
    api.fire(account, "select_type", {"country": "KR", "member_type": "business"}, role="operator")
    api.fire(account, "submit_email", {"email": f"{account}@example.com"}, role="operator")
    code = api.get(f"/notifications?instance={account}").get_json()["items"][-1]["payload"]["code"]
    api.fire(account, "verify_email", {"code": code}, role="operator")
    return account


def _set_password(api: Client, account: str, password: Any, *, query: str = "",
                  key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return api.post(f"/instances/{account}/events{query}", role="operator", headers=headers,
                    json={"event": "set_password",
                          "data": {"password": password, "password_confirm": password}})


def _database_text(app: Flask) -> str:
    """Every row of every table, as text."""
    with app.extensions["tollgate"].db.read() as conn:
        tables = inspect(conn).get_table_names()
        return "\n".join(repr(tuple(row)) for table in tables
                         for row in conn.execute(text(f'SELECT * FROM "{table}"')))


def _unkeyed_digest(path: str, password: str) -> str:
    """The fingerprint an unkeyed SHA-256 of the request would be: what an attacker computes per guess."""
    body = {"event": "set_password", "data": {"password": password, "password_confirm": password}}
    return hashlib.sha256(json.dumps(["POST", path, body], sort_keys=True, default=str).encode()).hexdigest()


def test_a_stored_idempotency_fingerprint_cannot_be_reversed_by_trying_passwords(
        api: Client, app: Flask) -> None:
    account = _at_password_setup(api)
    path = f"/instances/{account}/events"
    assert _set_password(api, account, PASSWORD, key="pw-1").status_code == 200
    with app.extensions["tollgate"].db.read() as conn:
        query = select(idempotency.c.fingerprint).where(idempotency.c.key == "pw-1")
        stored = conn.execute(query).scalar_one()
    guesses = [PASSWORD[:-1] + c for c in "0123456789"] + [PASSWORD, PASSWORD.lower(), PASSWORD.upper()]
    assert stored not in {_unkeyed_digest(path, guess) for guess in guesses}, "the right guess finds it"
    assert PASSWORD not in _database_text(app)
    # keyed, the fingerprint still tells a replay from another password under the same key
    replay = _set_password(api, account, PASSWORD, key="pw-1")
    assert (replay.status_code, replay.headers.get("Idempotent-Replayed")) == (200, "true")
    assert _set_password(api, account, "Other#2026", key="pw-1").status_code == 409


@pytest.mark.parametrize("password", [LONG_PASSWORD, 12345678901234], ids=["300_characters", "a_number"])
def test_a_password_refused_by_its_schema_is_not_echoed_in_the_400(api: Client, password: Any) -> None:
    account = _at_password_setup(api)
    response = _set_password(api, account, password)
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["errors"][0]["path"] == "$.password"
    answer = response.get_data(as_text=True)
    shown = str(password)
    assert not any(shown[i:i + 6] in answer for i in range(len(shown) - 5)), answer
    assert ("256" if isinstance(password, str) else "'string'") in body["detail"]  # still says what is wrong


@pytest.fixture
def probe_app(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    """The bundled rules plus a guard on set_password that errors, quoting it, on a 10-character
    password such as PROBE (CEL's `||` absorbs the error when the left side holds)."""
    rules = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    rules["rules"]["password_probe"] = {
        "workflow": "signup", "events": ["set_password"],
        "guard": "size(data.password) != 10 || ts(data.password) > now",
        "message": {"ko": "비밀번호 검사 규칙입니다.", "en": "The password probe rule."}}
    path = tmp_path / "probe-rules.yaml"
    path.write_text(yaml.safe_dump(rules, allow_unicode=True, sort_keys=False), encoding="utf-8")
    app = make_app(database_url, RULES=str(path))
    yield app
    app.extensions["tollgate"].db.dispose()


def test_a_guard_erring_on_the_password_keeps_it_out_of_reasons_history_and_logs(
        probe_app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    api = Client.wsgi(probe_app.test_client())
    account = _at_password_setup(api)
    with caplog.at_level(logging.WARNING):
        dry_run = _set_password(api, account, PROBE, query="?dry_run=true")
        denied = _set_password(api, account, PROBE)
    assert dry_run.status_code == 200 and dry_run.get_json()["allowed"] is False
    assert denied.status_code == 422
    [reason] = denied.get_json()["reasons"]
    assert reason["rule"] == "password_probe" and "could not be evaluated" in reason["detail"]
    history = api.get(f"/instances/{account}/history", role="viewer")
    assert history.get_json()["items"][-1]["reasons"][0]["rule"] == "password_probe"
    for where in (denied.get_data(as_text=True), dry_run.get_data(as_text=True),
                  history.get_data(as_text=True), caplog.text, _database_text(probe_app)):
        assert PROBE not in where


def test_read_only_roles_and_operators_on_real_time_read_the_email_code_redacted(api: Client) -> None:
    account = str(api.create("signup")["id"])
    api.fire(account, "select_type", {"country": "KR", "member_type": "business"}, role="operator")
    submitted = api.post(f"/instances/{account}/events", role="operator",
                         json={"event": "submit_email", "data": {"email": "member@example.com"}})
    [sent] = api.get(f"/notifications?instance={account}", role="admin").get_json()["items"]
    code = sent["payload"]["code"]
    assert code.isdigit()
    for role in ("viewer", "policy_editor", "operator"):
        [mail] = api.get(f"/notifications?instance={account}", role=role).get_json()["items"]
        assert mail["payload"]["code"] == "[redacted]", role
        assert mail["payload"]["expires_at"]  # the rest of the payload stays readable
    # the unkeyed digest of a six-digit code is the code: no answer shows it either
    digest = hashlib.sha256(code.encode()).hexdigest()
    shown = [submitted, api.get(f"/instances/{account}", role="viewer"),
             api.get("/instances?workflow=signup", role="viewer"), api.get("/notifications", role="viewer")]
    for response in shown:
        answer = response.get_data(as_text=True)
        assert code not in answer and digest not in answer, answer
    api.fire(account, "verify_email", {"code": code}, role="operator")
    assert api.get(f"/instances/{account}").get_json()["state"] == "password_setup"


def test_an_operator_reads_the_email_code_of_a_signup_on_a_test_clock(api: Client, clock: str) -> None:
    account = str(api.create("signup", clock=clock)["id"])
    api.fire(account, "select_type", {"country": "KR", "member_type": "business"}, role="operator")
    api.fire(account, "submit_email", {"email": "member@example.com"}, role="operator")
    [mail] = api.get(f"/notifications?instance={account}", role="operator").get_json()["items"]
    assert mail["payload"]["code"].isdigit()
    [seen] = api.get(f"/notifications?instance={account}", role="viewer").get_json()["items"]
    assert seen["payload"]["code"] == "[redacted]"
    api.fire(account, "verify_email", {"code": mail["payload"]["code"]}, role="operator")
    assert api.get(f"/instances/{account}").get_json()["state"] == "password_setup"
