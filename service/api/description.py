"""The OpenAPI 3.1 description, generated from the route table and the schemas in `schemas/api/`.

The request and response schemas are the very files the API validates with; they are embedded
under `components.schemas` (their `X.json` references rewritten to `#/components/schemas/X`) so
the document is self-contained and cannot drift from what the server checks.

The loaded workflow definitions add what the engine checks behind those files: the workflow
names (`wf`, `?workflow=`) and state names (`?state=`) as enums, each workflow's creation
context (`context.<workflow>`) and each event's data (`data.<workflow>.<event>`) as components
that the create and fire bodies combine with `allOf`/`anyOf`, and OpenAPI links from a created
instance or clock to the operations that take its id — which is also what lets a fuzzer such as
schemathesis chain calls past creation into the workflows themselves.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tollgate.service.api.routes import JSON, ROUTES, Reply, Route
from tollgate.service.api.support import API_SCHEMAS, schema
from tollgate.service.application.policy_files import definitions
from tollgate.workflows.definitions import Definition

PROBLEM = "application/problem+json"
ERROR_TEXT = {
    400: "The request is malformed: body, query or header (problem+json with `errors` paths).",
    401: "No valid bearer token.",
    403: "The token's role may not do this.",
    404: "Not found.",
    405: "Method not allowed.",
    409: "Conflict: duplicate, event not valid in this state, or an Idempotency-Key reused.",
    412: "The If-Match version is stale.",
    415: "The body is not JSON.",
    422: "Refused by policy, rules or clock (problem+json with `reasons` or `errors`).",
    503: "Unavailable: a renderer (Graphviz) is missing, or (/readyz) a readiness check failed.",
}
HEADER_TEXT = {
    "Location": "Where the new resource is.",
    "ETag": 'The instance version, quoted ("3"); send it back as If-Match.',
    "Idempotent-Replayed": "true when this is the stored response of an earlier request with the same key.",
}


def _rewrite_refs(node: Any) -> Any:
    """`{"$ref": "instance.json"}` → `{"$ref": "#/components/schemas/instance"}`, recursively."""
    if isinstance(node, dict):
        out = {k: _rewrite_refs(v) for k, v in node.items() if k not in ("$schema", "$id")}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.endswith(".json") and not ref.startswith("#"):
            out["$ref"] = "#/components/schemas/" + ref.removesuffix(".json")
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def components() -> dict[str, Any]:
    """Every schema of `schemas/api/`, embedded."""
    names = sorted(p.stem for p in API_SCHEMAS.glob("*.json"))
    return {name: _rewrite_refs(copy.deepcopy(schema(name))) for name in names}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _success(replies: list[Reply]) -> dict[str, Any]:
    content: dict[str, dict[str, Any]] = {}
    for r in replies:
        entry = content.setdefault(r.media, {})
        if r.schema:
            entry.setdefault("schemas", []).append(_ref(r.schema))
        elif r.media != JSON:
            entry["schemas"] = [{"type": "string"}]
    for entry in content.values():
        found = entry.pop("schemas", [])
        if found:
            entry["schema"] = found[0] if len(found) == 1 else {"oneOf": found}
    headers = {h: {"description": HEADER_TEXT[h], "schema": {"type": "string"}}
               for r in replies for h in r.headers}
    answer: dict[str, Any] = {"description": " ".join(dict.fromkeys(r.description for r in replies))}
    if content:
        answer["content"] = content
    if headers:
        answer["headers"] = headers
    return answer


#: Links from a response to the operations that take what it names (operationId → status →
#: link name → target operationId and parameters; `$response.body#/id` is the new resource's id).
_ID_FROM_BODY = {"path.id": "$response.body#/id"}
_ID_FROM_PATH = {"path.id": "$request.path.id"}
_INSTANCE_LINKS = {"GetInstance": ("instances_get_instance", _ID_FROM_BODY),
                   "FireEvent": ("instances_fire", _ID_FROM_BODY),
                   "GetHistory": ("instances_history", _ID_FROM_BODY)}
LINKS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "instances_create_instance": {"201": {
        **{name: {"operationId": op, "parameters": params} for name, (op, params) in _INSTANCE_LINKS.items()},
        "ListNotifications": {"operationId": "notifications_list_notifications",
                              "parameters": {"query.instance": "$response.body#/id"}},
        "Diagram": {"operationId": "workflows_diagram",
                    "parameters": {"path.wf": "$response.body#/workflow",
                                   "query.instance": "$response.body#/id"}},
    }},
    "instances_get_instance": {"200": {
        name: {"operationId": op, "parameters": params} for name, (op, params) in _INSTANCE_LINKS.items()}},
    "instances_fire": {"200": {
        name: {"operationId": op, "parameters": _ID_FROM_PATH} for name, (op, _) in _INSTANCE_LINKS.items()}},
    "clocks_create_clock": {"201": {
        "GetClock": {"operationId": "clocks_get_clock", "parameters": _ID_FROM_BODY},
        "AdvanceClock": {"operationId": "clocks_advance_clock", "parameters": _ID_FROM_BODY},
        "CreateInstanceOnClock": {"operationId": "instances_create_instance",
                                  "requestBody": {"clock": "$response.body#/id"}},
    }},
    "clocks_advance_clock": {"200": {
        "AdvanceAgain": {"operationId": "clocks_advance_clock", "parameters": _ID_FROM_PATH}}},
}


def _named(names: list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": names}


def _definition_schemas(defs: Mapping[str, Definition]) -> dict[str, Any]:
    """`context.<workflow>` and `data.<workflow>.<event>`: the schemas the engine validates with."""
    out: dict[str, Any] = {}
    for name, definition in defs.items():
        out[f"context.{name}"] = copy.deepcopy(dict(definition.context_schema))
        for event in definition.events.values():
            out[f"data.{name}.{event.name}"] = copy.deepcopy(dict(event.data_schema))
    return out


def _create_body(defs: Mapping[str, Definition]) -> dict[str, Any]:
    """CreateInstance, whose context is one of the workflows' (the one `wf` names)."""
    return {"allOf": [_ref("create_instance"), {"anyOf": [
        {"title": name, "properties": {"context": _ref(f"context.{name}")}} for name in defs]}]}


