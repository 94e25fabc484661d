"""What every blueprint needs: the runtime, request bodies checked against `schemas/api/`,
RFC 3339 timestamps, query flags and JSON replies."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from flask import Response, current_app, g, request
from jsonschema import Draft202012Validator, FormatChecker
from werkzeug.exceptions import UnsupportedMediaType

from tollgate.service.application.runtime import Runtime
from tollgate.workflows import limits
from tollgate.workflows.documents import data_problems, json_path
from tollgate.workflows.engine import fast_check
from tollgate.workflows.exceptions import BadRequest, Problem

API_SCHEMAS = Path(__file__).resolve().parent.parent.parent / "schemas" / "api"
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
FLAGS = {"true": True, "1": True, "false": False, "0": False}
_formats = FormatChecker(formats=())


def parse_timestamp(value: str, where: str) -> datetime:
    """An aware datetime from the RFC 3339 text of the body field `where`, in the supported years;
    a missing offset is refused, not guessed."""
    moment = _rfc3339(value, where)
    if not limits.year_in_range(moment):
        span = f"{limits.FIRST_YEAR}-{limits.LAST_YEAR}"
        raise BadRequest(f"The {where} '{value}' is outside the supported years {span}; give a time in "
                         "that range.", [Problem(f"$.{where}", f"{value!r} is outside the supported years "
                                                 f"{span}", file="body")])
    return moment


def _rfc3339(value: str, where: str) -> datetime:
    if not RFC3339.fullmatch(value):
        raise BadRequest(f"The {where} '{value}' is not an RFC 3339 timestamp with an offset; write it "
                         "like 2025-03-05T12:00:00+09:00.")
    try:
        return datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise BadRequest(f"The {where} '{value}' is not a real date and time.") from None


@_formats.checks("date-time", raises=BadRequest)
def _is_date_time(value: object) -> bool:
    if isinstance(value, str):
        _rfc3339(value, "timestamp")  # the shape only: the years are the schema's `pattern`
    return True


@cache
def schema(name: str) -> dict[str, Any]:
    """A schema of `schemas/api/` by file name without `.json`."""
    loaded: dict[str, Any] = json.loads((API_SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=_formats)


_PLAIN_OBJECT = {"type": "object"}
_ANNOTATIONS = frozenset({"description", "title", "examples", "$comment"})


@cache
def body_check(name: str) -> Callable[[Any], bool]:
    """A check of a request body whose True means "valid" (False: ask jsonschema), built once.

    The engine's `fast_check` compiles object schemas of simple properties; a request body may
    also have plain object properties (`data`, `context`), checked here as `type(v) is dict`.
    Schemas it cannot compile get a check that always defers to jsonschema.
    """
    full = schema(name)
    objects = tuple(key for key, sub in full.get("properties", {}).items()
                    if isinstance(sub, Mapping) and {k: v for k, v in sub.items() if k not in _ANNOTATIONS}
                    == _PLAIN_OBJECT)
    stripped = {key: value for key, value in full.items() if key not in ("$schema", "$id")}
    stripped["properties"] = {key: ({} if key in objects else sub)
                              for key, sub in full.get("properties", {}).items()}
    simple = fast_check(Draft202012Validator(stripped, format_checker=_formats))
    if simple is None:
        return lambda data: False

    def check(data: Any) -> bool:
        if not simple(data):
            return False
        for key in objects:  # noqa: SIM110 -- a plain loop beats all() on the hot path
            if key in data and type(data[key]) is not dict:
                return False
        return True

    return check


def runtime() -> Runtime:
    """The app's Runtime (built by `create_app`)."""
    found: Runtime = current_app.extensions["tollgate"]
    return found


def actor() -> str:
    """Who is acting, as recorded in the history: the caller's role."""
    return str(g.get("role", "anonymous"))


