"""`/rules`: the active version, validation only, atomic activation of a new version (now or at
`effective_at`), the versions kept, what changed between two of them, what a candidate would
change (`/rules/impact`), cancelling a scheduled version and re-activating an earlier one."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from flask import Blueprint, Response, request

from tollgate.service.api.routes import bind
from tollgate.service.api.support import RFC3339, actor, reply, runtime, text_body
from tollgate.service.application.impact import parse_since
from tollgate.service.application.policy_files import load_policy
from tollgate.service.application.rules_files import API_SOURCE
from tollgate.workflows import limits
from tollgate.workflows.exceptions import BadRequest, NotFound, Problem, RulesError

bp = Blueprint("rules", __name__)


@bind(bp)
def get_rules() -> Response:
    """The version in effect now, and the versions scheduled to take effect later (soonest first)."""
    rt = runtime()
    body = rt.active_rules().as_dict()
    body["scheduled"] = [{k: v for k, v in version.as_dict().items() if k != "yaml"}
                         for version in rt.scheduled_rules()]
    return reply(body)


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
    """Activate as a new version, now or from `?effective_at=`; on any problem (422) the old
    version keeps serving (400 when effective_at is not a future RFC 3339 instant)."""
    effective_at = _effective_at()
    version = runtime().activate_rules(text_body(), source=API_SOURCE, actor=actor(),
                                       effective_at=effective_at)
    return reply(version.as_dict())


@bind(bp)
def impact_rules() -> Response:
    """Replay and re-plan under the candidate in the body; 422 with every problem of a bad one."""
    rt = runtime()
    candidate = load_policy(text_body(), "rules.yaml")  # RulesError: 422 with file, line, column
    since = parse_since(request.args.get("since"), rt.now())
    return reply(rt.rules_impact(candidate, since, name="the candidate").as_dict())


@bind(bp)
def cancel_rules_version(n: str) -> Response:
    """Cancel a scheduled version: 409 once it has taken effect (or was cancelled), 404 if none."""
    return reply(runtime().cancel_rules_version(_number(n), actor=actor()).as_dict())


@bind(bp)
def activate_rules_version(n: str) -> Response:
    """Re-activate the text of version `n` as a new version (now, or from `?effective_at=`)."""
    number = _number(n)
    version = runtime().reactivate_rules(number, actor=actor(), effective_at=_effective_at())
    return reply(version.as_dict())


def _effective_at() -> datetime | None:
    """The query parameter `effective_at` (None when absent): an RFC 3339 instant with an offset;
    400 naming it otherwise. (Whether it is in the future is the application's check.)"""
    value = request.args.get("effective_at")
    if value is None:
        return None
    # an unencoded "+09:00" arrives as " 09:00" (a `+` in a query string is a space)
    value = re.sub(r"(:\d{2}(?:\.\d+)?) (\d{2}:\d{2})$", r"\1+\2", value)
    where = [Problem("$.effective_at", f"{value!r} is not an RFC 3339 timestamp with an offset",
                     file="query")]
    if not RFC3339.fullmatch(value):
        raise BadRequest(f"The query parameter effective_at='{value}' is not an RFC 3339 timestamp with an "
                         "offset; write it like 2026-12-01T00:00:00+09:00.", where)
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise BadRequest(f"The query parameter effective_at='{value}' is not a real date and time.",
                         where) from None
    if not limits.year_in_range(moment):
        raise BadRequest(f"The query parameter effective_at='{value}' is outside the supported years "
                         f"{limits.FIRST_YEAR}-{limits.LAST_YEAR}.", where)
    return moment


def _number(value: str) -> int:
    """A version number in the path (404 when it is not one: no such version)."""
    if not re.fullmatch(r"[0-9]{1,15}", value) or int(value) < 1:
        raise NotFound(f"There is no rules version '{value}'; GET /rules/versions lists them.")
    return int(value)


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
