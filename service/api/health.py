"""`/healthz` (liveness), `/readyz` (readiness) and `/metrics` (Prometheus text).

`/healthz` and `/readyz` need no token: probes (a load balancer's, Kubernetes') rarely carry one,
and they say nothing but the check names. `/metrics` needs a token whose role has the `metrics`
permission: the `monitor` role (a token for Prometheus that can read nothing else) or any reader
of the service (viewer, operator, admin).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response
from sqlalchemy import text

from tollgate.service import metrics
from tollgate.service.api.routes import bind
from tollgate.service.api.support import reply, runtime

bp = Blueprint("health", __name__)
log = logging.getLogger("tollgate.api")


@bind(bp)
def healthz() -> Response:
    """200 while the database answers; the version tells a deploy which rules are live."""
    return reply({"status": "ok", "rules_version": runtime().active_rules().id})


def _checks() -> dict[str, dict[str, Any]]:
    """Each readiness check: {"ok": bool, "detail": sentence}. A failing check's error is logged
    (it may name hosts) and answered as a sentence only."""
    rt = runtime()
    checks: dict[str, dict[str, Any]] = {}
    try:
        with rt.db.read() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True, "detail": "The database answers."}
    except Exception as error:  # any failure is "not ready", said in the reply
        log.warning("readyz: the database does not answer: %s", type(error).__name__)
        checks["database"] = {"ok": False, "detail": "The database does not answer."}
        checks["migrations"] = {"ok": False, "detail": "Not checked: the database does not answer."}
        checks["rules"] = {"ok": False, "detail": "Not checked: the database does not answer."}
        return checks
    try:
        current, head = rt.db.migration_status()
        stale = (f"The schema is at migration {current}, not the newest {head}; run `tollgate serve` (it "
                 "migrates) or wait for the deploy.")
        checks["migrations"] = ({"ok": True, "detail": f"The schema is at the newest migration {head}."}
                                if current == head else {"ok": False, "detail": stale})
    except Exception as error:
        log.warning("readyz: cannot read the migration status: %s", type(error).__name__)
        checks["migrations"] = {"ok": False, "detail": "The migration status cannot be read."}
    try:
        with rt.db.read() as conn:
            version = rt.versions.active(conn)  # its engine compiled (the first time, here)
        checks["rules"] = {"ok": True, "detail": f"The rules version {version.id} is loaded."}
    except Exception as error:
        log.warning("readyz: no rules loaded: %s", error)
        checks["rules"] = {"ok": False, "detail": "No rules version is active and loaded."}
    return checks


@bind(bp)
def readyz() -> Response:
    """200 when every check passes; 503 naming the ones that failed."""
    checks = _checks()
    failed = [name for name, check in checks.items() if not check["ok"]]
    if failed:
        return reply({"type": "https://tollgate.dev/problems/not_ready", "title": "Not ready", "status": 503,
                      "detail": f"Not ready: the check(s) {', '.join(failed)} failed.", "failed": failed,
                      "checks": checks}, 503)
    return reply({"status": "ready", "checks": checks})


def _gauges() -> dict[str, tuple[str, list[tuple[dict[str, str], float]]]]:
    rt = runtime()
    backlogs = rt.reads.backlogs(rt.now())
    version = rt.active_rules()
    return {
        "tollgate_due_timers": ("Real-time timers due and not yet fired (the scheduler's backlog).",
                                [({}, backlogs["due_timers"])]),
        "tollgate_outbox_backlog": ("Notifications not yet delivered, by channel.",
                                    [({"channel": c}, n) for c, n in sorted(backlogs["outbox"].items())]),
        "tollgate_rules_version": ("The active rules version (its number; sha256 as a label).",
                                   [({"sha256": version.sha256}, version.id)]),
    }


@bind(bp)
def metrics_text() -> Response:
    return Response(metrics.exposition(_gauges), mimetype=None, content_type=metrics.CONTENT_TYPE)
