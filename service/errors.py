"""The one place errors become RFC 9457 problem+json: tollgate's own, Flask's, and the unexpected."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, request
from sqlalchemy.exc import StatementError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from tollgate.service.api.support import reply
from tollgate.service.application.problems import TYPE_BASE, problem
from tollgate.workflows.exceptions import TollgateError

log = logging.getLogger("tollgate.api")

SLUGS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
         415: "unsupported_media_type"}


def _tollgate(error: TollgateError) -> Response:
    return reply(problem(error), error.status, getattr(error, "headers", None))


def _detail(error: HTTPException) -> str:
    if isinstance(error, NotFound):
        return f"There is no route {request.path}; /openapi.json lists every route."
    if isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(m for m in (error.valid_methods or []) if m not in ("HEAD", "OPTIONS")))
        return f"The route {request.path} does not accept {request.method}; it accepts {allowed}."
    if isinstance(error, RequestEntityTooLarge):
        return (f"The request body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes, the "
                "most this server accepts (TOLLGATE_MAX_BODY_BYTES); send a smaller body.")
    return error.description or error.name


def _http(error: HTTPException) -> Response:
    status = error.code or 500
    body = {"type": TYPE_BASE + SLUGS.get(status, "http_" + str(status)), "title": error.name,
            "status": status, "detail": _detail(error)}
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    return reply(body, status, headers)


def _unexpected(error: Exception) -> Response:
    """A bug: log it (SQL parameters left out, they may hold data) and answer a plain 500."""
    if isinstance(error, StatementError):
        log.error("Unhandled database error %s on %s %r", type(error.orig).__name__, request.method,
                  request.path)  # %r: a path cannot forge log lines with control characters
    else:
        log.exception("Unhandled %s on %s %r", type(error).__name__, request.method, request.path)
    body = {"type": TYPE_BASE + "error", "title": "Internal error", "status": 500,
            "detail": "The server failed to answer this request; the error is logged. Try again later."}
    return reply(body, 500)


def init_app(app: Flask) -> None:
    app.register_error_handler(TollgateError, _tollgate)
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(Exception, _unexpected)
