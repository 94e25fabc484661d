"""Effective-dated rules versions over HTTP: `PUT /rules?effective_at=T`, cancelling a scheduled
version, re-activating an earlier one, and each event judged by the version in effect at its own
instant (real time, pinned and moved by the test, or a test clock's time), on SQLite and PostgreSQL.

The change used throughout: unfinished signups expire after 73 hours instead of 72
(`params.signup.abandon_after_hours`), seen in the `signup_abandoned` timer a signup gets when it is
created, and in the `rules_version` its history row names.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from urllib.parse import quote

import pytest
from flask import Flask

from tests.helpers.app import API_NOW, dispose_app, make_app
from tests.helpers.client import Client
from tests.helpers.real_time import RealTime
from tests.helpers.schemas import assert_conforms

YAML = {"Content-Type": "application/yaml"}
T = API_NOW + timedelta(days=1)  # the instant the scheduled version takes effect
HOUR = timedelta(hours=1)




@pytest.fixture
def real_time() -> RealTime:
    return RealTime(API_NOW)


@pytest.fixture
def app(database_url: str, real_time: RealTime) -> Iterator[Flask]:
    built = make_app(database_url, NOW=real_time)
    yield built
    dispose_app(built)


@pytest.fixture
def longer(rules_text: str) -> str:
    """The bundled rules with unfinished signups kept 73 hours instead of 72."""
    assert "abandon_after_hours: 72 " in rules_text
    return rules_text.replace("abandon_after_hours: 72 ", "abandon_after_hours: 73 ", 1)


def schedule(api: Client, text: str, at: datetime = T, *, status: int = 200) -> dict:
    response = api.put(f"/rules?effective_at={quote(at.isoformat())}", data=text, headers=YAML,
                       role="policy_editor")
    assert response.status_code == status, response
    return response.get_json()


def signup_on(api: Client, clock: str | None = None) -> tuple[dict, int]:
    """A new signup (on `clock`, or real time): the instance, and the rules version its creation names."""
    created = api.create("signup", **({"clock": clock} if clock else {}))
    return created, api.history(created["id"])[0]["rules_version"]


def abandon_due(instance: dict) -> datetime:
    [timer] = [t for t in instance["timers"] if t["name"] == "signup_abandoned"]
    return datetime.fromisoformat(timer["at"])


def statuses(api: Client) -> list[tuple[int, str]]:
    body = api.ok("GET", "/rules/versions")
    assert_conforms(body, "rules_version_list")
    return [(v["version"], v["status"]) for v in body["items"]]


def test_a_scheduled_version_judges_from_its_instant_on_and_not_before(api: Client, longer: str,
                                                                       real_time: RealTime) -> None:
    scheduled = schedule(api, longer)
    assert_conforms(scheduled, "rules_version")
    assert scheduled["version"] == 2
    assert datetime.fromisoformat(scheduled["effective_at"]) == T
    rules = api.ok("GET", "/rules")
    assert_conforms(rules, "rules_version")
    assert rules["version"] == 1
    assert [(s["version"], datetime.fromisoformat(s["effective_at"])) for s in rules["scheduled"]] == [(2, T)]
    assert statuses(api) == [(2, "scheduled"), (1, "active")]

    # before T: real time and a test clock just before T are judged by version 1
    instance, version = signup_on(api)
    assert version == 1 and abandon_due(instance) == API_NOW + 72 * HOUR
    before = api.clock(T - timedelta(seconds=1))
    instance, version = signup_on(api, before)
    assert version == 1 and abandon_due(instance) == T - timedelta(seconds=1) + 72 * HOUR

    # a test clock at T rehearses the change before the date: version 2, while real time keeps 1
    at = api.clock(T)
    instance, version = signup_on(api, at)
    assert version == 2 and abandon_due(instance) == T + 73 * HOUR
    assert signup_on(api)[1] == 1

    # real time reaches T: version 2 for everyone, without any restart
    real_time.now = T
    instance, version = signup_on(api)
    assert version == 2 and abandon_due(instance) == T + 73 * HOUR
    rules = api.ok("GET", "/rules")
    assert rules["version"] == 2 and rules["scheduled"] == []
    assert statuses(api) == [(2, "active"), (1, "superseded")]


def test_a_clock_advanced_across_the_instant_replans_armed_timers(api: Client, longer: str) -> None:
    """signup_abandoned is `on_new_version: replan`: armed under version 1 at T-2h (due T+70h), it
    is due at T+71h once version 2 takes effect on the clock; it does not fire at T+70h."""
    schedule(api, longer)
    clock = api.clock(T - 2 * HOUR)
    signup = api.create("signup", clock=clock)["id"]
    assert abandon_due(api.instance(signup)) == T + 70 * HOUR
    api.ok("POST", f"/clocks/{clock}/advance", json={"to": (T + 70 * HOUR).isoformat()})
    instance = api.instance(signup)
    assert instance["state"] == "type_selection"
    assert abandon_due(instance) == T + 71 * HOUR
    fired = api.ok("POST", f"/clocks/{clock}/advance", json={"to": (T + 71 * HOUR).isoformat()})["fired"]
    assert [(f["instance"], f["event"], f["to"]) for f in fired] == [(signup, "expire", "expired")]
    expired = api.history(signup)[-1]
    assert expired["event"] == "expire" and expired["rules_version"] == 2
    assert api.history(signup)[0]["rules_version"] == 1  # its creation still names version 1


def test_a_keep_timer_stays_as_armed_when_the_version_takes_effect(api: Client, longer: str) -> None:
    keep = longer.replace("    on_new_version: replan\n  credit_offer_lapses:",
                          "    on_new_version: keep\n  credit_offer_lapses:", 1)
    assert keep != longer
    schedule(api, keep)
    clock = api.clock(T - 2 * HOUR)
    signup = api.create("signup", clock=clock)["id"]
    fired = api.ok("POST", f"/clocks/{clock}/advance", json={"to": (T + 70 * HOUR).isoformat()})["fired"]
    assert [(f["instance"], f["to"]) for f in fired] == [(signup, "expired")]
    assert api.history(signup)[-1]["rules_version"] == 2  # fired after T: judged by version 2


def test_real_time_timers_are_replanned_when_real_time_reaches_the_instant(
        app: Flask, api: Client, longer: str, real_time: RealTime) -> None:
    signup = api.create("signup")["id"]
    assert abandon_due(api.instance(signup)) == API_NOW + 72 * HOUR
    schedule(api, longer)
    runtime = app.extensions["tollgate"]
    real_time.now = T - timedelta(seconds=1)
    assert runtime.run_due_timers() == []
    assert abandon_due(api.instance(signup)) == API_NOW + 72 * HOUR  # not yet
    real_time.now = T
    assert runtime.run_due_timers() == []
    assert abandon_due(api.instance(signup)) == API_NOW + 73 * HOUR
    real_time.now = API_NOW + 72 * HOUR
    assert runtime.run_due_timers() == []
    real_time.now = API_NOW + 73 * HOUR
    assert [e["instance"] for e in runtime.run_due_timers()] == [signup]
    assert api.history(signup)[-1]["rules_version"] == 2


def test_a_scheduled_version_can_be_cancelled_and_then_never_judges(api: Client, longer: str,
                                                                    real_time: RealTime) -> None:
    schedule(api, longer)
    assert api.post("/rules/versions/2/cancel", role="viewer").status_code == 403
    cancelled = api.ok("POST", "/rules/versions/2/cancel", role="policy_editor")
    assert_conforms(cancelled, "rules_version")
    assert cancelled["version"] == 2
    assert statuses(api) == [(2, "cancelled"), (1, "active")]
    assert api.ok("GET", "/rules")["scheduled"] == []
    after = api.clock(T + HOUR)
    assert signup_on(api, after)[1] == 1
    real_time.now = T + HOUR
    assert signup_on(api)[1] == 1
    again = api.post("/rules/versions/2/cancel", role="policy_editor")
    assert again.status_code == 409 and "cancelled already" in again.get_json()["detail"]


def test_a_version_in_effect_cannot_be_cancelled(api: Client, longer: str, real_time: RealTime) -> None:
    assert api.post("/rules/versions/1/cancel", role="policy_editor").status_code == 409
    schedule(api, longer)
    real_time.now = T
    refused = api.post("/rules/versions/2/cancel", role="policy_editor")
    assert refused.status_code == 409
    assert "took effect" in refused.get_json()["detail"]
    assert statuses(api) == [(2, "active"), (1, "superseded")]
    assert api.post("/rules/versions/9/cancel", role="policy_editor").status_code == 404
    assert api.post("/rules/versions/x/cancel", role="policy_editor").status_code == 404


def test_an_earlier_version_is_reactivated_as_a_new_version(api: Client, longer: str) -> None:
    first = api.ok("GET", "/rules")
    signup = api.create("signup")["id"]
    assert api.put("/rules", data=longer, headers=YAML, role="policy_editor").status_code == 200
    api.fire(signup, "select_type",
             {"country": "KR", "member_type": "individual", "birth_date": "1990-01-01"})
    assert api.post("/rules/versions/1/activate", role="viewer").status_code == 403
    back = api.ok("POST", "/rules/versions/1/activate", role="policy_editor")
    assert_conforms(back, "rules_version")
    assert back["version"] == 3 and back["source"] == "version:1"
    assert back["sha256"] == first["sha256"] and back["yaml"] == first["yaml"]
    assert api.ok("GET", "/rules")["version"] == 3
    assert statuses(api) == [(3, "active"), (2, "superseded"), (1, "superseded")]
    api.fire(signup, "submit_email", {"email": "back@example.com"})
    # every history row still names the version that judged it
    assert [row["rules_version"] for row in api.history(signup)] == [1, 2, 3]
    assert api.post("/rules/versions/7/activate", role="policy_editor").status_code == 404


def test_reactivation_can_be_scheduled(api: Client, longer: str) -> None:
    assert api.put("/rules", data=longer, headers=YAML, role="policy_editor").status_code == 200
    back = api.ok("POST", f"/rules/versions/1/activate?effective_at={quote(T.isoformat())}",
                  role="policy_editor")
    assert back["version"] == 3 and datetime.fromisoformat(back["effective_at"]) == T
    assert statuses(api) == [(3, "scheduled"), (2, "active"), (1, "superseded")]


@pytest.mark.parametrize("value", ["tomorrow", "2025-03-06T12:00:00", "2025-02-30T12:00:00+09:00",
                                   "1999-03-06T12:00:00+09:00", ""])
def test_a_bad_effective_at_is_a_400_naming_it(api: Client, longer: str, value: str) -> None:
    response = api.put(f"/rules?effective_at={quote(value)}", data=longer, headers=YAML, role="policy_editor")
    assert response.status_code == 400, response
    body = response.get_json()
    assert "effective_at" in body["detail"]
    assert [p["path"] for p in body["errors"]] == ["$.effective_at"]
    assert [v["version"] for v in api.ok("GET", "/rules/versions")["items"]] == [1]  # nothing stored


@pytest.mark.parametrize("offset", [timedelta(0), -HOUR])
def test_an_effective_at_not_in_the_future_is_refused(api: Client, longer: str, offset: timedelta) -> None:
    """An instant already past (or now) would judge events already judged: 400, not taken as now."""
    at = quote((API_NOW + offset).isoformat())
    response = api.put(f"/rules?effective_at={at}", data=longer, headers=YAML, role="policy_editor")
    assert response.status_code == 400
    assert "not in the future" in response.get_json()["detail"]
    assert [p["path"] for p in response.get_json()["errors"]] == ["$.effective_at"]
    assert [v["version"] for v in api.ok("GET", "/rules/versions")["items"]] == [1]


def test_an_unencoded_plus_in_the_offset_is_read_as_one(api: Client, longer: str) -> None:
    """curl users write ?effective_at=2025-03-06T12:00:00+09:00 unencoded; the + arrives as a space."""
    response = api.put(f"/rules?effective_at={T.isoformat()}", data=longer, headers=YAML,
                       role="policy_editor")
    assert response.status_code == 200, response
    assert datetime.fromisoformat(response.get_json()["effective_at"]) == T


def test_a_scheduled_version_with_problems_is_refused_as_put_refuses_it(api: Client) -> None:
    response = api.put(f"/rules?effective_at={T.isoformat()}", data="timezone: 3\n", headers=YAML,
                       role="policy_editor")
    assert response.status_code == 422
    assert api.ok("GET", "/rules")["scheduled"] == []
