"""`/notifications`: the outbox (email and SMS) that transitions wrote."""

from __future__ import annotations

from flask import Blueprint, Response, request

from service.api.routes import bind
from service.api.support import reply, runtime
from workflows.exceptions import BadRequest, NotFound

bp = Blueprint("notifications", __name__)


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
    return reply({"items": rt.notifications(instance)})
