"""`/notifications`: the outbox (email, SMS, gateway) that transitions wrote, and its redelivery."""

from __future__ import annotations

from flask import Blueprint, Response, request

from tollgate.service.api.routes import bind
from tollgate.service.api.support import actor, reply, runtime
from tollgate.workflows.exceptions import BadRequest, NotFound

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


@bind(bp)
def list_notifications() -> Response:
    """All notifications, or one instance's; an unknown instance is a bad filter (400)."""
    instance = request.args.get("instance")
    rt = runtime()
    if instance is not None:
        try:
            rt.get_instance(instance)
        except NotFound:
            raise BadRequest(f"The filter instance='{instance}' names no instance; give the id of an "
                             "existing instance.") from None
    role = actor()
    return reply({"items": rt.notifications(instance, reveal=lambda clock: reveals_secrets(role, clock))})


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
