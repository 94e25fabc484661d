"""The expression budget: how large, deep and costly a policy expression may be, in one place.

The CEL engine (`cel` 0.10.0, Rust) parses and evaluates recursively: a long operator chain or
deep nesting overflows the stack of the process (a segfault, not an exception), and nested
comprehensions run for as long as their ranges multiply. So `workflows.expression_check` parses
every expression of a rules file before the engine sees it and refuses one over these numbers;
README "Changing policy" gives the reason for each.

The cost is estimated the way Kubernetes estimates `x-kubernetes-validations` rules: every call,
operator or field read costs 1 (literals 0), a comprehension (`all`, `exists`, `exists_one`,
`map`, `filter`) costs the size of its range times the cost of its body plus one (so nested ones
multiply), `in` on a list costs its size, and string functions cost in proportion to the
longest string they may see. Sizes come from list literals, inlined params and the
`maxItems`/`maxLength` of the event's data schema (or the workflow's context schema); a field that
declares none is assumed as large as a request body allows, as Kubernetes does.

This module also holds `Facts`, what is known of a sub-expression before evaluation, and how
facts follow from JSON Schemas and inlined constants.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

#: Characters of one expression, after params are inlined (the bundled rules' longest: 263).
MAX_EXPRESSION_CHARS = 4_096
#: Nodes of the syntax tree (operators, calls, field reads, literals), inlined params included.
MAX_AST_NODES = 1_000
#: Depth of the syntax tree; `a + b + c` is 2 deep. The engine overflows a 512 KiB thread stack
#: at ~200 and the main stack at some thousands; the bundled rules need 8.
MAX_NESTING_DEPTH = 32
#: Comprehensions inside comprehensions (`xs.all(x, ys.exists(y, …))` is 2).
MAX_COMPREHENSION_NESTING = 2
#: Estimated cost of one evaluation: Kubernetes' per-call limit (PerCallLimit, ~0.1 s in cel-go),
#: so its guidance and intuitions apply. cel 0.10.0 takes ~50 ns a unit (measured: nested `all`
#: over two 200-element lists, cost ~200,000, runs in 10 ms), so ~50 ms at worst per evaluation.
MAX_ESTIMATED_COST = 1_000_000
#: The largest request body (service/app.py MAX_CONTENT_LENGTH, 1 MiB) holds at most this many
#: list elements ("0,") or characters: the size assumed for a field whose schema declares no
#: `maxItems`/`maxLength`, as Kubernetes assumes its maximum request size.
REQUEST_BODY_BYTES = 1024 * 1024
UNBOUNDED_LIST_SIZE = REQUEST_BODY_BYTES // 2
UNBOUNDED_STRING_LENGTH = REQUEST_BODY_BYTES
#: Kubernetes' factors: scanning a string costs 0.1 a character; a regular expression multiplies
#: that by 1 + 0.25 a character of the pattern.
STRING_TRAVERSAL_COST = 0.1
REGEX_COST = 0.25

MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
#: Result types of the helper functions of `workflows.guards` and of CEL built-ins.
FUNCTION_TYPES: Mapping[str, str] = {
    "in_daily_window": "bool", "age_on": "int", "local_date": "string", "local_time": "string",
    "local_day": "int", "month_of": "string", "add_months": "string", "last_day": "int",
    "local_at": "timestamp", "start_of_day": "timestamp", "add_days": "timestamp",
    "add_hours": "timestamp", "add_calendar_months": "timestamp", "length": "int",
    "code_matches": "bool", "is_email": "bool", "ts": "timestamp",
    "has": "bool", "size": "int", "int": "int", "uint": "uint", "double": "double",
    "string": "string", "bytes": "bytes", "bool": "bool", "timestamp": "timestamp",
    "duration": "duration", "type": "type", "matches": "bool", "contains": "bool",
    "startsWith": "bool", "endsWith": "bool", "all": "bool", "exists": "bool",
    "exists_one": "bool", "map": "list", "filter": "list",
    **dict.fromkeys(("getFullYear", "getMonth", "getDayOfMonth", "getDate", "getDayOfWeek",
                     "getDayOfYear", "getHours", "getMinutes", "getSeconds", "getMilliseconds"), "int"),
}
SCANNING = frozenset({"contains", "startsWith", "endsWith"})
SCALAR_TYPES = {"now": "timestamp"}
_JSON_TYPES = {"string": "string", "integer": "int", "boolean": "bool", "array": "list",
               "object": "map", "null": "null"}

class Refused(Exception):
    """An expression refused at `offset` (turned into `ExpressionError` with a line and column)."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message, self.offset = message, offset


