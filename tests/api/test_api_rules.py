"""Rules over HTTP: read the active version, validate only, activate atomically; bad rules answer
422 with every problem and the old version keeps serving; history names the version it judged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from tests.helpers.client import Client
from tests.helpers.schemas import assert_conforms

YAML = {"Content-Type": "application/yaml"}
NINETEEN_IN_2025 = {"country": "KR", "member_type": "individual", "birth_date": "2006-01-01"}


def _text(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def test_get_rules_returns_the_active_version(api: Client, rules_text: str) -> None:
    response = api.get("/rules", role="viewer")
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms(body, "rules_version")
    assert body["version"] == 1
    assert body["yaml"] == rules_text
    assert body["activated_at"].endswith("+00:00")


def test_validate_accepts_the_bundled_rules(api: Client, rules_text: str) -> None:
    response = api.post("/rules/validate", data=rules_text, headers=YAML, role="policy_editor")
    assert response.status_code == 200
    assert response.get_json()["valid"] is True
    assert api.get("/rules").get_json()["version"] == 1  # validation activates nothing


def test_validate_reports_every_problem_with_path_line_and_column(api: Client, rules_text: str) -> None:
    broken = rules_text.replace("min_age: 19", "min_age: nineteen", 1).replace(
        "email_code_ttl_minutes: 10", "email_code_ttl_minutes: -5", 1)
    response = api.post("/rules/validate", data=broken, headers=YAML)
    assert response.status_code == 422
    body = response.get_json()
    assert_conforms(body, "problem")
    assert len(body["errors"]) >= 2
    for error in body["errors"]:
        assert {"path", "line", "column", "message"} <= set(error)
    paths = {e["path"] for e in body["errors"]}
    assert "$.params.signup.min_age" in paths
    min_age = next(e for e in body["errors"] if e["path"] == "$.params.signup.min_age")
    assert rules_text.splitlines()[min_age["line"] - 1].strip().startswith("min_age:")


def test_validate_refuses_text_that_is_not_yaml(api: Client) -> None:
    response = api.post("/rules/validate", data="params: [unclosed", headers=YAML)
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["line"] is not None


def test_put_of_bad_rules_is_422_and_the_old_version_stays(api: Client, rules_text: str) -> None:
    response = api.put("/rules", data=rules_text.replace("min_age: 19", "min_age: nineteen", 1), headers=YAML,
                       role="policy_editor")
    assert response.status_code == 422
    assert response.get_json()["errors"]
    assert api.get("/rules").get_json()["version"] == 1
    assert api.get("/healthz", role=None).get_json()["rules_version"] == 1


def test_put_activates_a_new_version_and_history_names_the_version_of_each_attempt(
        api: Client, rules_data: Callable[[], dict[str, Any]]) -> None:
    before = api.create("signup")["id"]
    api.fire(before, "select_type", NINETEEN_IN_2025)  # 19 is old enough under version 1
    waiting = api.create("signup")["id"]
    api.fire(waiting, "select_type", {"country": "ZZ", "member_type": "business"}, status=422)

    data = rules_data()
    data["params"]["signup"]["min_age"] = 20
    response = api.put("/rules", data=_text(data), headers=YAML, role="policy_editor")
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms(body, "rules_version")
    assert body["version"] == 2
    assert api.get("/rules").get_json()["sha256"] == body["sha256"]
    assert api.get("/healthz", role=None).get_json()["rules_version"] == 2

    denied = api.fire(waiting, "select_type", NINETEEN_IN_2025, status=422)
    assert [r["rule"] for r in denied["reasons"]] == ["min_age"]
    history = api.get(f"/instances/{waiting}/history").get_json()["items"]
    assert [(h["event"], h["outcome"], h["rules_version"]) for h in history] == [
        ("create", "applied", 1), ("select_type", "denied", 1), ("select_type", "denied", 2)]
    assert [h["rules_version"] for h in api.get(f"/instances/{before}/history").get_json()["items"]] == [1, 1]
    workflows = api.get("/workflows/signup").get_json()
    assert workflows["rules_version"] == 2
