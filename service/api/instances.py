"""Instances: create, read, list, fire events (If-Match, Idempotency-Key, dry run), history."""

from __future__ import annotations

from flask import Blueprint, Response, request

from tollgate.service.api.routes import bind
from tollgate.service.api.support import actor, etag, flag, json_body, parse_if_match, reply, runtime
from tollgate.workflows.exceptions import BadRequest

bp = Blueprint("instances", __name__)

DEFAULT_LIMIT = 50
MAX_KEY_LENGTH = 200


@bind(bp)
def create_instance(wf: str) -> Response:
    body = json_body("create_instance")
    instance = runtime().create_instance(wf, body["context"], instance_id=body.get("id"),
                                         clock=body.get("clock"), actor=actor())
    return reply(instance, 201, {"Location": f"/instances/{instance['id']}",
                                 "ETag": etag(instance["version"])})


@bind(bp)
def get_instance(id: str) -> Response:
    instance = runtime().get_instance(id)
    return reply(instance, headers={"ETag": etag(instance["version"])})


def _limit() -> int:
    text = request.args.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"The limit '{text}' is not a whole number; give 1 to 500.") from None


@bind(bp)
def list_instances() -> Response:
    args = request.args
    page = runtime().list_instances(workflow=args.get("workflow") or None, state=args.get("state") or None,
                                    account=args.get("account") or None, limit=_limit(),
                                    cursor=args.get("cursor") or None)
    return reply(page)


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise BadRequest(f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} characters; "
                         "use a fresh UUID per request.")
    return key


@bind(bp)
def fire(id: str) -> Response:
    """Fire an event; a replayed Idempotency-Key returns the stored status and body unchanged."""
    dry_run = flag("dry_run")
    if_match = parse_if_match(request.headers.get("If-Match"))
    key = _idempotency_key()
    body = json_body("fire_event")
    data = body.get("data", {})
    fingerprint = None if key is None else runtime().fingerprint(request.method, request.path, body)
    result = runtime().fire(id, body["event"], data, actor=actor(), role=actor(), if_match=if_match,
                            dry_run=dry_run,
                            idempotency_key=key, fingerprint=fingerprint)
    headers = {}
    if result.status == 200 and not dry_run and "version" in result.body:
        headers["ETag"] = etag(result.body["version"])
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return reply(result.body, result.status, headers)


@bind(bp)
def history(id: str) -> Response:
    return reply({"items": runtime().history(id)})
