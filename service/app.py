"""The Flask app factory: config (defaults → environment → test overrides), runtime, blueprints."""

from __future__ import annotations

import io
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request

from tollgate.bundled import default_rules_path
from tollgate.service import api, auth, errors
from tollgate.service.application.parallel import auto_workers
from tollgate.service.application.runtime import Runtime, system_now
from tollgate.service.storage.db import DEFAULT_URL, Database
from tollgate.workflows.exceptions import BadRequest

log = logging.getLogger("tollgate.api")
#: An `X-Request-Id` a client or proxy sends is kept if it looks like an id; otherwise one is made.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: Environment variables read by `create_app`, and the config key each one sets.
ENVIRONMENT = {"TOLLGATE_DATABASE_URL": "DATABASE_URL", "TOLLGATE_RULES": "RULES",
               "TOLLGATE_TOKENS": "TOKENS", "TOLLGATE_BATCH_WORKERS": "BATCH_WORKERS",
               "TOLLGATE_SECRET_KEY": "SECRET_KEY",  # keys idempotency fingerprints (Idempotency.fingerprint)
               "TOLLGATE_MAX_BODY_BYTES": "MAX_CONTENT_LENGTH"}
DEFAULTS: dict[str, Any] = {
    "DATABASE_URL": DEFAULT_URL,
    "RULES": None,  # None: ./rules.yaml if there is one, else the bundled policy (tollgate.bundled)
    "TOKENS": "",
    # processes that judge a big clock advance or batch of events on a SQLite file (application/parallel.py):
    # "auto" is one per core, at most 2 (`parallel.auto_workers`); 1 keeps it all in the server's process
    "BATCH_WORKERS": "auto",
    "NOW": None,  # a callable returning an aware datetime; tests pin real time with it
    # the largest request body accepted (bytes); a longer one is refused with 413, chunked or not
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
    app.config["MAX_CONTENT_LENGTH"] = max_body(app.config["MAX_CONTENT_LENGTH"])
    app.json.ensure_ascii = False  # type: ignore[attr-defined]  # Korean messages stay readable
    app.json.sort_keys = False  # type: ignore[attr-defined]

    runtime = Runtime(Database(app.config["DATABASE_URL"]), now=app.config["NOW"] or system_now,
                      workers=_batch_workers(app.config["BATCH_WORKERS"]),
                      secret_key=app.config.get("SECRET_KEY") or None)
    # strict=False: a gunicorn worker (re)started while the rules file has problems keeps serving
    # the active version; `tollgate serve` and `tollgate worker` refuse such a file before this.
    runtime.bootstrap(app.config["RULES"] or default_rules_path(), strict=False)
    app.extensions["tollgate"] = runtime

    app.before_request(_start_request)  # first: a refused request (401, 400) is logged too
    errors.init_app(app)
    auth.init_app(app)
    api.init_app(app)
    app.wsgi_app = _WholeBody(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])  # type: ignore[method-assign]
    app.before_request(_refuse_nul)
    app.after_request(_log_request)
    return app


def _batch_workers(value: Any) -> int:
    if value == "auto":
        return auto_workers()
    return _positive_int(value, f"TOLLGATE_BATCH_WORKERS must be \"auto\" or a whole number of at least 1, "
                                f"not {value!r}.")


def max_body(value: Any) -> int:
    return _positive_int(value, f"TOLLGATE_MAX_BODY_BYTES must be a whole number of bytes, at least 1, not "
                                f"{value!r}; the default is {DEFAULTS['MAX_CONTENT_LENGTH']} (1 MiB).")


def _positive_int(value: Any, refusal: str) -> int:
    """`value` as a whole number of at least 1; otherwise ValueError(`refusal`)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(refusal)
    return number


class _WholeBody:
    """WSGI middleware: a body sent without Content-Length (chunked) is read here, at most `limit`
    + 1 bytes, and passed on with its length, so Werkzeug answers an over-limit body with 413.

    Werkzeug wraps such a stream in `LimitedStream(limit, is_max=True)`, whose `read()` stops at the
    limit without a word: a 2 MiB chunked `rules.yaml` was cut at 1 MiB and activated. gunicorn's
    workers and `service/buffering.py` both terminate the input stream (`wsgi.input_terminated`);
    the latter de-chunks bodies itself, so this only acts under other servers.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            stream, chunks, size = environ["wsgi.input"], [], 0
            while size <= self.limit:
                chunk = stream.read(min(65536, self.limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            environ = {k: v for k, v in environ.items() if k != "HTTP_TRANSFER_ENCODING"}
            environ.update({"wsgi.input": io.BytesIO(b"".join(chunks)), "CONTENT_LENGTH": str(size)})
        return self.app(environ, start_response)


def _refuse_nul() -> None:
    """Refuse U+0000 anywhere in a request: PostgreSQL cannot store it, and no field needs it."""
    raw = request.get_data(cache=True)
    if ("\x00" in request.path or b"%00" in request.query_string or b"\x00" in request.query_string
            or b"\x00" in raw or b"\\u0000" in raw):
        raise BadRequest("The request contains a NUL character (U+0000) in its path, query or body; "
                         "remove it and send the request again.")


def _start_request() -> None:
    """The request's id (the client's `X-Request-Id` if it is a plain token) and start time."""
    offered = request.headers.get("X-Request-Id")
    g.request_id = offered if offered is not None and REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
    g.started = time.perf_counter()


def _log_request(response: Response) -> Response:
    """One line per request: method, path, status, role, duration and request id — never headers,
    the query string or the body (they may hold tokens, passwords or codes)."""
    request_id = g.get("request_id") or uuid.uuid4().hex
    response.headers["X-Request-Id"] = request_id
    if log.isEnabledFor(logging.INFO):
        elapsed = round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 1)
        role = g.get("role", "-")
        log.info("%s %s %s role=%s %.1fms request_id=%s", request.method, request.path,
                 response.status_code, role, elapsed, request_id,
                 extra={"fields": {"method": request.method, "path": request.path,
                                   "status": response.status_code, "role": role, "duration_ms": elapsed,
                                   "request_id": request_id}})
    return response
