"""The Flask app factory: settings (environment → test overrides), the wired runtime, blueprints."""

from __future__ import annotations

import io
import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request

from tollgate.service import api, auth, errors, metrics
from tollgate.service.api.routes import BY_ENDPOINT
from tollgate.service.bootstrap import start_runtime
from tollgate.service.settings import Settings
from tollgate.workflows.exceptions import BadRequest

log = logging.getLogger("tollgate.api")
#: An `X-Request-Id` a client or proxy sends is kept if it looks like an id; otherwise one is made.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: `create_app`'s config keys that are settings (`service/settings.py`), and the setting of each.
SETTINGS = {"DATABASE_URL": "database_url", "RULES": "rules", "TOKENS": "tokens",
            "BATCH_WORKERS": "batch_workers", "SECRET_KEY": "secret_key",
            "MAX_CONTENT_LENGTH": "max_body_bytes", "NOW": "now"}


def create_app(test_config: Mapping[str, Any] | None = None, *, settings: Settings | None = None) -> Flask:
    """Build the app: migrate the database, import the rules file if it changed since its last
    import, wire the API. `settings`: the environment's unless given; `test_config` overrides them
    by config key (`SETTINGS`) and sets any other Flask config key."""
    overrides = dict(test_config or {})
    given = {SETTINGS[key]: overrides.pop(key) for key in list(overrides) if key in SETTINGS}
    if settings is None:
        settings = Settings.from_environment(**given)
    elif given:
        settings = Settings.checked({**settings.__dict__, **given})
    app = Flask(__name__, static_folder=None)  # every route is in ROUTES, behind auth
    app.config.from_mapping({"DATABASE_URL": settings.database_url, "RULES": settings.rules,
                             "TOKENS": settings.tokens, "MAX_CONTENT_LENGTH": settings.max_body_bytes})
    app.config.from_mapping(overrides)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]  # Korean messages stay readable
    app.json.sort_keys = False  # type: ignore[attr-defined]

    # strict=False: a gunicorn worker (re)started while the rules file has problems keeps serving
    # the active version; `tollgate serve` and `tollgate worker` refuse such a file before this.
    runtime, _ = start_runtime(settings, strict=False)
    app.extensions["tollgate"] = runtime
    app.extensions["tollgate.settings"] = settings

    metrics.install()  # count the events this process commits
    app.before_request(_start_request)  # first: a refused request (401, 400) is logged too
    errors.init_app(app)
    auth.init_app(app)
    api.init_app(app)
    app.wsgi_app = _WholeBody(app.wsgi_app, settings.max_body_bytes)  # type: ignore[method-assign]
    app.before_request(_refuse_nul)
    app.after_request(_log_request)
    return app


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
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    route = BY_ENDPOINT.get(request.endpoint or "")  # the template (/instances/{id}), never the raw path
    metrics.observe_request(request.method, route.path if route is not None else "unmatched",
                            response.status_code, seconds)
    if log.isEnabledFor(logging.INFO):
        elapsed = round(seconds * 1000, 1)
        role = g.get("role", "-")
        log.info("%s %s %s role=%s %.1fms request_id=%s", request.method, request.path,
                 response.status_code, role, elapsed, request_id,
                 extra={"fields": {"method": request.method, "path": request.path,
                                   "status": response.status_code, "role": role, "duration_ms": elapsed,
                                   "request_id": request_id}})
    return response
