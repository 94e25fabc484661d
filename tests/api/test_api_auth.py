"""The auth matrix: every route × every role, from the route table, against SPEC §4's roles.

viewer reads; operator reads and works instances, events and clocks; policy_editor reads and
works the rules; gateway only reports events (which ones is checked per event, below); admin does
everything. No token → 401 with a Bearer challenge; a role without
the permission → 403. Requests carry no body, so the allowed ones are refused later (400/422)
and nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.helpers.app import API_TOKENS, make_app
from tests.helpers.client import Client
from tests.helpers.kst import kst_instant
from tollgate.service.api.routes import ROUTES, Route
from tollgate.service.auth import parse_tokens, role_of

READERS = {"viewer", "operator", "policy_editor", "admin"}
OPERATORS = {"operator", "admin"}
EDITORS = {"policy_editor", "admin"}


def allowed_roles(route: Route) -> set[str]:
    """Who SPEC §4 lets call a route, derived from the method and path alone."""
    if route.path == "/metrics":  # Prometheus' own `monitor` token, or any reader of the service
        return {"viewer", "operator", "admin", "monitor"}
    if route.method == "GET":
        return READERS
    if route.path in ("/instances/{id}/events", "/events"):
        return OPERATORS | {"gateway"}
    return EDITORS if route.path.startswith("/rules") else OPERATORS


@pytest.fixture(scope="module")
def concrete(module_app: Flask) -> Iterator[dict[str, str]]:
    """Real ids for the path parameters, made once per backend."""
    api = Client.wsgi(module_app.test_client())
    instance = api.create("signup")["id"]
    clock = api.clock(kst_instant(2025, 3, 5, 12))
    yield {"wf": "signup", "id": instance, "clock": clock}


def _path(route: Route, ids: dict[str, str]) -> str:
    clock_route = route.path.startswith("/clocks/")
    return route.path.replace("{wf}", ids["wf"]).replace("{id}", ids["clock"] if clock_route else ids["id"])


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_for_every_role(module_app: Flask, concrete: dict[str, str], route: Route) -> None:
    api = Client.wsgi(module_app.test_client())
    path = _path(route, concrete)
    if route.permission is None:
        assert api.call(route.method, path, role=None).status_code == 200
        return
    anonymous = api.call(route.method, path, role=None)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.mimetype == "application/problem+json"
    forged = api.call(route.method, path, role=None, headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 401
    assert 'error="invalid_token"' in forged.headers["WWW-Authenticate"]
    for role in API_TOKENS:
        response = api.call(route.method, path, role=role)
        if role in allowed_roles(route):
            assert response.status_code not in (401, 403), (role, response.get_json())
        else:
            assert response.status_code == 403, (role, response.status_code)
            assert role in response.get_json()["detail"]


def test_nothing_changed_after_the_matrix(module_app: Flask, concrete: dict[str, str]) -> None:
    api = Client.wsgi(module_app.test_client())
    assert api.get("/rules").get_json()["version"] == 1
    assert api.get(f"/instances/{concrete['id']}").get_json()["version"] == 1


def test_every_url_rule_is_in_the_route_table(module_app: Flask) -> None:
    declared = {(r.flask_path, r.method) for r in ROUTES}
    for rule in module_app.url_map.iter_rules():
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert (rule.rule, method) in declared, f"{method} {rule.rule} is not in ROUTES"


def test_a_token_is_accepted_only_with_the_bearer_scheme() -> None:
    tokens = parse_tokens("viewer=abc,admin=xyz")
    assert role_of("Bearer abc", tokens) == "viewer"
    assert role_of("bearer xyz", tokens) == "admin"
    assert role_of("Basic abc", tokens) is None
    assert role_of("Bearer ab", tokens) is None
    assert role_of(None, tokens) is None
    assert "xyz" not in repr(tokens)


@pytest.mark.parametrize(("config", "message"), [
    ("root=abc", "not one of"),
    ("admin=", "has no token"),
    ("viewer=same,admin=same", "given twice"),
])
def test_bad_token_configuration_fails_at_start(config: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tokens(config)


def test_without_tokens_every_protected_route_is_401(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'bare.db'}", TOKENS="")
    try:
        client = Client.wsgi(app.test_client(), role=None)
        assert client.get("/healthz").status_code == 200
        response: Any = client.get("/rules", headers={"Authorization": "Bearer "})
        assert response.status_code == 401
    finally:
        app.extensions["tollgate"].db.dispose()
