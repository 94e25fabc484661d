"""`/metrics` (Prometheus text) and `/readyz` in process, on both backends.

Counters live in the process's registry for the whole test session, so each test reads them
before and after what it does and asserts the difference. (Several gunicorn workers summed into
one scrape: tests/e2e/test_metrics.py.)
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tests.helpers.client import Client
from tests.helpers.kst import kst_instant
from tollgate.service import metrics
from tollgate.service.storage import db as database
from tollgate.service.storage.bulk import BulkWriter


def scrape(api: Client, role: str = "monitor") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    response = api.get("/metrics", role=role)
    assert response.status_code == 200, response
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_a_token_with_the_metrics_permission(api: Client) -> None:
    assert api.get("/metrics", role=None).status_code == 401
    assert api.get("/metrics", role="policy_editor").status_code == 403
    assert api.get("/metrics", role="gateway").status_code == 403
    for role in ("monitor", "viewer", "operator", "admin"):
        assert api.get("/metrics", role=role).status_code == 200
    assert api.get("/instances", role="monitor").status_code == 403, "monitor reads nothing else"


def test_events_and_denials_are_counted_once_committed(api: Client) -> None:
    before = scrape(api)
    account = api.create("signup")["id"]
    person = {"country": "KR", "member_type": "individual"}
    api.fire(account, "select_type", {**person, "birth_date": "2015-01-01"}, status=422)  # too young
    api.fire(account, "select_type", {**person, "birth_date": "1990-01-01"})
    api.fire(account, "select_type", person, status=409)  # not valid in the state: not recorded
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("tollgate_events_total", workflow="signup", event="create", outcome="applied") == 1
    assert delta("tollgate_events_total", workflow="signup", event="select_type", outcome="applied") == 1
    assert delta("tollgate_events_total", workflow="signup", event="select_type", outcome="denied") == 1
    denial_rules = {dict(labels)["rule"] for (name, labels), v in after.items()
                    if name == "tollgate_denials_total" and v > value(before, name, **dict(labels))}
    assert denial_rules == {"min_age"}


def test_http_latency_is_labelled_by_route_template(api: Client) -> None:
    account = api.create("signup")["id"]
    before = scrape(api)
    api.get(f"/instances/{account}")
    api.get("/instances/nobody")
    api.get("/no/such/route")
    after = scrape(api)
    route = "/instances/{id}"
    assert value(after, "tollgate_http_request_duration_seconds_count", method="GET", route=route) - \
        value(before, "tollgate_http_request_duration_seconds_count", method="GET", route=route) == 2
    assert value(after, "tollgate_http_requests_total", method="GET", route=route, status="404") - \
        value(before, "tollgate_http_requests_total", method="GET", route=route, status="404") == 1
    assert value(after, "tollgate_http_requests_total", method="GET", route="unmatched", status="404") >= 1
    assert not any(account in dict(labels).get("route", "") for _, labels in after), "raw paths leak ids"


def test_gauges_are_read_at_scrape_time(app: Flask, api: Client) -> None:
    runtime = app.extensions["tollgate"]
    before = scrape(api)
    assert value(before, "tollgate_rules_version") == 0  # labelled by sha256
    version = api.get("/rules").get_json()
    assert value(before, "tollgate_rules_version", sha256=version["sha256"]) == version["version"]
    account = api.create("signup")["id"]  # real time: its expiry timer is not due yet
    api.fire(account, "select_type", {"country": "KR", "member_type": "business"})
    api.fire(account, "submit_email", {"email": "ops@example.com"})
    with runtime.db.transaction() as conn:  # a timer overdue by an hour: the scheduler's backlog
        conn.execute(text("UPDATE timers SET due_at = :due WHERE instance = :id"),
                     {"due": BulkWriter(conn).ts(kst_instant(2025, 3, 5, 11)), "id": account})
    after = scrape(api)
    assert value(after, "tollgate_due_timers") == value(before, "tollgate_due_timers") + 1
    assert value(after, "tollgate_outbox_backlog", channel="email") == \
        value(before, "tollgate_outbox_backlog", channel="email") + 1


def test_delivery_attempts_are_counted_by_channel_and_result(app: Flask, api: Client) -> None:
    before = scrape(api)
    metrics.delivery_attempted("sms", ok=False)
    metrics.delivery_attempted("sms", ok=True)
    with app.extensions["tollgate"].db.transaction() as conn:  # as a relay below the edges records one
        database.note(conn, "delivery", ("email", True))
    with contextlib.suppress(RuntimeError), app.extensions["tollgate"].db.transaction() as conn:
        database.note(conn, "delivery", ("email", False))
        raise RuntimeError("rolled back: not counted")
    after = scrape(api)
    for channel, result, n in [("sms", "failed", 1), ("sms", "delivered", 1), ("email", "delivered", 1),
                               ("email", "failed", 0)]:
        name = "tollgate_delivery_attempts_total"
        assert value(after, name, channel=channel, result=result) - \
            value(before, name, channel=channel, result=result) == n


def test_readyz_is_public_and_names_its_checks(api: Client) -> None:
    response = api.get("/readyz", role=None)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "migrations", "rules"}
    assert all(check["ok"] for check in body["checks"].values())


def _not_ready(api: Client) -> dict[str, Any]:
    response = api.get("/readyz", role=None)
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    return body


def test_readyz_is_503_when_the_schema_is_behind(app: Flask, api: Client) -> None:
    runtime = app.extensions["tollgate"]
    with runtime.db.transaction() as conn:
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        conn.execute(text("UPDATE alembic_version SET version_num = '0007'"))
    try:
        body = _not_ready(api)
        assert body["failed"] == ["migrations"]
        detail = body["checks"]["migrations"]["detail"]
        assert "0007" in detail and current in detail
    finally:
        with runtime.db.transaction() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": current})
    assert api.get("/readyz", role=None).status_code == 200


def test_readyz_is_503_without_rules_or_database(app: Flask, api: Client,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = app.extensions["tollgate"]

    def no_rules(conn: Any) -> Any:
        raise RuntimeError("no rules")

    monkeypatch.setattr(runtime.versions, "active", no_rules)
    assert _not_ready(api)["failed"] == ["rules"]
    monkeypatch.undo()

    def unreachable() -> Any:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(runtime.db, "read", unreachable)
    body = _not_ready(api)
    assert body["failed"] == ["database", "migrations", "rules"]
    assert "connection refused" not in str(body)
