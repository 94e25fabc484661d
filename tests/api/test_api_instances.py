"""Instances over HTTP: create, read, list and paginate, events with ETag/If-Match, idempotency,
dry runs and history."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.client import Client
from tests.helpers.schemas import assert_conforms

KR_INDIVIDUAL = {"country": "KR", "member_type": "individual", "birth_date": "1990-01-01"}


def events(api: Client, instance: str) -> list[dict[str, Any]]:
    response = api.get(f"/instances/{instance}/history")
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms(body, "history")
    items: list[dict[str, Any]] = body["items"]
    return items


# ── create and read ──────────────────────────────────────────────────────────────────────────


def test_create_answers_201_with_location_and_etag_and_get_reads_it_back(api: Client) -> None:
    response = api.post("/workflows/signup/instances", json={"context": {}}, role="operator")
    assert response.status_code == 201
    created = response.get_json()
    assert_conforms(created, "instance")
    assert response.headers["Location"] == f"/instances/{created['id']}"
    assert response.headers["ETag"] == '"1"'
    read = api.get(response.headers["Location"], role="viewer")
    assert read.status_code == 200
    assert read.headers["ETag"] == '"1"'
    assert read.get_json() == created
    assert created["state"] == "type_selection"
    assert created["created_at"].endswith("+00:00")


def test_create_with_an_id_twice_is_409(api: Client) -> None:
    api.create("signup", id="acct_fixed")
    response = api.post("/workflows/signup/instances", json={"id": "acct_fixed", "context": {}})
    assert response.status_code == 409
    assert response.mimetype == "application/problem+json"


def test_create_of_an_unknown_workflow_is_404(api: Client) -> None:
    assert api.post("/workflows/mortgage/instances", json={"context": {}}).status_code == 404


def test_create_with_a_bad_context_is_400_with_paths(api: Client) -> None:
    account = api.create("signup")["id"]
    response = api.post("/workflows/payment_method/instances",
                        json={"context": {"account": account, "channel": "fax"}})
    assert response.status_code == 400
    assert [e["path"] for e in response.get_json()["errors"]] == ["$.channel"]


def test_create_referencing_no_account_is_422(api: Client) -> None:
    response = api.post("/workflows/credit/instances", json={"context": {"account": "acct_nobody"}})
    assert response.status_code == 422
    assert "acct_nobody" in response.get_json()["detail"]


def test_get_of_an_unknown_instance_is_404(api: Client) -> None:
    response = api.get("/instances/acct_nobody")
    assert response.status_code == 404
    assert response.get_json()["detail"] == "There is no instance 'acct_nobody'."


# ── list ─────────────────────────────────────────────────────────────────────────────────────


def test_list_paginates_over_more_than_limit_items_without_gaps(api: Client) -> None:
    made = [api.create("signup")["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "/instances?workflow=signup&limit=2" + (f"&cursor={cursor}" if cursor else "")
        response = api.get(query, role="viewer")
        assert response.status_code == 200
        page = response.get_json()
        assert_conforms(page, "instance_list")
        assert len(page["items"]) <= 2
        seen += [i["id"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(made) and len(set(seen)) == 5


def test_list_filters_by_workflow_state_and_account(api: Client) -> None:
    account = api.create("signup")["id"]
    api.fire(account, "select_type", KR_INDIVIDUAL)
    other = api.create("signup")["id"]
    pm = api.create("payment_method", {"account": account, "channel": "web"})["id"]

    def ids(query: str) -> set[str]:
        return {i["id"] for i in api.get(f"/instances?{query}").get_json()["items"]}

    assert ids("workflow=signup") == {account, other}
    assert ids("state=login_info") == {account}
    assert ids(f"account={account}") == {account, pm}
    assert ids("workflow=payment_method&state=method_selection") == {pm}


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=ten", "cursor=garbage",
                                   "workflow=mortgage"])
def test_list_refuses_bad_parameters_with_400(api: Client, query: str) -> None:
    response = api.get(f"/instances?{query}")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"


# ── events ───────────────────────────────────────────────────────────────────────────────────


def test_an_applied_event_answers_the_instance_with_its_new_etag(api: Client) -> None:
    account = api.create("signup")["id"]
    response = api.post(f"/instances/{account}/events", json={"event": "select_type", "data": KR_INDIVIDUAL},
                        role="operator")
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms(body, "instance")
    assert (body["state"], body["version"]) == ("login_info", 2)
    assert response.headers["ETag"] == '"2"'


def test_a_guard_denial_is_422_listing_every_failed_rule_in_two_languages(api: Client) -> None:
    account = api.create("signup")["id"]
    response = api.post(f"/instances/{account}/events",
                        json={"event": "select_type", "data": {"country": "ZZ", "member_type": "alien"}})
    assert response.status_code == 422
    body = response.get_json()
    assert_conforms(body, "problem")
    assert body["type"].endswith("/guard_denied")
    assert {r["rule"] for r in body["reasons"]} == {"country_supported", "member_type_valid"}
    assert all(r["message"]["ko"] and r["message"]["en"] for r in body["reasons"])
    assert api.get(f"/instances/{account}").get_json()["state"] == "type_selection"
    assert events(api, account)[-1]["outcome"] == "denied"


def test_an_event_not_valid_in_the_state_is_409_invalid_transition(api: Client) -> None:
    account = api.create("signup")["id"]
    response = api.post(f"/instances/{account}/events", json={"event": "verify_email", "data": {"code": "1"}})
    assert response.status_code == 409
    body = response.get_json()
    assert body["type"].endswith("/invalid_transition")
    assert body["allowed_events"]


def test_event_data_against_the_events_schema_is_400(api: Client) -> None:
    account = api.create("signup")["id"]
    response = api.post(f"/instances/{account}/events", json={"event": "select_type", "data": {"country": 1}})
    assert response.status_code == 400
    assert response.get_json()["errors"]


def test_an_event_on_an_unknown_instance_is_404(api: Client) -> None:
    response = api.post("/instances/acct_nobody/events", json={"event": "expire"})
    assert response.status_code == 404


def test_if_match_with_the_current_etag_applies_and_a_stale_one_is_412(api: Client) -> None:
    account = api.create("signup")["id"]
    api.fire(account, "select_type", KR_INDIVIDUAL, headers={"If-Match": '"1"'})
    stale = api.post(f"/instances/{account}/events", json={"event": "submit_email",
                                                           "data": {"email": "a@example.com"}},
                     headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.get_json()["type"].endswith("/stale_version")
    assert api.get(f"/instances/{account}").get_json()["version"] == 2
    api.fire(account, "submit_email", {"email": "a@example.com"}, headers={"If-Match": "*"})


@pytest.mark.parametrize("header", ["1", "W/\"1\"", '"one"', '"1", "2"'])
def test_a_malformed_if_match_is_400(api: Client, header: str) -> None:
    account = api.create("signup")["id"]
    response = api.post(f"/instances/{account}/events", json={"event": "select_type", "data": KR_INDIVIDUAL},
                        headers={"If-Match": header})
    assert response.status_code == 400
    assert "If-Match" in response.get_json()["detail"]


def test_a_replayed_idempotency_key_returns_the_first_response_and_changes_nothing(api: Client) -> None:
    account = api.create("signup")["id"]
    request = {"json": {"event": "select_type", "data": KR_INDIVIDUAL}, "headers": {"Idempotency-Key": "k-1"}}
    first = api.post(f"/instances/{account}/events", **request)
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    again = api.post(f"/instances/{account}/events", **request)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert again.headers["ETag"] == first.headers["ETag"]
    assert len(events(api, account)) == 2
    assert api.get(f"/instances/{account}").get_json()["version"] == 2


def test_a_replayed_denial_is_the_same_422(api: Client) -> None:
    account = api.create("signup")["id"]
    request = {"json": {"event": "select_type", "data": {"country": "ZZ", "member_type": "business"}},
               "headers": {"Idempotency-Key": "k-denied"}}
    first = api.post(f"/instances/{account}/events", **request)
    again = api.post(f"/instances/{account}/events", **request)
    assert first.status_code == again.status_code == 422
    assert again.mimetype == "application/problem+json"
    assert again.get_json() == first.get_json() and again.headers["Idempotent-Replayed"] == "true"
    assert len(events(api, account)) == 2


def test_the_same_idempotency_key_with_another_body_is_409(api: Client) -> None:
    account = api.create("signup")["id"]
    api.fire(account, "select_type", KR_INDIVIDUAL, headers={"Idempotency-Key": "k-2"})
    response = api.post(f"/instances/{account}/events", json={"event": "expire"},
                        headers={"Idempotency-Key": "k-2"})
    assert response.status_code == 409
    assert response.get_json()["type"].endswith("/idempotency_key_reused")
    assert len(events(api, account)) == 2


def test_dry_run_says_what_would_happen_and_changes_nothing(api: Client) -> None:
    account = api.create("signup")["id"]
    response = api.post(f"/instances/{account}/events?dry_run=true",
                        json={"event": "select_type", "data": KR_INDIVIDUAL})
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms(body, "dry_run")
    assert (body["allowed"], body["to"], body["reasons"]) == (True, "login_info", [])
    denied = api.post(f"/instances/{account}/events?dry_run=true",
                      json={"event": "select_type", "data": {"country": "ZZ", "member_type": "business"}})
    assert denied.status_code == 200
    assert denied.get_json()["allowed"] is False
    assert [r["rule"] for r in denied.get_json()["reasons"]] == ["country_supported"]
    after = api.get(f"/instances/{account}").get_json()
    assert (after["state"], after["version"]) == ("type_selection", 1)
    assert len(events(api, account)) == 1


def test_dry_run_errors(api: Client) -> None:
    account = api.create("signup")["id"]
    missing = api.post("/instances/acct_nobody/events?dry_run=true", json={"event": "expire"})
    assert missing.status_code == 404
    invalid = api.post(f"/instances/{account}/events?dry_run=true", json={"event": "verify_email",
                                                                         "data": {"code": "1"}})
    assert invalid.status_code == 409
    flag = api.post(f"/instances/{account}/events?dry_run=maybe", json={"event": "expire"})
    assert flag.status_code == 400


def test_history_lists_every_attempt_with_version_and_the_callers_role(api: Client) -> None:
    account = api.create("signup")["id"]
    api.fire(account, "select_type", {"country": "ZZ", "member_type": "business"}, status=422,
             role="operator")
    api.fire(account, "select_type", KR_INDIVIDUAL, role="operator")
    items = events(api, account)
    assert [(h["seq"], h["event"], h["from"], h["to"], h["outcome"]) for h in items] == [
        (1, "create", None, "type_selection", "applied"),
        (2, "select_type", "type_selection", "type_selection", "denied"),
        (3, "select_type", "type_selection", "login_info", "applied"),
    ]
    assert [h["actor"] for h in items] == ["admin", "operator", "operator"]
    assert {h["rules_version"] for h in items} == {1}
    assert items[1]["reasons"][0]["rule"] == "country_supported"
    assert api.get("/instances/acct_nobody/history").status_code == 404
