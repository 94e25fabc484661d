"""The OpenAPI 3.1 description, generated from the route table and the schemas in `schemas/api/`.

The request and response schemas are the very files the API validates with; they are embedded
under `components.schemas` (their `X.json` references rewritten to `#/components/schemas/X`) so
the document is self-contained and cannot drift from what the server checks.
"""

from __future__ import annotations

import copy
from typing import Any

from service.api.routes import JSON, ROUTES, Reply, Route
from service.api.support import API_SCHEMAS, schema

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
    503: "A renderer (Graphviz) is unavailable.",
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


def _operation(route: Route) -> dict[str, Any]:
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in _path_names(route.path)]
    parameters += [{"name": p.name, "in": "query", "required": p.required, "description": p.description,
                    "schema": dict(p.schema)} for p in route.query]
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
    elif route.body:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(route.body)}}}
    responses: dict[str, Any] = {}
    by_status: dict[int, list[Reply]] = {}
    for reply in route.replies:
        by_status.setdefault(reply.status, []).append(reply)
    for status, replies in by_status.items():
        responses[str(status)] = _success(replies)
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
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
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
            "schemas": components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A token of TOLLGATE_TOKENS (role=token)."}},
        },
    }