@dataclass(frozen=True, slots=True)
class Facts:
    """What is known before evaluation of one sub-expression."""

    type: str | None = None  # CEL type name; None: only known at run time
    cost: int = 1
    depth: int = 1
    nodes: int = 1
    comprehensions: int = 0
    size: int | None = None  # most elements (list, map) or characters (string); None: unbounded
    elem: Facts | None = None  # a list's elements
    schema: Mapping[str, Any] | None = None  # a map's JSON schema, when known
    value: Any = None  # a string literal's text (a regex)


def position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of `offset` in `text`."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def join(a: Facts | None, b: Facts | None) -> Facts | None:
    if a is None or b is None:
        return a or b
    size = None if a.size is None or b.size is None else max(a.size, b.size)
    return Facts(a.type if a.type == b.type else None, size=size, elem=join(a.elem, b.elem))


def _schema_facts(schemas: Sequence[Mapping[str, Any]]) -> Facts:
    """The facts of a value that each of `schemas` (JSON Schema) describes."""
    result: Facts | None = None
    for schema in schemas:
        kind = schema.get("type")
        values = schema.get("enum", [schema["const"]] if "const" in schema else None)
        size = None
        if isinstance(values, list) and values:
            kinds = {type(v) for v in values}
            only = kinds.pop() if len(kinds) == 1 else None
            kind = {str: "string", bool: "boolean", int: "integer"}.get(only) if only else None
            if kind == "string":
                size = max(len(v) for v in values)
        if kind == "string":
            size = schema.get("maxLength", size)
        elif kind == "array":
            size = schema.get("maxItems")
        elif kind == "object":
            size = schema.get("maxProperties")
        items = schema.get("items")
        facts = Facts(_JSON_TYPES.get(kind) if isinstance(kind, str) else None, size=size,
                      elem=_schema_facts([items]) if isinstance(items, Mapping) else None,
                      schema=schema if kind == "object" else None)
        result = facts if result is None else join(result, facts)
    return result or Facts()


def field_facts(schemas: Sequence[Mapping[str, Any]], name: str) -> Facts:
    """The facts of `name` in maps described by `schemas`; unknown unless every one declares it."""
    found = [s.get("properties", {}).get(name) for s in schemas]
    if not found or not all(isinstance(f, Mapping) for f in found):
        return Facts()
    return _schema_facts(found)


def constant_facts(value: Any, offset: int) -> tuple[Facts, int]:
    """Facts and literal length of an inlined constant, walked without recursion."""
    nodes, chars, deepest = 0, 0, 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        deepest = max(deepest, depth)
        if nodes > MAX_AST_NODES or depth > MAX_NESTING_DEPTH:
            raise Refused(f"The parameter inlined here is too large ({MAX_AST_NODES:,} nodes or "
                          f"{MAX_NESTING_DEPTH} levels at most); simplify it.", offset=offset)
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
            stack.extend((k, depth + 1) for k in item)
            chars += 2 + 4 * len(item)
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
            chars += 2 + 2 * len(item)
        else:
            chars += len(str(item)) + 2
    size = len(value) if isinstance(value, Mapping | list | tuple | str) else None
    elem = None
    if isinstance(value, list | tuple):
        for v in value:
            elem = join(elem, Facts(_constant_type(v), size=len(v) if isinstance(v, Sized) else None))
    return Facts(_constant_type(value), cost=0, depth=deepest, nodes=nodes, size=size, elem=elem,
                 value=value if isinstance(value, str) else None), chars


def _constant_type(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, list | tuple):
        return "list"
    return {bool: "bool", int: "int", float: "double", str: "string", type(None): "null"}.get(type(value))


def scan_cost(length: int | None) -> int:
    """The cost of scanning a string of `length` characters at most (None: unbounded)."""
    return math.ceil(STRING_TRAVERSAL_COST * (UNBOUNDED_STRING_LENGTH if length is None else length))
