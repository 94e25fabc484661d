"""`/healthz`: liveness and the active rules version; the one route without auth."""

from __future__ import annotations

from flask import Blueprint, Response

from tollgate.service.api.routes import bind
from tollgate.service.api.support import reply, runtime

bp = Blueprint("health", __name__)


@bind(bp)
def healthz() -> Response:
    """200 while the database answers; the version tells a deploy which rules are live."""
    return reply({"status": "ok", "rules_version": runtime().active_rules().id})
