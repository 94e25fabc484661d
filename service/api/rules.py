"""`/rules`: the active version, validation only, atomic activation of a new version, the versions
kept, what changed between two of them and what a candidate would change (`/rules/impact`)."""

from __future__ import annotations

import hashlib
import re

from flask import Blueprint, Response, request

from tollgate.service.api.routes import bind
from tollgate.service.api.support import actor, reply, runtime, text_body
from tollgate.service.application.impact import parse_since
from tollgate.service.application.policy_files import load_policy
from tollgate.service.application.rules_files import API_SOURCE
from tollgate.workflows.exceptions import BadRequest, Problem, RulesError

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


@bind(bp)
def impact_rules() -> Response:
    """Replay and re-plan under the candidate in the body; 422 with every problem of a bad one."""
    rt = runtime()
    candidate = load_policy(text_body(), "rules.yaml")  # RulesError: 422 with file, line, column
    since = parse_since(request.args.get("since"), rt.now())
    return reply(rt.rules_impact(candidate, since, name="the candidate").as_dict())


@bind(bp)
def list_rules_versions() -> Response:
    return reply({"items": [v.as_dict() for v in runtime().list_rules_versions()]})


@bind(bp)
def diff_rules() -> Response:
    """What changed from version `from` to version `to`; 404 when either is not stored."""
    old, new = _version("from"), _version("to")
    return reply(runtime().diff_rules_versions(old, new).as_dict())


def _version(name: str) -> int:
    """The rules version number in the query parameter `name` (400 naming it when missing or not one)."""
    value = request.args.get(name)
    if value is None or not value.strip():
        raise BadRequest(f"The query parameter '{name}' is missing; give two version numbers, e.g. "
                         "/rules/diff?from=1&to=2 (GET /rules/versions lists them).",
                         [Problem(f"$.{name}", "required", file="query")])
    if not re.fullmatch(r"[0-9]{1,15}", value.strip()) or int(value) < 1:
        raise BadRequest(f"The query parameter {name}='{value}' is not a rules version number; give a "
                         "whole number of 1 or more (GET /rules/versions lists them).",
                         [Problem(f"$.{name}", f"{value!r} is not a version number", file="query")])
    return int(value)
