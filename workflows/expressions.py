"""The one module that knows the CEL engine (`common-expression-language`, imported as `cel`).

Guard and timer expressions are compiled once per rules version. Two rewrites make evaluation
cheap and safe, both ordered from here (the text work itself is in `workflows.expression_rewrite`,
which knows no engine) so that another CEL engine (e.g. `cel-python`) could replace this module alone:

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
from tollgate.workflows.expression_rewrite import CEL_BUILTINS, Binding, rewrite

__all__ = ["CEL_BUILTINS", "Binding", "Expression", "ExpressionError", "compile_expression"]

_MISS = object()
_MEMO_SIZE = 4096
_MEMO_SCALARS = frozenset({str, int, float, bool, type(None), datetime})
_POSITION = re.compile(r"<input>:(\d+):(\d+)")
_UNDEFINED = re.compile(r"Undefined variable or function: '([^']+)'")


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
    rewritten, bindings, plain = rewrite(source, constants or {}, frozenset(maps),
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
