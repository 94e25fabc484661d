"""The Flask app factory: config (defaults → environment → test overrides), runtime, blueprints."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request

from service import api, auth, errors
from service.db import DEFAULT_URL, Database
from service.parallel import auto_workers
from service.runtime import Runtime, system_now
from workflows.exceptions import BadRequest

log = logging.getLogger("tollgate.api")

#: Environment variables read by `create_app`, and the config key each one sets.
ENVIRONMENT = {"TOLLGATE_DATABASE_URL": "DATABASE_URL", "TOLLGATE_RULES": "RULES",
               "TOLLGATE_TOKENS": "TOKENS", "TOLLGATE_BATCH_WORKERS": "BATCH_WORKERS",
               "TOLLGATE_SECRET_KEY": "SECRET_KEY"}  # keys idempotency fingerprints (Runtime.fingerprint)
DEFAULTS: dict[str, Any] = {
    "DATABASE_URL": DEFAULT_URL,
    "RULES": "rules.yaml",
    "TOKENS": "",
    # processes that judge a big clock advance or batch of events on a SQLite file (service/parallel.py):
    # "auto" is one per core, at most 2 (`parallel.auto_workers`); 1 keeps it all in the server's process
    "BATCH_WORKERS": "auto",
    "NOW": None,  # a callable returning an aware datetime; tests pin real time with it
    "MAX_CONTENT_LENGTH": 1024 * 1024,
}


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: migrate the database, import the rules file if it changed since its last
    import, wire the API."""
    app = Flask(__name__, static_folder=None)  # every route is in ROUTES, behind auth
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping({key: os.environ[var] for var, key in ENVIRONMENT.items() if var in os.environ})
    if test_config is not None:
        app.config.from_mapping(test_config)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]  # Korean messages stay readable
    app.json.sort_keys = False  # type: ignore[attr-defined]

    runtime = Runtime(Database(app.config["DATABASE_URL"]), now=app.config["NOW"] or system_now,
                      workers=_batch_workers(app.config["BATCH_WORKERS"]),
                      secret_key=app.config.get("SECRET_KEY") or None)
    # strict=False: a gunicorn worker (re)started while the rules file has problems keeps serving
    # the active version; `tollgate serve` and `tollgate worker` refuse such a file before this.
    runtime.bootstrap(app.config["RULES"], strict=False)
    app.extensions["tollgate"] = runtime

    errors.init_app(app)
    auth.init_app(app)
    api.init_app(app)
    app.before_request(_refuse_nul)
    app.before_request(_start_timer)
    app.after_request(_log_request)
    return app


def _batch_workers(value: Any) -> int:
    if value == "auto":
        return auto_workers()
    try:
        workers = int(value)
    except (TypeError, ValueError):
        workers = 0
    if workers < 1:
        raise ValueError(f"TOLLGATE_BATCH_WORKERS must be \"auto\" or a whole number of at least 1, "
                         f"not {value!r}.")
    return workers


def _refuse_nul() -> None:
    """Refuse U+0000 anywhere in a request: PostgreSQL cannot store it, and no field needs it."""
    raw = request.get_data(cache=True)
    if ("\x00" in request.path or b"%00" in request.query_string or b"\x00" in request.query_string
            or b"\x00" in raw or b"\\u0000" in raw):
        raise BadRequest("The request contains a NUL character (U+0000) in its path, query or body; "
                         "remove it and send the request again.")


def _start_timer() -> None:
    if log.isEnabledFor(logging.INFO):
        g.started = time.perf_counter()


def _log_request(response: Response) -> Response:
    """One line per request: method, path, status, role — never headers, query or body."""
    if log.isEnabledFor(logging.INFO):  # skip the look-ups when nobody listens (gunicorn's default)
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        log.info("%s %s %s role=%s %.1fms", request.method, request.path, response.status_code,
                 g.get("role", "-"), elapsed)
    return response
