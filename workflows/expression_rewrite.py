"""The rewriting of an expression's text before the CEL engine compiles it: constants inlined as
literals, field reads flattened into `Binding` variables; plain text scanning, no CEL engine here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tollgate.workflows.exceptions import ExpressionError
from tollgate.workflows.expression_budget import position

__all__ = ["CEL_BUILTINS", "Binding", "rewrite"]

#: Functions of the CEL standard library that cel 0.10.0 implements natively.
CEL_BUILTINS = frozenset({
    "size", "matches", "contains", "startsWith", "endsWith", "int", "uint", "double", "string",
    "bytes", "bool", "timestamp", "duration", "dyn", "type", "has", "exists", "exists_one", "all",
    "map", "filter", "getFullYear", "getMonth", "getDayOfMonth", "getDate", "getDayOfWeek",
    "getDayOfYear", "getHours", "getMinutes", "getSeconds", "getMilliseconds", "max", "min",
})

_MACROS = ("all", "exists", "exists_one", "map", "filter")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Binding:
    """How one flat CEL variable is filled from the inputs: `root.field`, or `has(root.field)`."""

    name: str
    root: str
    field: str | None  # None: the whole root value
    presence: bool = False


def _literal(value: Any) -> str:
    """A CEL literal for a YAML-loaded constant."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_literal(str(k))}: {_literal(v)}" for k, v in value.items()) + "}"
    raise ExpressionError(f"The constant {value!r} cannot be written as a CEL literal.")


_position = position


def _string_end(text: str, start: int) -> int:
    """The offset just past the string literal that starts at `start` (quote, raw or triple)."""
    quote = text[start]
    triple = text[start:start + 3] == quote * 3
    delimiter = quote * 3 if triple else quote
    i = start + len(delimiter)
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(delimiter, i):
            return i + len(delimiter)
        i += 1
    raise ExpressionError("A string literal is not closed.", *_position(text, start))


def _tokens(text: str) -> Iterable[tuple[int, int]]:
    """Spans of identifiers outside string literals."""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            i = _string_end(text, i)
        elif ch in "rRbB" and i + 1 < len(text) and text[i + 1] in "\"'" and (
                i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            i = _string_end(text, i + 1)
        elif ch.isalpha() or ch == "_":
            match = _IDENT.match(text, i)
            assert match is not None
            yield match.start(), match.end()
            i = match.end()
        elif ch.isdigit():
            while i < len(text) and (text[i].isalnum() or text[i] == "."):
                i += 1
        else:
            i += 1


def blank_comments(text: str) -> str:
    """`text` with each CEL line comment (`// …` to the end of the line, outside string literals)
    turned into spaces: same length and lines, so positions still point into the source, and a
    comment can no longer swallow what is put after the text (`combine` wraps it in parentheses)."""
    if "//" not in text:
        return text
    out: list[str] = []
    i = cursor = 0
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            i = _string_end(text, i)
        elif ch in "rRbB" and i + 1 < len(text) and text[i + 1] in "\"'" and (
                i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            i = _string_end(text, i + 1)
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            out += [text[cursor:i], " " * (end - i)]
            i = cursor = end
        else:
            i += 1
    out.append(text[cursor:])
    return "".join(out)


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _prev_char(text: str, i: int) -> str:
    j = i - 1
    while j >= 0 and text[j] in " \t\r\n":
        j -= 1
    return text[j] if j >= 0 else ""


def rewrite(source: str, constants: Mapping[str, Any], maps: frozenset[str],
            scalars: frozenset[str], functions: frozenset[str]
            ) -> tuple[str, list[Binding], set[str]]:
    """Inline constants and flatten field reads; report unknown identifiers with positions.
    Comments are dropped (blanked) first: CEL has `//` line comments, and the engine never sees them."""
    source = blank_comments(source)
    pieces: list[str] = []
    bindings: dict[str, Binding] = {}
    plain: set[str] = set()
    bound_locals: set[str] = set()
    cursor = 0
    spans = list(_tokens(source))
    # Comprehension variables: `.exists(x, …)` binds x.
    for index, (start, end) in enumerate(spans):
        name = source[start:end]
        after = _skip_space(source, end)
        if name in _MACROS and after < len(source) and source[after] == "(" and index + 1 < len(spans):
            bound_locals.add(source[spans[index + 1][0]:spans[index + 1][1]])
    skip_until = -1
    for start, end in spans:
        if start < skip_until:
            continue
        name = source[start:end]
        if _prev_char(source, start) == ".":
            continue  # a field or method name, not a root
        after = _skip_space(source, end)
        is_call = after < len(source) and source[after] == "("
        if is_call:
            if name == "has":
                match = re.compile(r"\(\s*([A-Za-z_]\w*)\s*\.\s*([A-Za-z_]\w*)\s*\)").match(source, after)
                if match and match.group(1) in maps:
                    root, field = match.group(1), match.group(2)
                    var = f"{root}__has__{field}"
                    bindings[var] = Binding(var, root, field, presence=True)
                    pieces.append(source[cursor:start])
                    pieces.append(var)
                    cursor = skip_until = match.end()
                continue
            if name not in functions and name not in CEL_BUILTINS:
                raise ExpressionError(f"The function '{name}' is not known; known helpers: "
                                      f"{', '.join(sorted(functions))}.", *_position(source, start))
            continue
        if name in ("true", "false", "null", "in") or name in bound_locals:
            continue
        if name in constants:
            value: Any = constants[name]
            path = name
            i = end
            while True:
                dot = _skip_space(source, i)
                if dot < len(source) and source[dot] == "." and isinstance(value, Mapping):
                    match = _IDENT.match(source, _skip_space(source, dot + 1))
                    if not match:
                        break
                    key = match.group(0)
                    if key not in value:
                        raise ExpressionError(
                            f"The parameter '{path}.{key}' does not exist; "
                            f"'{path}' has: {', '.join(sorted(map(str, value)))}.",
                            *_position(source, match.start()))
                    value, path, i = value[key], f"{path}.{key}", match.end()
                else:
                    break
            pieces.append(source[cursor:start])
            pieces.append(_literal(value))
            cursor = skip_until = i
            continue
        if name in maps:
            dot = _skip_space(source, end)
            match = None
            if dot < len(source) and source[dot] == ".":
                match = _IDENT.match(source, _skip_space(source, dot + 1))
            following = _skip_space(source, match.end()) if match else 0
            if match and not (following < len(source) and source[following] == "("):
                field = match.group(0)
                var = f"{name}__{field}"
                bindings[var] = Binding(var, name, field)
                pieces.append(source[cursor:start])
                pieces.append(var)
                cursor = skip_until = match.end()
            else:
                bindings[name] = Binding(name, name, None)
            continue
        if name in scalars:
            plain.add(name)
            continue
        known = sorted(maps | scalars | set(constants))
        raise ExpressionError(f"The variable '{name}' is not known; expressions may use: "
                              f"{', '.join(known)}.", *_position(source, start))
    pieces.append(source[cursor:])
    return "".join(pieces), list(bindings.values()), plain
