"""The one module that knows the CEL engine (`common-expression-language`, imported as `cel`).

Guard and timer expressions are compiled once per rules version. Two rewrites make evaluation
cheap and safe, both done here so that another CEL engine (e.g. `cel-python`) could replace this
module alone:

* constants (`params.billing.issue_day`) are inlined as literals, so an unknown parameter path is
  a load-time error and the parameter tree is never converted per evaluation;
* field reads on the input maps (`data.method`, `has(data.card_type)`) become flat scalar
  variables, because converting a Python dict into a CEL map costs microseconds per key.

Before any text reaches the engine, `workflows.expression_budget` parses it with a bounded parser
and refuses what is too long, too deep or too costly (the engine overflows its stack on deep
input), and a Rust panic inside the engine (a BaseException) becomes `ExpressionError` at load or
`EngineFailure` at evaluation, never a crash.

Only the variables an expression uses are passed to it. Expressions inside the common subset of
`workflows.cel_subset` are evaluated by its closures first; the CEL engine decides whatever they
are not sure of.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cel

from tollgate.workflows.cel_subset import Fallback, Native, compile_subset
from tollgate.workflows.exceptions import EngineFailure, ExpressionError
from tollgate.workflows.expression_budget import position
from tollgate.workflows.expression_check import check_budget

__all__ = ["CEL_BUILTINS", "Binding", "Expression", "ExpressionError", "compile_expression"]

#: Functions of the CEL standard library that cel 0.10.0 implements natively.
CEL_BUILTINS = frozenset({
    "size", "matches", "contains", "startsWith", "endsWith", "int", "uint", "double", "string",
    "bytes", "bool", "timestamp", "duration", "dyn", "type", "has", "exists", "exists_one", "all",
    "map", "filter", "getFullYear", "getMonth", "getDayOfMonth", "getDate", "getDayOfWeek",
    "getDayOfYear", "getHours", "getMinutes", "getSeconds", "getMilliseconds", "max", "min",
})

_MISS = object()
_MEMO_SIZE = 4096
_MEMO_SCALARS = frozenset({str, int, float, bool, type(None), datetime})
_MACROS = ("all", "exists", "exists_one", "map", "filter")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_POSITION = re.compile(r"<input>:(\d+):(\d+)")
_UNDEFINED = re.compile(r"Undefined variable or function: '([^']+)'")


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


def _is_panic(error: BaseException) -> bool:
    """A Rust panic inside the engine: pyo3 raises `pyo3_runtime.PanicException`, a BaseException."""
    return type(error).__name__ == "PanicException"


def _cel_compile(text: str) -> Any:
    """`cel.compile`, with an engine panic turned into `ExpressionError` (ValueError passes)."""
    try:
        return cel.compile(text)
    except Exception:
        raise
    except BaseException as error:
        if not _is_panic(error):
            raise
        raise ExpressionError(f"The CEL engine cannot compile the expression ({error}); "
                              "simplify it.") from None


def _engine_failure(error: BaseException) -> BaseException:
    """What to raise for `error` escaping the engine at evaluation: a panic becomes EngineFailure."""
    if isinstance(error, Exception) or not _is_panic(error):
        return error
    return EngineFailure(f"The CEL engine failed while evaluating the expression: {error}")


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


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _prev_char(text: str, i: int) -> str:
    j = i - 1
    while j >= 0 and text[j] in " \t\r\n":
        j -= 1
    return text[j] if j >= 0 else ""


@dataclass
class Expression:
    """A compiled CEL expression with the recipe for its inputs."""

    source: str
    rewritten: str
    program: Any
    bindings: tuple[Binding, ...]
    plain: tuple[str, ...]  # variables passed as they are (e.g. now)
    functions: Mapping[str, Callable[..., Any]]
    native: Native | None = None  # the cel_subset fast path, if the expression is inside it
    type: str | None = None  # the result's CEL type, when known statically (expression_budget)
    _memo: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def roots(self) -> frozenset[str]:
        return frozenset({b.root for b in self.bindings} | set(self.plain))

    def variables(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The flat variables for one evaluation, taken from the input maps."""
        out: dict[str, Any] = dict(self.functions)
        for binding in self.bindings:
            source = inputs.get(binding.root)
            if binding.field is None:
                out[binding.name] = source
            elif binding.presence:
                out[binding.name] = source is not None and binding.field in source
            else:
                out[binding.name] = None if source is None else source.get(binding.field)
        for name in self.plain:
            out[name] = inputs.get(name)
        return out

    def evaluate(self, inputs: Mapping[str, Any]) -> Any:
        """The expression's value. CEL is pure, so a result is memoised by its inputs when they
        are all scalars (a billing run judges one `now` and one usage month a million times).
        The subset's closures answer first when the expression has them."""
        native = self.native
        if native is not None:
            try:
                return native(inputs)
            except Fallback:
                pass
        key = self._memo_key(inputs)
        if key is None:
            try:
                return self.program.execute(self.variables(inputs))
            except BaseException as error:
                raise _engine_failure(error) from None
        memo = self._memo
        hit = memo.get(key, _MISS)
        if hit is not _MISS:
            return list(hit) if type(hit) is tuple else hit
        try:
            result = self.program.execute(self.variables(inputs))
        except BaseException as error:
            raise _engine_failure(error) from None
        if type(result) is list and all(type(v) in _MEMO_SCALARS for v in result):
            stored: Any = tuple(result)
        elif type(result) in _MEMO_SCALARS:
            stored = result
        else:
            return result
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[key] = stored
        return result

    def _memo_key(self, inputs: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """(type, value) of every input the expression reads, or None when one is not a scalar.

        Types are part of the key because True == 1 in Python but not in CEL; a datetime
        carries its time zone, since equal instants in two zones are different CEL values. An
        event's own data (passwords, codes) is never kept in the memo.
        """
        key: list[Any] = []
        for binding in self.bindings:
            source = inputs.get(binding.root)
            if binding.field is None:
                value = source
            elif binding.presence:
                value = source is not None and binding.field in source
            else:
                value = None if source is None else source.get(binding.field)
            kind = type(value)
            if kind not in _MEMO_SCALARS or (binding.root == "data" and value is not None
                                             and not binding.presence):
                return None
            key.append(kind)
            key.append(value)
            if isinstance(value, datetime):
                key.append(value.tzinfo)
        for name in self.plain:
            value = inputs.get(name)
            kind = type(value)
            if kind not in _MEMO_SCALARS:
                return None
            key.append(kind)
            key.append(value)
            if isinstance(value, datetime):
                key.append(value.tzinfo)
        return tuple(key)


def _rewrite(source: str, constants: Mapping[str, Any], maps: frozenset[str],
             scalars: frozenset[str], functions: frozenset[str]
             ) -> tuple[str, list[Binding], set[str]]:
    """Inline constants and flatten field reads; report unknown identifiers with positions."""
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


def compile_expression(source: str, *, constants: Mapping[str, Any] | None = None,
                       maps: Iterable[str] = (), scalars: Iterable[str] = (),
                       functions: Mapping[str, Callable[..., Any]] | None = None,
                       schemas: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> Expression:
    """Compile `source`, raising `ExpressionError` with a position inside `source` on any problem.

    `constants` are inlined, `maps` are input maps read field by field, `scalars` are passed as
    they are, `functions` are the helper functions the expression may call. `schemas` are the
    JSON Schemas of the input maps (several for one map when a rule serves several events); they
    type fields and bound list and string sizes for the cost estimate.
    """
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("The expression is empty.")
    maps = tuple(maps)
    facts = check_budget(source, constants=constants, maps=maps, schemas=schemas)
    functions = dict(functions or {})
    try:
        _cel_compile(source)
    except ValueError as error:
        text = str(error)
        match = _POSITION.search(text)
        detail = text.split("ERROR: ", 1)[-1].split("\n", 1)[0]
        detail = _POSITION.sub("", detail).strip(" :")
        line, column = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
        raise ExpressionError(f"The expression does not compile: {detail}.", line, column) from None
    rewritten, bindings, plain = _rewrite(source, constants or {}, frozenset(maps),
                                          frozenset(scalars), frozenset(functions))
    try:
        program = _cel_compile(rewritten)
    except ValueError as error:  # the rewriting broke it (e.g. an inlined value CEL cannot hold)
        raise ExpressionError(f"The expression does not compile once its parameters are inlined: "
                              f"{str(error).splitlines()[0]}.") from None
    used = set(program.functions())
    for name in sorted(used):
        if name in functions or name in CEL_BUILTINS or not name[:1].isalpha():
            continue  # operators are spelled like _&&_, @in, !_
        # A method-style call (`x.name(...)`) the rewriter passed over: unknown to the engine.
        at = re.search(r"\.\s*" + re.escape(name) + r"\s*\(", source)
        line, column = _position(source, at.start() + 1) if at else (1, 1)
        raise ExpressionError(f"The function '{name}' is not known; known helpers: "
                              f"{', '.join(sorted(functions))}.", line, column)
    used_functions = {k: v for k, v in functions.items() if k in used}
    return Expression(source=source, rewritten=rewritten, program=program,
                      bindings=tuple(bindings), plain=tuple(sorted(plain)),
                      functions=used_functions,
                      native=_native(rewritten, bindings, plain, used_functions), type=facts.type)


def _native(rewritten: str, bindings: Iterable[Binding], plain: Iterable[str],
            functions: Mapping[str, Callable[..., Any]]) -> Native | None:
    fields = {b.name: (b.root, b.field, b.presence) for b in bindings}
    return compile_subset(rewritten, fields, tuple(sorted(plain)), functions)


def combine(expressions: list[Expression]) -> Expression:
    """One program that evaluates every expression and returns the list of their results.

    Converting inputs once for all the rules of an event is what keeps guards cheap.
    """
    rewritten = "[" + ", ".join(f"({e.rewritten})" for e in expressions) + "]"
    bindings: dict[str, Binding] = {}
    plain: set[str] = set()
    functions: dict[str, Callable[..., Any]] = {}
    for e in expressions:
        bindings.update({b.name: b for b in e.bindings})
        plain.update(e.plain)
        functions.update(e.functions)
    native = None
    if all(e.native is not None for e in expressions):
        fields = {b.name: (b.root, b.field, b.presence) for b in bindings.values()}
        native = compile_subset([e.rewritten for e in expressions], fields, tuple(sorted(plain)),
                                functions)
    return Expression(source=rewritten, rewritten=rewritten, program=_cel_compile(rewritten),
                      bindings=tuple(bindings.values()), plain=tuple(sorted(plain)),
                      functions=functions, native=native)


def undefined_name(error: Exception) -> str | None:
    """The name CEL reported as undefined in a runtime error, if that is what the error is."""
    match = _UNDEFINED.search(str(error))
    return match.group(1) if match else None
