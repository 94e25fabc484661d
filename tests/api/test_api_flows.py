"""Whole flows over HTTP: one event, one transaction across instances; passwords nowhere."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from tests.helpers.client import Client
from tollgate.service.storage.tables import metadata

PASSWORD = "Zq#8secret!x"  # 12 characters: letters, digits and specials


def state(api: Client, instance: str) -> tuple[str, int]:
    body = api.get(f"/instances/{instance}").get_json()
    return body["state"], body["version"]


def test_payment_registration_activates_the_account_in_the_same_transaction(api: Client) -> None:
    account = api.signup()
    assert state(api, account)[0] == "payment_method_required"
    pm = api.register_card(account)
    assert state(api, pm)[0] == "active"
    assert state(api, account)[0] == "active"
    last = api.get(f"/instances/{account}/history").get_json()["items"][-1]
    assert (last["event"], last["outcome"], last["actor"]) == (
        "payment_method_registered", "applied", f"payment_method:{pm}")


def test_a_refused_send_leaves_both_instances_unchanged(api: Client) -> None:
    account = api.create("signup")["id"]
    api.fire(account, "select_type", {"country": "KR", "member_type": "business"})
    pm = api.create("payment_method", {"account": account, "channel": "web"})["id"]
    api.fire(pm, "select_method", {"method": "credit_card", "card_type": "personal", "card_owner": "person"})
    api.fire(pm, "verify_phone", {"owner_match": True})
    account_before = api.get(f"/instances/{account}/history").get_json()["items"]

    denied = api.fire(pm, "register", {"agree_payment_info": True, "agree_recurring": True}, status=422)
    assert denied["type"].endswith("/guard_denied")
    assert account in denied["detail"]
    assert state(api, pm)[0] == "consent"
    assert state(api, account) == ("login_info", 2)
    assert api.get(f"/instances/{account}/history").get_json()["items"] == account_before
    assert api.get(f"/notifications?instance={pm}").get_json()["items"] == []
    last = api.get(f"/instances/{pm}/history").get_json()["items"][-1]
    assert (last["event"], last["outcome"]) == ("register", "denied")


def _database_dump(app: Flask) -> str:
    rows: list[Any] = []
    with app.extensions["tollgate"].db.engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows += [tuple(r) for r in conn.execute(select(table))]
    return repr(rows)


def test_passwords_are_never_in_responses_history_logs_or_the_database(
        api: Client, app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    account = api.signup(password=PASSWORD)
    again = {"event": "set_password", "data": {"password": PASSWORD, "password_confirm": PASSWORD}}
    bodies = [api.post(f"/instances/{account}/events?dry_run=true", json=again).data,
              api.post(f"/instances/{account}/events", json=again).data]  # 409: already set
    bodies += [api.get(path).data for path in (
        f"/instances/{account}", f"/instances/{account}/history", "/instances",
        f"/notifications?instance={account}")]
    history = api.get(f"/instances/{account}/history").get_json()["items"]
    set_password = next(h for h in history if h["event"] == "set_password")
    assert set_password["data"] == {"password": "[redacted]", "password_confirm": "[redacted]"}
    for body in bodies:
        assert PASSWORD.encode() not in body
    assert PASSWORD not in caplog.text
    assert "tok-admin" not in caplog.text
    assert any("POST /instances/" in r.getMessage() for r in caplog.records)
    assert PASSWORD not in _database_dump(app)


@pytest.mark.parametrize("event, data", [("set_partner", {"partner": True}), ("lift_restriction", {})])
def test_support_actions_need_the_admin_role(api: Client, event: str, data: dict[str, Any]) -> None:
    account = api.signup()
    api.register_card(account)
    if event == "lift_restriction":
        api.fire(account, "restrict", {"reason": "suspected mining"}, role="operator")
    before = api.get(f"/instances/{account}/history").get_json()["items"]

    refused = api.fire(account, event, data, role="operator", status=403)
    assert refused["type"].endswith("/forbidden") and "admin" in refused["detail"]
    assert api.get(f"/instances/{account}/history").get_json()["items"] == before, "nothing recorded"

    api.fire(account, event, data, role="admin")
    assert api.get(f"/instances/{account}/history").get_json()["items"][-1]["event"] == event


def test_workflow_definitions_show_which_roles_may_fire_an_event(api: Client) -> None:
    events = {e["name"]: e for e in api.get("/workflows/payment_method").get_json()["events"]}
    assert events["enable_payment"]["roles"] == ["admin"]
    assert events["register"]["roles"] == []
