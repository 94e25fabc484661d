"""`/notifications`: the outbox (email, SMS, gateway) that transitions wrote, and its redelivery."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, request

from tollgate.service.api.routes import bind
from tollgate.service.api.support import actor, parse_timestamp, reply, runtime
from tollgate.workflows.exceptions import BadRequest, NotFound, Problem

bp = Blueprint("notifications", __name__)


def reveals_secrets(role: str, clock: str | None) -> bool:
    """Whether `role` reads a notification's secret payload fields (the email code) as sent.

    Least privilege: the code proves that the member reads the mailbox, so no caller needs it in
    production, where the outbox is delivered, not read. An operator fires `verify_email` on the
    member's behalf and must not be able to pass it alone, so it sees codes only for instances on
    a test clock (tests and demos, like the README's walk-through); an admin (support) sees
    them; the read-only roles (viewer, policy_editor) never do.
    """
    return role == "admin" or (role == "operator" and clock is not None)


DEFAULT_LIMIT = 50


def _limit() -> int:
    text = request.args.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= 500:
        raise BadRequest(f"The query parameter limit='{text}' is not a whole number from 1 to 500.",
                         [Problem("limit", f"{text!r} is not a whole number from 1 to 500", file="query")])
    return int(text)


def _since() -> datetime | None:
    text = request.args.get("since")
    if text is None:
        return None
    try:
        return parse_timestamp(text, "since")
    except BadRequest as error:
        raise BadRequest(f"The query parameter since='{text}' is not an RFC 3339 timestamp with an offset "
                         "in the supported years; write it like 2025-03-05T12:00:00+09:00.",
                         [Problem("since", error.message, file="query")]) from None


def _existing(name: str) -> str | None:
    """The value of the filter `name` (an instance id): an id of no instance is a bad filter (400)."""
    value = request.args.get(name)
    if value is not None:
        try:
            runtime().get_instance(value)
        except NotFound:
            raise BadRequest(f"The filter {name}='{value}' names no instance; give the id of an "
                             "existing instance.",
                             [Problem(name, "names no instance", file="query")]) from None
    return value


@bind(bp)
def list_notifications() -> Response:
    """A page of the outbox, oldest first, filtered like `GET /instances`."""
    args = request.args
    role = actor()
    page = runtime().notification_page(
        instance=_existing("instance"), account=_existing("account"), channel=args.get("channel"),
        template=args.get("template"), state=args.get("state"), since=_since(), limit=_limit(),
        cursor=args.get("cursor"), reveal=lambda clock: reveals_secrets(role, clock))
    return reply(page)

def _notification_id(id: str) -> int:
    if not id.isascii() or not id.isdigit() or len(id) > 18:
        raise NotFound(f"There is no notification '{id}'; notification ids are whole numbers.")
    return int(id)


@bind(bp)
def attempts(id: str) -> Response:
    """The delivery attempts of notification `id` (time, result, the receiver's status, detail)."""
    return reply({"items": runtime().outbox.attempts(_notification_id(id))})


@bind(bp)
def redeliver(id: str) -> Response:
    """Queue notification `id` for delivery again (operator, admin); 404 for an unknown id."""
    return reply(runtime().redeliver(_notification_id(id)))