def json_body(schema_name: str) -> dict[str, Any]:
    """The request's JSON object, checked against `schemas/api/<schema_name>.json`.

    Every schema violation is reported with its JSON path; the detail names the first one.
    """
    raw = request.get_data(cache=True)
    if not raw.strip():
        data: Any = None
    else:
        if not request.is_json:
            raise UnsupportedMediaType(f"The request body must be JSON sent with Content-Type "
                                       f"application/json, not '{request.mimetype or 'none'}'.")
        try:
            # orjson, not json: it refuses lone UTF-16 surrogates ("\ud800"), which no store,
            # JSON encoder or CEL string can hold, as well as NaN and Infinity.
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            if "depth" in error.msg:  # orjson stops at 1,024 levels, before MAX_JSON_DEPTH is checked
                raise BadRequest(f"The request body is nested deeper than {limits.MAX_JSON_DEPTH} levels "
                                 f"(line {error.lineno}, column {error.colno}); no request needs that, "
                                 "send flatter JSON.") from None
            if "UTF-8" in error.msg:
                raise BadRequest("The request body is not UTF-8 text; send JSON encoded as UTF-8 "
                                 f"without a byte order mark ({error.msg}).") from None
            raise BadRequest(f"The request body is not valid JSON: {error.msg} at line {error.lineno}, "
                             f"column {error.colno}.") from None
    if data is None:
        raise BadRequest("The request body is missing; send a JSON object "
                         f"(see {schema(schema_name)['title']} in /openapi.json).")
    if raw.count(b"[") + raw.count(b"{") > limits.MAX_JSON_DEPTH or _LONG_NUMBER.search(raw):
        _check_bounds(data)
    problems = [] if body_check(schema_name)(data) else \
        [_explained(p) for p in data_problems(validator(schema_name), data, "body")]
    if problems:
        first = problems[0]
        raise BadRequest(f"The request body does not match its schema: {first.path}: {first.message}.",
                         problems)
    body: dict[str, Any] = data
    return body


#: A run of digits that may be an integer beyond MAX_JSON_INTEGER (16 digits); only bodies that
#: have one, or more brackets than the depth limit, are walked by `_check_bounds`.
_LONG_NUMBER = re.compile(rb"[0-9]{%d}" % len(str(limits.MAX_JSON_INTEGER)))


def _check_bounds(data: Any) -> None:
    """Refuse a body nested deeper than MAX_JSON_DEPTH or holding an integer beyond
    MAX_JSON_INTEGER, naming the first such place by its JSON path (walked without recursion)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if type(value) is int and abs(value) > limits.MAX_JSON_INTEGER:
            where = json_path(path)
            raise BadRequest(f"The request body does not match its schema: {where}: the number {value} is "
                             f"beyond ±{limits.MAX_JSON_INTEGER:,} (2^53 - 1, RFC 7493); send a smaller "
                             "number.", [Problem(where, f"{value} is beyond ±{limits.MAX_JSON_INTEGER} "
                                                 "(2^53 - 1)", file="body")])
        if isinstance(value, dict | list):
            if len(path) >= limits.MAX_JSON_DEPTH:
                where = json_path(path)
                raise BadRequest(f"The request body is nested deeper than {limits.MAX_JSON_DEPTH} levels "
                                 f"at {where}; no request needs that, send flatter JSON.",
                                 [Problem(where, f"nested deeper than {limits.MAX_JSON_DEPTH} levels",
                                          file="body")])
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((item, (*path, key)) for key, item in items)


def _explained(problem: Problem) -> Problem:
    if problem.message.endswith("is not a 'date-time'"):
        return replace(problem, message=problem.message + "; write RFC 3339 with an offset, e.g. "
                       "2025-03-05T12:00:00+09:00")
    return problem


def text_body() -> str:
    """The request body as UTF-8 text (rules.yaml for the rules routes)."""
    try:
        return request.get_data(cache=True).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("The request body is not UTF-8 text; send the rules as UTF-8 YAML.") from None


def flag(name: str) -> bool:
    """A boolean query parameter (`true`/`false`/`1`/`0`); absent means false."""
    if not request.environ.get("QUERY_STRING"):
        return False  # no query string: skip parsing request.args
    value = request.args.get(name)
    if value is None:
        return False
    try:
        return FLAGS[value.lower()]
    except KeyError:
        raise BadRequest(f"The query parameter {name}='{value}' is not a boolean; use true or "
                         "false.") from None


#: json.dumps(body, ensure_ascii=False, separators=(",", ":")) without building an encoder per call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_ascii = json.JSONEncoder(separators=(",", ":")).encode


def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON reply; bodies of 4xx/5xx statuses are problem documents."""
    media = "application/problem+json" if status >= 400 else "application/json"
    try:
        data = _encode(body).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (PyYAML makes them of "\ud800" escapes) has no
        data = _encode_ascii(body).encode("ascii")  # UTF-8 form: escape it as JSON does
    return Response(data, status=status, mimetype=media, headers=headers or {})


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> int | None:
    """The version an `If-Match` header names (`"3"`, `W/"3"` is refused); `*` means any."""
    if value is None or value.strip() == "*":
        return None
    match = re.fullmatch(r'\s*"(\d{1,9})"\s*', value)
    if match is None:
        raise BadRequest(f"The If-Match header {value!r} is not an ETag this service returned; send the "
                         'ETag of the instance exactly, e.g. If-Match: "3".')
    return int(match.group(1))
