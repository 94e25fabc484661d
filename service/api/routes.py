"""The route table: every HTTP route of SPEC §4 with its permission, body, replies and errors.

This one table drives three things so they cannot drift apart: the Flask URL rules (views bind
to their row with `bind`), the permission check in `service/auth.py`, and `/openapi.json`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint

View = TypeVar("View", bound=Callable[..., Any])

#: Permissions a route may require; `service/auth.py` maps roles onto them.
PERMISSIONS = ("read", "instances", "events", "clocks", "rules", "outbox", "metrics")
JSON = "application/json"


@dataclass(frozen=True)
class Param:
    """A query parameter or request header a route reads."""

    name: str
    description: str
    schema: tuple[tuple[str, Any], ...] = (("type", "string"),)
    required: bool = False


@dataclass(frozen=True)
class Reply:
    """A success response: status, what it means, the schema (or media type) of its body."""

    status: int
    description: str
    schema: str | None = None  # a file name in schemas/api/ without .json
    media: str = JSON
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    """One method on one path; `permission` None means public (only `/healthz` and `/readyz`)."""

    endpoint: str  # blueprint.view
    method: str
    path: str  # OpenAPI style: /instances/{id}
    permission: str | None
    summary: str
    replies: tuple[Reply, ...]
    errors: tuple[int, ...] = ()
    body: str | None = None  # request schema in schemas/api/, or "yaml" for rules text
    query: tuple[Param, ...] = ()
    headers: tuple[Param, ...] = ()

    @property
    def flask_path(self) -> str:
        return re.sub(r"\{(\w+)\}", r"<\1>", self.path)


_ID = (("type", "string"),)
_WF = Param("workflow", "Only instances of this workflow.")
_INSTANCE_REPLY = Reply(200, "The instance.", "instance", headers=("ETag",))
_EFFECTIVE_AT = Param("effective_at", "The instant from which the version judges events and timers (RFC 3339 "
                      "with an offset, after now); without it, now.",
                      (("type", "string"), ("format", "date-time")))

ROUTES: tuple[Route, ...] = (
    Route("health.healthz", "GET", "/healthz", None, "Liveness and the active rules version.",
          (Reply(200, "The service is up.", "health"),)),
    Route("health.readyz", "GET", "/readyz", None,
          "Readiness: the database answers, its schema is at the newest migration, a rules version is "
          "loaded.",
          (Reply(200, "Ready: every check passed.", "ready"),), (503,)),
    Route("health.metrics_text", "GET", "/metrics", "metrics",
          "Prometheus metrics in the text exposition format (summed over every server worker).",
          (Reply(200, "The metrics (prometheus_client's exposition format).", media="text/plain"),)),
    Route("workflows.list_workflows", "GET", "/workflows", "read",
          "Every workflow: states, events, transitions and bound rule ids.",
          (Reply(200, "The workflows.", "workflow_list"),)),
    Route("workflows.get_workflow", "GET", "/workflows/{wf}", "read", "One workflow definition.",
          (Reply(200, "The workflow.", "workflow"),), (404,)),
    Route("workflows.diagram", "GET", "/workflows/{wf}/diagram", "read",
          "The workflow as a diagram; the instance's current state highlighted when one is given.",
          (Reply(200, "Mermaid stateDiagram-v2 text.", media="text/vnd.mermaid"),
           Reply(200, "Graphviz DOT text.", media="text/vnd.graphviz"),
           Reply(200, "SVG rendered by Graphviz.", media="image/svg+xml")),
          (400, 404, 503),
          query=(Param("format", "mermaid (default), dot or svg.",
                       (("enum", ["mermaid", "dot", "svg"]),)),
                 Param("instance", "Highlight this instance's current state."))),
    Route("instances.create_instance", "POST", "/workflows/{wf}/instances", "instances",
          "Create an instance of the workflow.",
          (Reply(201, "The new instance.", "instance", headers=("Location", "ETag")),),
          (400, 404, 409, 422), body="create_instance"),
    Route("instances.list_instances", "GET", "/instances", "read", "Instances, oldest first, paginated.",
          (Reply(200, "A page of instances.", "instance_list"),), (400,),
          query=(_WF, Param("state", "Only instances in this state."),
                 Param("account", "Only this account and the instances that reference it."),
                 Param("limit", "Page size, 1 to 500 (default 50).",
                       (("type", "integer"), ("minimum", 1), ("maximum", 500))),
                 Param("cursor", "The next_cursor of the previous page."))),
    Route("instances.get_instance", "GET", "/instances/{id}", "read", "One instance.",
          (_INSTANCE_REPLY,), (404,)),
    Route("instances.fire", "POST", "/instances/{id}/events", "events",
          "Fire an event; with dry_run=true only say what it would do.",
          (Reply(200, "The instance after the event.", "instance", headers=("ETag", "Idempotent-Replayed")),
           Reply(200, "With dry_run=true: whether the event would apply, and why not.", "dry_run")),
          (400, 403, 404, 409, 412, 422), body="fire_event",
          query=(Param("dry_run", "true: evaluate without applying.", (("type", "boolean"),)),),
          headers=(Param("Idempotency-Key", "Replaying the same key returns the first response."),
                   Param("If-Match", 'The instance version as an ETag ("3"); 412 when stale.'))),
    Route("batch.fire_events", "POST", "/events", "events",
          "Fire a batch of up to 1,000 events (a payment gateway's settlement file), each answered as "
          "POST /instances/{id}/events would answer it alone; every answered event is committed.",
          (Reply(200, "One result per event, in order: its status and body.", "event_results"),),
          (400,), body="fire_events"),
    Route("instances.history", "GET", "/instances/{id}/history", "read",
          "Every attempt on the instance, applied or denied, in order.",
          (Reply(200, "The history.", "history"),), (404,)),
    Route("notifications.list_notifications", "GET", "/notifications", "read",
          "The notification outbox, oldest first, paginated and filtered like /instances.",
          (Reply(200, "A page of notifications, oldest first.", "notification_list"),), (400,),
          query=(Param("instance", "Only notifications of this instance."),
                 Param("account", "Only notifications of this account and of the instances that "
                       "reference it."),
                 Param("channel", "Only this channel (email, sms, gateway)."),
                 Param("template", "Only this template (e.g. charge_request)."),
                 Param("state", "Only this delivery state.",
                       (("enum", ["pending", "delivered", "retrying", "dead"]),)),
                 Param("since", "Only notifications created at or after this RFC 3339 time.",
                       (("type", "string"), ("format", "date-time"))),
                 Param("limit", "Page size, 1 to 500 (default 50).",
                       (("type", "integer"), ("minimum", 1), ("maximum", 500))),
                 Param("cursor", "The next_cursor of the previous page."))),
    Route("notifications.attempts", "GET", "/notifications/{id}/attempts", "read",
          "Every delivery attempt of a notification, oldest first.",
          (Reply(200, "The attempts.", "notification_attempts"),), (404,)),
    Route("notifications.redeliver", "POST", "/notifications/{id}/redeliver", "outbox",
          "Send a notification again: pending now, with a fresh retry window; its attempts stay logged.",
          (Reply(200, "The notification's delivery, pending again.", "redelivery"),), (404,)),
    Route("timers.list_failed_timers", "GET", "/timers/failed", "read",
          "Parked timers: the rules failed on their event at run time, so they do not fire by themselves.",
          (Reply(200, "The parked timers, oldest failure first.", "failed_timer_list"),),
          query=(Param("instance", "Only the timers of this instance."),
                 Param("clock", "Only the timers of this test clock."))),
    Route("clocks.create_clock", "POST", "/clocks", "clocks", "Create a test clock.",
          (Reply(201, "The new clock.", "clock", headers=("Location",)),), (400, 409),
          body="create_clock"),
    Route("clocks.get_clock", "GET", "/clocks/{id}", "read", "A test clock.",
          (Reply(200, "The clock.", "clock"),), (404,)),
    Route("clocks.advance_clock", "POST", "/clocks/{id}/advance", "clocks",
          "Advance a test clock, firing every due timer in time order.",
          (Reply(200, "The clock, the counts of the timers fired per event and outcome, and the first "
                 "page of them (next_cursor: the rest).", "clock"),), (400, 404, 409, 422),
          body="advance_clock"),
    Route("clocks.list_fired", "GET", "/clocks/{id}/fired", "read",
          "The next page of the timers an advance fired, read from the history.",
          (Reply(200, "A page of fired timers.", "fired_page"),), (400, 404),
          query=(Param("cursor", "The next_cursor of the advance or of the previous page.", required=True),
                 Param("limit", "Page size, 1 to 500 (default 500).",
                       (("type", "integer"), ("minimum", 1), ("maximum", 500))))),
    Route("rules.get_rules", "GET", "/rules", "read",
          "The rules version in effect now, with the versions scheduled to take effect later.",
          (Reply(200, "The rules in effect, and `scheduled` (soonest first).", "rules_version"),)),
    Route("rules.list_rules_versions", "GET", "/rules/versions", "read",
          "Every rules version the database keeps, newest first, with when each takes effect and its status.",
          (Reply(200, "The versions.", "rules_version_list"),)),
    Route("rules.diff_rules", "GET", "/rules/diff", "read",
          "What changed in policy terms from one rules version to another (as `tollgate rules diff "
          "--json`): params, rules, timers, and the workflow events and transitions they touch.",
          (Reply(200, "The changes; every list empty when the versions are the same policy.", "rules_diff"),),
          (400, 404),
          query=(Param("from", "The older version's number (see /rules/versions).",
                       (("type", "integer"), ("minimum", 1)), required=True),
                 Param("to", "The newer version's number.", (("type", "integer"), ("minimum", 1)),
                       required=True))),
    Route("rules.validate_rules", "POST", "/rules/validate", "rules", "Validate a rules.yaml text only.",
          (Reply(200, "The rules are valid.", "rules_valid"),), (422,), body="yaml"),
    Route("rules.put_rules", "PUT", "/rules", "rules",
          "Validate a rules.yaml text, then activate it as a new version: now, or from `effective_at`.",
          (Reply(200, "The new version.", "rules_version"),), (400, 422), body="yaml",
          query=(_EFFECTIVE_AT,)),
    Route("rules.impact_rules", "POST", "/rules/impact", "rules",
          "Impact of a candidate rules.yaml text before activation (as `tollgate rules impact --json`): "
          "the recorded attempts of the window replayed under it (with the self-check under the versions "
          "that judged them) and the pending timers whose due time would move, appear or disappear. "
          "Nothing is activated or written.",
          (Reply(200, "The impact report; `changed` is false when nothing would change.", "rules_impact"),),
          (400, 422), body="yaml",
          query=(Param("since", "The window: a duration (30d, 12h, 90m), an RFC 3339 instant, or `all` "
                       "(default 30d)."),)),
    Route("rules.cancel_rules_version", "POST", "/rules/versions/{n}/cancel", "rules",
          "Cancel a scheduled version before it takes effect (409 once it has, or if cancelled already).",
          (Reply(200, "The cancelled version.", "rules_version"),), (404, 409)),
    Route("rules.activate_rules_version", "POST", "/rules/versions/{n}/activate", "rules",
          "Activate an earlier version's text again, as a new version (its source names the earlier "
          "one): now, or from `effective_at`.",
          (Reply(200, "The new version.", "rules_version"),), (400, 404, 422), query=(_EFFECTIVE_AT,)),
    Route("openapi.openapi", "GET", "/openapi.json", "read", "This OpenAPI 3.1 description.",
          (Reply(200, "The OpenAPI document."),)),
)

BY_ENDPOINT: dict[str, Route] = {r.endpoint: r for r in ROUTES}


def bind(blueprint: Blueprint) -> Callable[[View], View]:
    """Register a view under its row of ROUTES (`blueprint.function`); unknown views fail at import."""

    def decorate(view: View) -> View:
        endpoint = f"{blueprint.name}.{view.__name__}"
        route = BY_ENDPOINT.get(endpoint)
        if route is None:
            raise LookupError(f"The view {endpoint} has no row in service/api/routes.py ROUTES; add one.")
        blueprint.add_url_rule(route.flask_path, view_func=view, methods=[route.method])
        return view

    return decorate
