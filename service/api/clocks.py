"""`/clocks`: test clocks (like Stripe's); advancing one fires every due timer in time order."""

from __future__ import annotations

from flask import Blueprint, Response

from tollgate.service.api.routes import bind
from tollgate.service.api.support import json_body, parse_timestamp, reply, runtime

bp = Blueprint("clocks", __name__)


@bind(bp)
def create_clock() -> Response:
    body = json_body("create_clock")
    clock = runtime().create_clock(parse_timestamp(body["now"], "now"), body.get("id"))
    return reply(clock, 201, {"Location": f"/clocks/{clock['id']}"})


@bind(bp)
def get_clock(id: str) -> Response:
    return reply(runtime().get_clock(id))


@bind(bp)
def advance_clock(id: str) -> Response:
    body = json_body("advance_clock")
    # Timers fire as themselves ("timer"), whoever moved the clock, as the scheduler's do.
    return reply(runtime().advance_clock(id, parse_timestamp(body["to"], "to")))
