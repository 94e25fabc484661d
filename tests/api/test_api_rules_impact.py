"""`POST /rules/impact`: a candidate replayed over the recorded attempts and the live timers, on
SQLite and PostgreSQL. The history (tests/helpers/impact_history.py) holds attempts on both sides
of the minimum age and of the restricted hours, and an invoice in grace with its suspension due."""

from __future__ import annotations

import json

import pytest
import yaml
from flask import Flask
from sqlalchemy import select, update

from tests.helpers.client import Client
from tests.helpers.impact_history import History, build_history, candidate
from tests.helpers.schemas import assert_conforms
from tollgate.service.storage.tables import history as history_table

YAML = {"Content-Type": "application/yaml"}
ALL = {"since": "all"}


@pytest.fixture
def recorded(api: Client) -> History:
    return build_history(api)


def impact(api: Client, body: str, role: str = "policy_editor", **query: str) -> dict:
    response = api.post("/rules/impact", data=body, headers=YAML, role=role, query_string=query or ALL)
    assert response.status_code == 200, response
    report = response.get_json()
    assert_conforms(report, "rules_impact")
    return report


def rules_of(report: dict) -> set[tuple[str, str, str | None, int, tuple[str, ...]]]:
    return {(e["event"], e["change"], e["rule"], e["count"], tuple(e["examples"]))
            for e in report["looking_back"]["by_rule"]}


def test_the_active_rules_reproduce_every_verdict_and_change_nothing(
        api: Client, recorded: History, rules_text: str) -> None:
    report = impact(api, rules_text)
    back = report["looking_back"]
    assert back["attempts"] > 20
    assert back["self_check"] == {"reproduced": back["attempts"], "mismatched": 0, "examples": []}
    assert back["replayed"] == back["attempts"] and back["not_replayable"] == []
    assert back["by_event"] == [] and back["by_rule"] == [] and report["changed"] is False
    ahead = report["looking_ahead"]
    assert ahead["timers"] >= 1 and ahead["self_check"]["mismatched"] == 0
    assert ahead["changes"] == [] and ahead["not_replannable"] == []
    assert report["diff"]["summary"] == "No policy changes."


def test_moved_restricted_hours_change_exactly_the_attempts_on_both_sides(
        api: Client, recorded: History, rules_text: str) -> None:
    report = impact(api, candidate(rules_text, start="22:00", end="08:00"))
    assert rules_of(report) == {
        ("select_method", "applied → denied", "restricted_hours", 1, (recorded.evening,)),
        ("select_method", "denied → applied", "restricted_hours", 1, (recorded.morning,))}
    assert report["looking_back"]["changed_attempts"] == 2
    assert report["looking_back"]["self_check"]["mismatched"] == 0
    assert report["changed"] is True and report["looking_ahead"]["changes"] == []


@pytest.mark.parametrize("age, change, who", [(20, "applied → denied", "adult"),
                                              (18, "denied → applied", "minor")])
def test_a_moved_minimum_age_changes_the_signup_on_that_side(
        api: Client, recorded: History, rules_text: str, age: int, change: str, who: str) -> None:
    report = impact(api, candidate(rules_text, min_age=age))
    assert rules_of(report) == {("select_type", change, "min_age", 1, (getattr(recorded, who),))}


def test_a_later_grace_deadline_moves_the_pending_suspension_by_one_hour(
        api: Client, recorded: History, rules_text: str) -> None:
    report = impact(api, candidate(rules_text, grace="23:00"))
    [move] = report["looking_ahead"]["changes"]
    assert move == {"timer": "grace_deadline", "change": "moves", "shift": "+1 h", "count": 1,
                    "examples": [recorded.invoice],
                    "example_from": "2026-11-30T16:00:00+00:00", "example_to": "2026-11-30T17:00:00+00:00",
                    "on_new_version": "keep", "applies_to_armed": False}
    assert report["looking_back"]["by_rule"] == []  # the invoice's attempts keep their verdicts


