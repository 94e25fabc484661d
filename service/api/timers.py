"""`/timers/failed`: timers parked because their event failed at run time (`Sweeps.attempt`)."""

from __future__ import annotations

from flask import Blueprint, Response, request

from tollgate.service.api.routes import bind
from tollgate.service.api.support import reply, runtime

bp = Blueprint("timers", __name__)


@bind(bp)
def list_failed_timers() -> Response:
    """Every parked timer, oldest failure first, or those of one instance or one test clock."""
    return reply({"items": runtime().failed_timers(instance_id=request.args.get("instance"),
                                                   clock_id=request.args.get("clock"))})
