"""`/workflows`: definitions with the rule ids bound to them, and their diagrams."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from tollgate.service.api.routes import bind
from tollgate.service.api.support import reply, runtime
from tollgate.service.svg import render_svg
from tollgate.workflows.definitions import CREATE_EVENT, Definition
from tollgate.workflows.diagrams import to_dot, to_mermaid, workflow_diagram
from tollgate.workflows.exceptions import BadRequest, NotFound
from tollgate.workflows.policy import Policy

bp = Blueprint("workflows", __name__)

MEDIA = {"mermaid": "text/vnd.mermaid", "dot": "text/vnd.graphviz", "svg": "image/svg+xml"}


def _active_policy() -> tuple[Policy, int]:
    rt = runtime()
    version = rt.active_rules()
    return rt.engine_for(version).policy, version.id


def _guard_ids(policy: Policy, workflow: str, event: str) -> list[str]:
    return [r.id for r in policy.rules_for(workflow, event) if r.enabled]


def describe(definition: Definition, policy: Policy, rules_version: int) -> dict[str, Any]:
    """A definition as JSON, with the rules of the active version bound to each event."""
    name = definition.name
    return {
        "name": name, "description": definition.description, "initial": definition.initial,
        "references_account": definition.references_account,
        "states": [{"name": s.name, "description": s.description, "final": s.final}
                   for s in definition.states],
        "events": [{"name": e.name, "description": e.description, "timed": e.timed,
                    "roles": list(e.roles), "data": dict(e.data_schema),
                    "rules": _guard_ids(policy, name, e.name)}
                   for e in definition.events.values()],
        "transitions": [{"event": t.event, "from": t.source, "to": t.target, "when": t.when,
                         "internal": t.dest is None} for t in definition.transitions],
        "create_rules": _guard_ids(policy, name, CREATE_EVENT),
        "timers": [{"id": t.id, "event": t.event, "states": sorted(t.states)}
                   for t in policy.timers_of(name)],
        "rules_version": rules_version,
    }


def _definition(policy: Policy, wf: str) -> Definition:
    definition = policy.definitions.get(wf)
    if definition is None:
        raise NotFound(f"There is no workflow '{wf}'; workflows: {', '.join(policy.definitions)}.")
    return definition


@bind(bp)
def list_workflows() -> Response:
    policy, version = _active_policy()
    return reply({"items": [describe(d, policy, version) for d in policy.definitions.values()]})


@bind(bp)
def get_workflow(wf: str) -> Response:
    policy, version = _active_policy()
    return reply(describe(_definition(policy, wf), policy, version))


@bind(bp)
def diagram(wf: str) -> Response:
    """Mermaid, DOT or SVG of the workflow under the active rules; `instance=` highlights its state."""
    fmt = request.args.get("format", "mermaid")
    if fmt not in MEDIA:
        raise BadRequest(f"The diagram format '{fmt}' is not known; use format=mermaid, dot or svg.")
    policy, _ = _active_policy()
    _definition(policy, wf)
    highlight = None
    instance_id = request.args.get("instance")
    if instance_id is not None:
        instance = runtime().get_instance(instance_id)
        if instance["workflow"] != wf:
            raise BadRequest(f"The instance '{instance_id}' is a {instance['workflow']} instance, not "
                             f"{wf}; ask for /workflows/{instance['workflow']}/diagram instead.")
        highlight = instance["state"]
    ir = workflow_diagram(policy, wf, highlight=highlight)
    body: str | bytes
    if fmt == "mermaid":
        body = to_mermaid(ir)
    elif fmt == "dot":
        body = to_dot(ir)
    else:
        body = render_svg(to_dot(ir))
    media = MEDIA[fmt] + ("" if fmt == "svg" else "; charset=utf-8")
    return Response(body, status=200, content_type=media)
