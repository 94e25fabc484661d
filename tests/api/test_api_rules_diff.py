"""`GET /rules/versions` and `GET /rules/diff?from=&to=`: the versions kept, newest first, and two of
them compared in policy terms (the report of `tollgate rules diff --json`), for every reading role."""

from __future__ import annotations

import pytest

from tests.helpers.client import Client
from tests.helpers.schemas import assert_conforms
from tollgate.service.application.policy_files import load_policy
from tollgate.workflows.policy_diff import diff_policies

YAML = {"Content-Type": "application/yaml"}


@pytest.fixture
def two_versions(api: Client, rules_text: str) -> str:
    """Version 2: restricted hours from 22:00, activated by a policy editor; its text."""
    text = rules_text.replace('      start: "23:00"', '      start: "22:00"', 1)
    response = api.put("/rules", data=text, headers=YAML, role="policy_editor")
    assert response.status_code == 200
    return text


def test_versions_newest_first_with_the_active_one_marked(api: Client, two_versions: str) -> None:
    response = api.get("/rules/versions", role="viewer")
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms(body, "rules_version_list")
    assert [(v["version"], v["active"]) for v in body["items"]] == [(2, True), (1, False)]
    newest = body["items"][0]
    assert newest["source"] == "api" and newest["activated_by"] == "policy_editor"
    assert newest["sha256"] == api.get("/rules").get_json()["sha256"]
    assert newest["activated_at"].endswith("+00:00")


@pytest.mark.parametrize("role", ["viewer", "operator", "policy_editor", "admin"])
def test_every_reading_role_reads_versions_and_diffs(api: Client, role: str) -> None:
    assert api.get("/rules/versions", role=role).status_code == 200
    assert api.get("/rules/diff?from=1&to=1", role=role).status_code == 200


def test_the_gateway_reads_neither(api: Client) -> None:
    assert api.get("/rules/versions", role="gateway").status_code == 403
    assert api.get("/rules/diff?from=1&to=1", role="gateway").status_code == 403


def test_diff_is_the_report_of_the_command(api: Client, rules_text: str, two_versions: str) -> None:
    response = api.get("/rules/diff?from=1&to=2", role="policy_editor")
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms(body, "rules_diff")
    expected = diff_policies(load_policy(rules_text), load_policy(two_versions)).as_dict()
    assert body == expected
    assert body["params"] == [{"path": "payment.restricted_hours.start", "change": "changed", "old": "23:00",
                               "new": "22:00", "used_by": ["rule restricted_hours"]}]
    backwards = api.get("/rules/diff?from=2&to=1").get_json()
    assert backwards["params"][0]["old"] == "22:00" and backwards["params"][0]["new"] == "23:00"


def test_a_version_against_itself_is_empty(api: Client, two_versions: str) -> None:
    body = api.get("/rules/diff?from=2&to=2").get_json()
    assert_conforms(body, "rules_diff")
    assert body == {"changes": 0, "timezone": None, "params": [], "rules": [], "timers": [], "affected": []}


@pytest.mark.parametrize(("query", "named"), [
    ("to=1", "from"),
    ("from=1", "to"),
    ("from=&to=1", "from"),
    ("from=one&to=1", "from"),
    ("from=1&to=1.5", "to"),
    ("from=0&to=1", "from"),
    ("from=1&to=-2", "to"),
])
def test_a_missing_or_non_integer_version_is_400_naming_the_parameter(
        api: Client, query: str, named: str) -> None:
    response = api.get(f"/rules/diff?{query}")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert_conforms(body, "problem")
    assert f"query parameter {named}" in body["detail"] or f"query parameter '{named}'" in body["detail"]
    assert body["errors"][0]["path"] == f"$.{named}"


@pytest.mark.parametrize("query", ["from=1&to=7", "from=7&to=1"])
def test_an_unknown_version_is_404(api: Client, query: str) -> None:
    response = api.get(f"/rules/diff?{query}")
    assert response.status_code == 404
    body = response.get_json()
    assert_conforms(body, "problem")
    assert body["detail"] == "There is no rules version 7 in the database; its versions are 1 to 1."


def test_openapi_describes_both_routes(api: Client) -> None:
    doc = api.get("/openapi.json").get_json()
    versions = doc["paths"]["/rules/versions"]["get"]
    assert versions["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/rules_version_list"}
    diff = doc["paths"]["/rules/diff"]["get"]
    assert {p["name"]: p["required"] for p in diff["parameters"]} == {"from": True, "to": True}
    assert {"200", "400", "404"} <= set(diff["responses"])
    assert "rules_diff" in doc["components"]["schemas"]
