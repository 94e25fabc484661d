"""Bearer-token auth: `TOLLGATE_TOKENS="role=token,…"`, five roles, one permission per route.

Every route but `/healthz` and `/readyz` needs a token (401 with `WWW-Authenticate: Bearer` without a valid
one) whose role grants the route's permission from `service/api/routes.py` (403 otherwise).
Tokens are compared in constant time and never logged; the role is the actor in the history.

Firing an event is also checked per event, with the role found here, by the application once it
knows the instance's workflow (`service/application/roles.py`), for real calls and dry runs alike.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Flask, current_app, g, request

from tollgate.service.api.routes import BY_ENDPOINT, PERMISSIONS
from tollgate.service.application.roles import EVENT_LIMITS, TIMER_ROLES, event_refusal  # noqa: F401
from tollgate.workflows.exceptions import TollgateError

ROLES: Mapping[str, frozenset[str]] = {
    "viewer": frozenset({"read", "metrics"}),
    "operator": frozenset({"read", "instances", "events", "clocks", "outbox", "metrics"}),
    "policy_editor": frozenset({"read", "rules"}),
    # The payment gateway reports results (EVENT_LIMITS); the reply to its report is all it reads.
    "gateway": frozenset({"events"}),
    "admin": frozenset(PERMISSIONS),
    # Prometheus: scrapes /metrics and reads nothing else.
    "monitor": frozenset({"metrics"}),
}
CHALLENGE = 'Bearer realm="tollgate"'


class Unauthenticated(TollgateError):
    """No valid bearer token (401); `headers` carries the `WWW-Authenticate` challenge."""

    status = 401
    type_slug = "unauthenticated"
    title = "Unauthenticated"

    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(TollgateError):
    """A valid token whose role does not grant the route's permission (403)."""

    status = 403
    type_slug = "forbidden"
    title = "Forbidden"


@dataclass(frozen=True)
class Token:
    role: str
    secret: bytes

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"Token(role={self.role!r})"


def parse_tokens(text: str | None) -> tuple[Token, ...]:
    """`"admin=t1,viewer=t2"` → tokens; an unknown role or an empty token fails at start."""
    tokens: list[Token] = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        role, sep, secret = item.strip().partition("=")
        role, secret = role.strip(), secret.strip()
        if not sep or not secret:
            raise ValueError(f"The TOLLGATE_TOKENS entry for '{role}' has no token; write role=token.")
        if role not in ROLES:
            raise ValueError(f"The role '{role}' in TOLLGATE_TOKENS is not one of {', '.join(ROLES)}.")
        if any(hmac.compare_digest(t.secret, secret.encode()) for t in tokens):
            raise ValueError(f"A token of TOLLGATE_TOKENS (role '{role}') is given twice; give every "
                             "role its own token.")
        tokens.append(Token(role, secret.encode()))
    return tuple(tokens)


def generate_admin_token() -> str:
    """A fresh random token, for `serve` to print once when no tokens are configured."""
    return secrets.token_urlsafe(32)


def role_of(header: str | None, tokens: tuple[Token, ...]) -> str | None:
    """The role whose token the `Authorization: Bearer` header carries, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    offered = value.strip().encode()
    found = None
    for token in tokens:  # compare against every token so timing says nothing about which matched
        if hmac.compare_digest(token.secret, offered):
            found = token.role
    return found


def allowed(role: str, permission: str | None) -> bool:
    return permission is None or permission in ROLES[role]


def _authenticate() -> None:
    route = BY_ENDPOINT.get(request.endpoint or "")
    if route is None or route.permission is None or request.method == "OPTIONS":
        return  # public, Flask's own 404/405, or an OPTIONS answer that only lists methods
    tokens: tuple[Token, ...] = current_app.extensions["tollgate.tokens"]
    role = role_of(request.headers.get("Authorization"), tokens)
    if role is None:
        if not request.headers.get("Authorization"):
            raise Unauthenticated("This route needs an Authorization: Bearer <token> header.", CHALLENGE)
        raise Unauthenticated("The bearer token is not valid; send a token of TOLLGATE_TOKENS.",
                              CHALLENGE + ', error="invalid_token"')
    if not allowed(role, route.permission):
        granted = [r for r in ROLES if allowed(r, route.permission)]
        raise Forbidden(f"The role '{role}' may not {route.method} {route.path}; it needs one of: "
                        f"{', '.join(granted)}.")
    g.role = role


def init_app(app: Flask) -> None:
    """Parse the configured tokens and check every request before its view runs."""
    app.extensions["tollgate.tokens"] = parse_tokens(app.config.get("TOKENS"))
    app.before_request(_authenticate)