def _fire_body(defs: Mapping[str, Definition]) -> dict[str, Any]:
    """FireEvent, whose event and data are one of the workflows' events (of the instance's workflow)."""
    choices = []
    for name, definition in defs.items():
        for event in definition.events.values():
            needs_data = bool(event.data_schema.get("required") or event.data_schema.get("minProperties"))
            choices.append({"title": f"{name}.{event.name}", "required": ["event", "data"] if needs_data
                            else ["event"], "properties": {"event": {"const": event.name},
                                                          "data": _ref(f"data.{name}.{event.name}")}})
    return {"allOf": [_ref("fire_event"), {"anyOf": choices}]}


def _operation(route: Route, defs: Mapping[str, Definition]) -> dict[str, Any]:
    workflows = list(defs)
    states = sorted({state.name for d in defs.values() for state in d.states})
    enums = {"wf": _named(workflows), "workflow": _named(workflows), "state": _named(states)}
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": enums.get(name, {"type": "string"})} for name in _path_names(route.path)]
    parameters += [{"name": p.name, "in": "query", "required": p.required, "description": p.description,
                    "schema": enums.get(p.name, dict(p.schema))} for p in route.query]
    parameters += [{"name": p.name, "in": "header", "required": p.required, "description": p.description,
                    "schema": dict(p.schema)} for p in route.headers]
    op: dict[str, Any] = {"operationId": route.endpoint.replace(".", "_"), "summary": route.summary,
                          "tags": [route.endpoint.split(".")[0]]}
    if parameters:
        op["parameters"] = parameters
    if route.body == "yaml":
        op["requestBody"] = {"required": True, "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}}}}
    elif route.body == "create_instance":
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": _create_body(defs)}}}
    elif route.body == "fire_event":
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": _fire_body(defs)}}}
    elif route.body:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(route.body)}}}
    responses: dict[str, Any] = {}
    by_status: dict[int, list[Reply]] = {}
    for reply in route.replies:
        by_status.setdefault(reply.status, []).append(reply)
    links = LINKS.get(op["operationId"], {})
    for status, replies in by_status.items():
        responses[str(status)] = _success(replies)
        if str(status) in links:
            responses[str(status)]["links"] = copy.deepcopy(links[str(status)])
    errors = set(route.errors)
    if route.permission is not None:
        errors |= {401, 403}
        op["security"] = [{"bearer": []}]
    else:
        op["security"] = []
    if route.body and route.body != "yaml":
        errors |= {400, 415}
    for status in sorted(errors):
        responses[str(status)] = {"description": ERROR_TEXT[status],
                                  "content": {PROBLEM: {"schema": _ref("problem")}}}
    op["responses"] = responses
    return op


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def build(version: str = "0.1.0") -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    defs = definitions()
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, defs)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": "tollgate", "version": version,
                 "description": "Account-lifecycle workflows driven by rules.yaml. Errors are RFC 9457 "
                                "problem+json; timestamps are RFC 3339 with an offset."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": {**components(), **_definition_schemas(defs)},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A token of TOLLGATE_TOKENS (role=token)."}},
        },
    }
