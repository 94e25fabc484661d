"""`/rules`: the active version, validation only, and atomic activation of a new version."""

from __future__ import annotations

import hashlib

from flask import Blueprint, Response

from tollgate.service.api.routes import bind
from tollgate.service.api.support import actor, reply, runtime, text_body
from tollgate.service.application.rules_files import API_SOURCE
from tollgate.workflows.exceptions import RulesError

bp = Blueprint("rules", __name__)


@bind(bp)
def get_rules() -> Response:
    return reply(runtime().active_rules().as_dict())


@bind(bp)
def validate_rules() -> Response:
    """200 `{valid: true}`, or 422 listing every problem with path, line and column."""
    text = text_body()
    problems = runtime().validate_rules(text, "rules.yaml")
    if problems:
        raise RulesError(problems)
    return reply({"valid": True, "sha256": hashlib.sha256(text.encode()).hexdigest()})


@bind(bp)
def put_rules() -> Response:
    """Activate as a new version; on any problem (422) the old version keeps serving."""
    version = runtime().activate_rules(text_body(), source=API_SOURCE, actor=actor())
    return reply(version.as_dict())
