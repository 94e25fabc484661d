"""HTTP basics: /healthz, problem+json for every kind of error, /workflows, diagrams, /openapi.json."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from tests.helpers.client import Client
from tests.helpers.schemas import assert_conforms
from tollgate.service.api.routes import ROUTES


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    """An RFC 9457 body with the media type, the status and a full-sentence detail."""
    assert response.status_code == status, response.get_json()
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert_conforms(body, "problem")
    assert body["status"] == status
    assert body["type"].endswith("/" + slug)
    assert body["detail"][0].isupper() and body["detail"].rstrip().endswith(".")
    return body


def test_healthz_answers_without_a_token_with_the_rules_version(api: Client) -> None:
    response = api.get("/healthz", role=None)
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "rules_version": 1}


def test_unknown_route_is_a_problem_404(api: Client) -> None:
    assert_problem(api.get("/no/such/route"), 404, "not_found")


def test_wrong_method_is_a_problem_405_listing_the_allowed_ones(api: Client) -> None:
    response = api.call("DELETE", "/rules")
    body = assert_problem(response, 405, "method_not_allowed")
    assert "GET, PUT" in body["detail"]
    assert "PUT" in response.headers["Allow"]


def test_a_body_that_is_not_json_is_415(api: Client) -> None:
    response = api.post("/clocks", data="now=2025-03-05", content_type="application/x-www-form-urlencoded")
    assert_problem(response, 415, "unsupported_media_type")


def test_malformed_json_is_400_saying_where(api: Client) -> None:
    response = api.post("/clocks", data='{"now": ', content_type="application/json")
    body = assert_problem(response, 400, "bad_request")
    assert "not valid JSON" in body["detail"] and "line 1, column" in body["detail"]


def test_a_missing_body_is_400(api: Client) -> None:
    body = assert_problem(api.post("/clocks"), 400, "bad_request")
    assert "missing" in body["detail"]


def test_unknown_top_level_fields_are_refused_with_their_path(api: Client) -> None:
    response = api.post("/workflows/signup/instances", json={"context": {}, "colour": "red"})
    body = assert_problem(response, 400, "bad_request")
    assert body["errors"][0]["path"] == "$"
    assert "colour" in body["errors"][0]["message"]


def test_schema_errors_name_every_path(api: Client) -> None:
    response = api.post("/instances/x/events", json={"event": 7, "data": []})
    body = assert_problem(response, 400, "bad_request")
    assert sorted(e["path"] for e in body["errors"]) == ["$.data", "$.event"]


def test_workflows_lists_every_definition_with_bound_rule_ids(api: Client) -> None:
    response = api.get("/workflows", role="viewer")
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms(body, "workflow_list")
    names = [w["name"] for w in body["items"]]
    assert names == ["signup", "payment_method", "credit", "invoice"]
    signup = body["items"][0]
    rules = {e["name"]: e["rules"] for e in signup["events"]}
    assert {"country_supported", "member_type_valid", "min_age"} <= set(rules["select_type"])
    assert {"password_policy", "password_confirmation"} <= set(rules["set_password"])


def test_one_workflow_and_an_unknown_one(api: Client) -> None:
    response = api.get("/workflows/payment_method")
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms(body, "workflow")
    assert body["initial"] == "method_selection"
    assert "restricted_hours" in {r for e in body["events"] for r in e["rules"]}
    assert_problem(api.get("/workflows/mortgage"), 404, "not_found")


@pytest.mark.parametrize(("fmt", "media", "marker"), [
    ("mermaid", "text/vnd.mermaid", b"stateDiagram-v2"),
    ("dot", "text/vnd.graphviz", b"digraph"),
    ("svg", "image/svg+xml", b"<svg"),
])
def test_diagram_in_each_format(api: Client, fmt: str, media: str, marker: bytes) -> None:
    response = api.get(f"/workflows/invoice/diagram?format={fmt}")
    if fmt == "svg" and shutil.which("dot") is None:
        assert_problem(response, 503, "diagram_unavailable")
        return
    assert response.status_code == 200
    assert response.mimetype == media
    assert marker in response.data


def test_diagram_defaults_to_mermaid_and_highlights_an_instances_state(api: Client) -> None:
    account = api.create("signup")["id"]
    plain = api.get("/workflows/signup/diagram")
    assert plain.mimetype == "text/vnd.mermaid"
    assert "current" not in plain.get_data(as_text=True)
    marked = api.get(f"/workflows/signup/diagram?instance={account}").get_data(as_text=True)
    assert "class type_selection current" in marked


def test_diagram_errors(api: Client) -> None:
    account = api.create("signup")["id"]
    assert_problem(api.get("/workflows/signup/diagram?format=png"), 400, "bad_request")
    assert_problem(api.get("/workflows/mortgage/diagram"), 404, "not_found")
    assert_problem(api.get("/workflows/signup/diagram?instance=acct_nope"), 404, "not_found")
    assert_problem(api.get(f"/workflows/invoice/diagram?instance={account}"), 400, "bad_request")


# ── /openapi.json ────────────────────────────────────────────────────────────────────────────


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_openapi_describes_every_route_status_and_the_bearer_scheme(api: Client) -> None:
    response = api.get("/openapi.json", role="viewer")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearer"][
            "description"]}
    for route in ROUTES:
        operation = doc["paths"][route.path][route.method.lower()]
        statuses = set(operation["responses"])
        assert {str(r.status) for r in route.replies} | {str(s) for s in route.errors} <= statuses
        if route.permission is None:
            assert operation["security"] == []
        else:
            assert {"401", "403"} <= statuses
    assert set(doc["paths"]["/instances/{id}/events"]["post"]["responses"]) >= {
        "200", "400", "404", "409", "412", "422"}


def test_openapi_is_self_contained_and_embeds_the_validating_schemas(api: Client) -> None:
    import json

    from tollgate.service.api.support import API_SCHEMAS

    doc = api.get("/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, ref
    for name in ("create_instance", "fire_event", "create_clock", "advance_clock"):
        on_disk = json.loads((API_SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
        del on_disk["$schema"], on_disk["$id"]
        assert schemas[name] == on_disk
    body = doc["paths"]["/workflows/{wf}/instances"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["allOf"][0] == {
        "$ref": "#/components/schemas/create_instance"}


def test_openapi_names_the_workflows_their_events_and_data_and_links_create_to_fire(api: Client) -> None:
    from tollgate.service.api.routes import JSON
    from tollgate.service.application.policy_files import definitions

    doc = api.get("/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    names = list(definitions())
    for path in ("/workflows/{wf}", "/workflows/{wf}/instances", "/workflows/{wf}/diagram"):
        operation = next(iter(doc["paths"][path].values()))
        wf = next(p for p in operation["parameters"] if p["name"] == "wf")
        assert wf["schema"]["enum"] == names
    listing = doc["paths"]["/instances"]["get"]["parameters"]
    assert next(p for p in listing if p["name"] == "workflow")["schema"]["enum"] == names
    assert "suspended" in next(p for p in listing if p["name"] == "state")["schema"]["enum"]
    fire = doc["paths"]["/instances/{id}/events"]["post"]["requestBody"]["content"][JSON]["schema"]
    assert fire["allOf"][0] == {"$ref": "#/components/schemas/fire_event"}
    choices = {c["title"]: c for c in fire["allOf"][1]["anyOf"]}
    assert set(choices) == {f"{w}.{e}" for w, d in definitions().items() for e in d.events}
    add_usage = choices["invoice.add_usage"]
    assert add_usage["properties"]["event"] == {"const": "add_usage"}
    assert add_usage["required"] == ["event", "data"]
    data = schemas[add_usage["properties"]["data"]["$ref"].rsplit("/", 1)[1]]
    assert data == definitions()["invoice"].events["add_usage"].data_schema
    assert schemas["context.invoice"] == definitions()["invoice"].context_schema
    created = doc["paths"]["/workflows/{wf}/instances"]["post"]["responses"]["201"]["links"]
    assert created["FireEvent"] == {"operationId": "instances_fire",
                                    "parameters": {"path.id": "$response.body#/id"}}
    assert {link["operationId"] for link in created.values()} >= {
        "instances_fire", "instances_get_instance", "instances_history"}
    operation_ids = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    for item in doc["paths"].values():
        for op in item.values():
            for response in op["responses"].values():
                for link in response.get("links", {}).values():
                    assert link["operationId"] in operation_ids


def test_openapi_document_is_valid_openapi_3_1(api: Client) -> None:
    validator = pytest.importorskip("openapi_spec_validator",
                                    reason="openapi-spec-validator is not installed")
    validator.validate(api.get("/openapi.json").get_json())


def test_an_unexpected_error_is_a_problem_500_and_is_logged(
        api: Client, app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(_id: str) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(app.extensions["tollgate"], "get_instance", broken)
    body = assert_problem(api.get("/instances/acct_x"), 500, "error")
    assert "disk on fire" not in body["detail"]
    assert "RuntimeError" in caplog.text


def test_a_body_over_the_size_limit_is_a_problem_413(api: Client) -> None:
    response = api.put("/rules", data="#" * (1024 * 1024 + 1), headers={"Content-Type": "application/yaml"})
    assert_problem(response, 413, "payload_too_large")


@pytest.mark.parametrize(("raw", "words"), [
    ('{"now": "\\ud800"}', "surrogate"),             # a lone UTF-16 surrogate: nothing can store it
    ('{"now": NaN}', "not valid JSON"),
    (b'{"now": "\xff"}', "not UTF-8"),
])
def test_json_no_store_can_hold_is_400_saying_why(api: Client, raw: Any, words: str) -> None:
    body = assert_problem(api.post("/clocks", data=raw, content_type="application/json"), 400, "bad_request")
    assert words in body["detail"]


def test_a_surrogate_pair_is_an_ordinary_character(api: Client) -> None:
    raw = '{"context": {}, "c\\ud83d\\ude00lour": "red"}'
    body = assert_problem(api.post("/workflows/signup/instances", data=raw, content_type="application/json"),
                          400, "bad_request")
    assert "c😀lour" in body["errors"][0]["message"]


@pytest.mark.parametrize("path", ["/rules", "/rules/validate"])
def test_a_rules_text_whose_escapes_make_lone_surrogates_is_answered_not_a_500(api: Client,
                                                                               path: str) -> None:
    # PyYAML turns the escaped pair "\ud80b\ude42" into two lone surrogates, which the 422 echoes
    # in its errors; a reply must still be JSON (found by schemathesis on PUT /rules).
    method = "PUT" if path == "/rules" else "POST"
    response = api.call(method, path, data='{"\\ud80b\\ude42": 1, "\\ud800": 2}', content_type="text/plain")
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["type"].endswith("/invalid_rules")
    assert any("\ud800" in e["message"] or "\ud800" in e["path"] for e in body["errors"]), body["errors"]
