"""`GET /notifications` shows each notification's delivery; `POST /notifications/{id}/redeliver`
queues one again (operator and admin only; 404 for an unknown id)."""

from __future__ import annotations

import pytest
from flask import Flask

from tests.helpers.client import Client
from tollgate.service.application.runtime import Runtime


def _runtime(app: Flask) -> Runtime:
    runtime: Runtime = app.extensions["tollgate"]
    return runtime


def test_each_notification_shows_its_delivery_pending_until_a_relay_sends_it(api: Client, clock: str) -> None:
    account = api.create("signup", clock=clock)["id"]
    api.fire(account, "select_type", {"country": "KR", "member_type": "business"})
    api.fire(account, "submit_email", {"email": "m@example.com"})
    (note,) = api.notifications(account)
    assert note["delivery"] == {"state": "pending", "attempts": 0, "next_attempt_at": None,
                                "last_status": None}


def test_redeliver_queues_a_dead_notification_again_and_keeps_its_attempts(
        api: Client, clock: str, app: Flask) -> None:
    account = api.create("signup", clock=clock)["id"]
    api.fire(account, "select_type", {"country": "KR", "member_type": "business"})
    api.fire(account, "submit_email", {"email": "m@example.com"})
    note_id = api.notifications(account)[0]["id"]
    outbox = _runtime(app).outbox
    with outbox.db.transaction() as conn:  # as a relay leaves it after its window
        conn.exec_driver_sql("UPDATE notifications SET delivery_state = 'dead', attempts = 4, "
                             f"last_status = '500' WHERE id = {int(note_id)}")
    answer = api.ok("POST", f"/notifications/{note_id}/redeliver", role="operator")
    assert answer == {"id": note_id, "delivery": {"state": "pending", "attempts": 4, "next_attempt_at": None,
                                                  "last_status": "500"}}
    assert api.notifications(account)[0]["delivery"]["state"] == "pending"


@pytest.mark.parametrize("path", ["/notifications/999999/redeliver", "/notifications/abc/redeliver",
                                  "/notifications/-1/redeliver"])
def test_redeliver_of_an_unknown_notification_is_404(api: Client, path: str) -> None:
    response = api.call("POST", path)
    assert response.status_code == 404
    assert "There is no notification" in response.get_json()["detail"]


@pytest.mark.parametrize("role, status", [("viewer", 403), ("policy_editor", 403), ("gateway", 403),
                                          ("operator", 404),
                                          ("admin", 404)])
def test_only_operators_and_admins_may_redeliver(api: Client, role: str, status: int) -> None:
    assert api.call("POST", "/notifications/999999/redeliver", role=role).status_code == status


def test_redeliver_is_in_the_openapi_document(api: Client) -> None:
    spec = api.ok("GET", "/openapi.json")
    operation = spec["paths"]["/notifications/{id}/redeliver"]["post"]
    assert set(operation["responses"]) >= {"200", "404"}
    listed = spec["components"]["schemas"]["notification_list"]["properties"]["items"]["items"]
    assert listed["properties"]["delivery"]["properties"]["state"]["enum"] == [
        "pending", "retrying", "delivered", "dead"]


def test_the_attempt_log_of_a_notification_is_readable_and_404_when_unknown(
        api: Client, clock: str, app: Flask) -> None:
    from datetime import UTC, datetime

    from tollgate.service.storage.tables import notification_attempts

    account = api.create("signup", clock=clock)["id"]
    api.fire(account, "select_type", {"country": "KR", "member_type": "business"})
    api.fire(account, "submit_email", {"email": "m@example.com"})
    note_id = api.notifications(account)[0]["id"]
    assert api.ok("GET", f"/notifications/{note_id}/attempts", role="viewer") == {"items": []}
    with _runtime(app).db.transaction() as conn:  # as a relay records a failed attempt
        conn.execute(notification_attempts.insert().values(
            notification=note_id, attempt=1, at=datetime(2026, 12, 1, tzinfo=UTC), result="failed",
            status="500", detail="The SMS webhook answered 500 Internal Server Error."))
    assert api.ok("GET", f"/notifications/{note_id}/attempts")["items"] == [
        {"attempt": 1, "at": "2026-12-01T00:00:00+00:00", "result": "failed", "status": "500",
         "detail": "The SMS webhook answered 500 Internal Server Error."}]
    assert api.call("GET", "/notifications/424242/attempts").status_code == 404
