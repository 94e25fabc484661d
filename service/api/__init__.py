"""The HTTP API: one blueprint per resource, every route declared in `routes.ROUTES`."""

from __future__ import annotations

from flask import Blueprint, Flask

from tollgate.service.api import (
    batch,
    clocks,
    health,
    instances,
    notifications,
    openapi,
    rules,
    timers,
    workflows,
)
from tollgate.service.api.routes import ROUTES

BLUEPRINTS: tuple[Blueprint, ...] = (health.bp, workflows.bp, instances.bp, batch.bp, notifications.bp,
                                     clocks.bp, timers.bp, rules.bp, openapi.bp)


def init_app(app: Flask) -> None:
    """Register the blueprints; a row of ROUTES without a view fails here, at start."""
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    bound = {rule.endpoint for rule in app.url_map.iter_rules()}
    missing = [r.endpoint for r in ROUTES if r.endpoint not in bound]
    if missing:
        raise LookupError(f"Routes without a view: {', '.join(missing)}; write them or drop their rows.")