def test_rows_written_before_the_migration_are_not_replayable(
        api: Client, app: Flask, recorded: History, rules_text: str) -> None:
    db = app.extensions["tollgate"].db
    with db.engine.begin() as conn:
        written = conn.execute(update(history_table).where(history_table.c.instance == recorded.minor)
                               .values(inputs=None)).rowcount
    assert written == len(api.history(recorded.minor)) >= 2  # created, refused at 18, expired
    report = impact(api, candidate(rules_text, min_age=18))
    back = report["looking_back"]
    [skipped] = back["not_replayable"]
    assert skipped["count"] == written and skipped["examples"] == [recorded.minor]
    assert "before migration 0009" in skipped["why"]
    assert back["replayed"] == back["attempts"] - written and back["by_rule"] == []


def test_the_history_keeps_no_secret_for_replay(api: Client, app: Flask, recorded: History) -> None:
    db = app.extensions["tollgate"].db
    with db.engine.connect() as conn:
        rows = conn.execute(select(history_table.c.event, history_table.c.inputs)).all()
    kept = json.dumps([r.inputs for r in rows])
    assert "Secret#2025" not in kept and "email_code_hash" not in kept
    secret_checks = [r.inputs["secret"] for r in rows if r.event in ("verify_email", "set_password")]
    assert secret_checks and all(set(s) <= {"email_code", "password_policy", "password_confirmation"}
                                 for s in secret_checks)


def test_a_window_leaves_older_attempts_out(api: Client, recorded: History, rules_text: str) -> None:
    report = impact(api, candidate(rules_text, start="22:00", end="08:00"), since="2026-09-29T00:00:00+09:00")
    assert rules_of(report) == {
        ("select_method", "denied → applied", "restricted_hours", 1, (recorded.morning,))}
    assert report["since"] == "2026-09-28T15:00:00+00:00"


@pytest.mark.parametrize("role, status", [("operator", 403), ("viewer", 403), ("gateway", 403),
                                          ("policy_editor", 200), ("admin", 200)])
def test_only_policy_editors_and_admins_ask_for_an_impact(
        api: Client, rules_text: str, role: str, status: int) -> None:
    response = api.post("/rules/impact", data=rules_text, headers=YAML, role=role)
    assert response.status_code == status, response


def test_a_bad_candidate_is_422_with_file_line_and_column(api: Client, rules_text: str) -> None:
    broken = rules_text.replace("    min_age: 19", "    min_age: nineteen", 1)
    response = api.post("/rules/impact", data=broken, headers=YAML, role="policy_editor")
    assert response.status_code == 422
    [problem] = [e for e in response.get_json()["errors"] if e["path"] == "$.params.signup.min_age"]
    assert problem["file"] == "rules.yaml" and problem["line"] and problem["column"]


def test_a_bad_window_is_400_naming_it(api: Client, rules_text: str) -> None:
    response = api.post("/rules/impact", data=rules_text, headers=YAML, role="policy_editor",
                        query_string={"since": "last week"})
    assert response.status_code == 400
    assert "since='last week'" in response.get_json()["detail"]


def test_the_openapi_document_describes_the_route(api: Client) -> None:
    doc = api.get("/openapi.json").get_json()
    assert "post" in doc["paths"]["/rules/impact"]
    assert "rules_impact" in doc["components"]["schemas"]


def test_a_timer_removed_disappears_and_a_new_one_appears(
        api: Client, recorded: History, rules_text: str) -> None:
    data = yaml.safe_load(rules_text)
    del data["timers"]["grace_deadline"]
    data["timers"]["grace_nudge"] = {"workflow": "invoice", "event": "suspend", "states": ["grace"],
                                     "at": "ts(context.suspend_after)"}
    report = impact(api, yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    changes = {(c["timer"], c["change"], c["count"], tuple(c["examples"])) for c in
               report["looking_ahead"]["changes"]}
    assert changes == {("grace_deadline", "disappears", 1, (recorded.invoice,)),
                       ("grace_nudge", "appears", 1, (recorded.invoice,))}
    nudge = next(c for c in report["looking_ahead"]["changes"] if c["timer"] == "grace_nudge")
    assert nudge["example_to"] == "2026-11-30T16:00:00+00:00"  # the suspension it would fire
