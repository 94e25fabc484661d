"""A common subset of CEL compiled to Python closures, evaluated in front of the CEL engine.

cel 0.10.0 spends most of a guard's time crossing into Rust: ~0.9 µs to convert each string or
timestamp and ~1.5 µs for each call back into one of our helper functions. The guards and timers
of rules.yaml mostly compare fields, test membership in constant lists and call those helpers, so
`compile_subset` turns an expression (already rewritten by `workflows.expressions`: constants
inlined, `data.x` flattened into variables) into a tree of closures over the input maps.

The closures are a *fast path*, never a second opinion. They evaluate only what they are sure
of, with the operand types CEL and Python agree on (int within int64, str, bool, null, timestamps
with a fixed offset); anything else raises `Fallback`, and the caller then asks the CEL engine,
which decides the value and words every error. So:

* an expression using anything outside the subset (floats, maps, methods such as `matches`,
  macros, CEL built-ins such as `size`, which counts bytes in cel 0.10.0) gets no fast path at
  all (`compile_subset` returns None);
* at run time an unusual operand (a float amount, a missing field compared with `<`, a helper that
  raises) makes the whole expression fall back, so CEL's error absorption in `&&`/`||` and its
  error messages stay CEL's own.

There is no `eval` and no Python attribute access: the closures can only compare, add, branch
and call the helper functions they were given. This module tokenizes and parses; the closures
themselves are built in `workflows.cel_closures`. `tests/test_cel_subset.py` checks each operator
against the CEL engine, and every rule of the bundled rules.yaml on generated inputs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tollgate.workflows.cel_closures import (
    _COMPARE,
    PURE,
    Fallback,
    Native,
    Node,
    Unsupported,
    _and,
    _arithmetic,
    _call,
    _checked,
    _conditional,
    _constant,
    _equal,
    _field,
    _member,
    _negative,
    _not,
    _or,
    _order,
    _plain,
    _presence,
    _read_all,
    _slot,
)

__all__ = ["PURE", "Fallback", "Native", "Unsupported", "compile_subset"]


# ── tokens ──────────────────────────────────────────────────────────────────────────────────────

_TOKEN = re.compile(r"""
    (?P<space>\s+|//[^\n]*)
  | (?P<number>\d[\w.]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[<>!?:()\[\],.+\-*/%{}])
""", re.VERBOSE)
_INT = re.compile(r"0|[1-9]\d*")
#: Escapes that mean the same in CEL and JSON (no surrogates: CEL refuses them).
_SIMPLE_ESCAPES = re.compile(r'\\(?:["\\bfnrt]|u(?![dD][89a-fA-F])[0-9a-fA-F]{4})')


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    i = 0
    while i < len(text):
        match = _TOKEN.match(text, i)
        if match is None:
            raise Unsupported(text[i:i + 10])
        i = match.end()
        kind = match.lastgroup
        token = match.group()
        if kind == "space":
            continue
        if kind == "number":
            if not _INT.fullmatch(token):
                raise Unsupported(token)  # floats, hex, uints
            out.append(("lit", int(token)))
        elif kind == "string":
            body = token[1:-1]
            if token[0] == "'" and ('"' in body or "\\" in body):
                raise Unsupported(token)
            if "\\" in body and _SIMPLE_ESCAPES.sub("", body).count("\\"):
                raise Unsupported(token)
            out.append(("lit", json.loads('"' + body + '"')))
        elif kind == "ident":
            if token in ("true", "false"):
                out.append(("lit", token == "true"))
            elif token == "null":
                out.append(("lit", None))
            elif token == "in":
                out.append(("op", "in"))
            elif (out and out[-1] == ("op", ".")) or token in _RESERVED:
                raise Unsupported(token)  # methods, field selection, reserved words
            else:
                out.append(("ident", token))
        else:
            out.append(("op", token))
    out.append(("end", None))
    return out


_RESERVED = frozenset({"as", "break", "const", "continue", "else", "for", "function", "if",
                       "import", "let", "loop", "package", "namespace", "return", "var", "void",
                       "while"})


# ── the parser (CEL's grammar, the subset's productions) ───────────────────────────────────────


class _Parser:
    def __init__(self, text: str, variables: Mapping[str, Node],
                 functions: Mapping[str, Callable[..., Any]]) -> None:
        self.tokens = _tokens(text)
        self.i = 0
        self.variables = variables
        self.functions = functions

    def peek(self) -> tuple[str, Any]:
        return self.tokens[self.i]

    def take(self, op: str | None = None) -> tuple[str, Any]:
        token = self.tokens[self.i]
        if op is not None and token != ("op", op):
            raise Unsupported(f"expected {op}")
        self.i += 1
        return token

    def at(self, *ops: str) -> str | None:
        kind, value = self.tokens[self.i]
        return value if kind == "op" and value in ops else None

    def expression(self) -> Node:
        test = self.disjunction()
        if self.at("?"):
            self.take()
            then = self.disjunction()
            self.take(":")
            return _conditional(test, then, self.expression())
        return test

    def disjunction(self) -> Node:
        node = self.conjunction()
        while self.at("||"):
            self.take()
            node = _or(node, self.conjunction())
        return node

    def conjunction(self) -> Node:
        node = self.relation()
        while self.at("&&"):
            self.take()
            node = _and(node, self.relation())
        return node

    def relation(self) -> Node:
        node = self.addition()
        while (op := self.at("==", "!=", "<", "<=", ">", ">=", "in")) is not None:
            self.take()
            if op == "in":
                node = _member(node, self.constant_list())
                continue
            right = self.addition()
            if op in ("==", "!="):
                node = _equal(node, right, op == "!=")
            else:
                node = _order(node, right, _COMPARE[op])
        return node

    def addition(self) -> Node:
        node = self.multiplication()
        while (op := self.at("+", "-")) is not None:
            self.take()
            node = _arithmetic(node, self.multiplication(), op)
        return node

    def multiplication(self) -> Node:
        node = self.unary()
        while (op := self.at("*", "/", "%")) is not None:
            if op != "*":
                raise Unsupported(op)  # CEL truncates, Python floors: not worth the subset
            self.take()
            node = _arithmetic(node, self.unary(), op)
        return node

    def unary(self) -> Node:
        if self.at("!"):
            self.take()
            return _not(self.unary())
        if self.at("-"):
            self.take()
            kind, value = self.peek()
            if kind == "lit" and type(value) is int:
                self.take()
                return _constant(_checked(-value))
            return _negative(self.unary())
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        if self.at(".", "[", "("):
            raise Unsupported("field selection, indexing or a method")
        return node

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "lit":
            return _constant(_checked(value))
        if kind == "ident":
            if self.at("("):
                function = self.functions.get(value)
                if function is None:
                    raise Unsupported(value)  # a CEL built-in
                self.take()
                arguments: list[Node] = []
                while not self.at(")"):
                    arguments.append(self.expression())
                    if not self.at(")"):
                        self.take(",")
                self.take(")")
                return _call(function, arguments)
            variable = self.variables.get(value)
            if variable is None:
                raise Unsupported(value)
            return variable
        if (kind, value) == ("op", "("):
            node = self.expression()
            self.take(")")
            return node
        raise Unsupported(str(value))

    def constant_list(self) -> list[Any]:
        self.take("[")
        items: list[Any] = []
        while not self.at("]"):
            kind, value = self.take()
            if kind != "lit":
                raise Unsupported("a list that is not all constants")
            items.append(value)
            if not self.at("]"):
                self.take(",")
        self.take("]")
        return items


def compile_subset(text: str | Sequence[str], fields: Mapping[str, tuple[str, str | None, bool]],
                   plain: tuple[str, ...], functions: Mapping[str, Callable[..., Any]]
                   ) -> Native | None:
    """Closures for `text`, or None when it uses anything outside the subset.

    `fields` maps each flat variable to (root, field, presence) as `workflows.expressions`
    bound it (field None: the whole root), `plain` names variables passed as they are, and
    `functions` are the helper functions. The returned callable takes the input maps and returns
    the value, or raises `Fallback`. Given several texts (an event's guards), it returns the list
    of their values, reading the variables they share once.

    Like the CEL engine, which converts every variable before it evaluates, the returned callable
    reads every variable first, so a value CEL could not hold falls back even where `&&` would
    not have looked at it.
    """
    getters: list[Native] = []
    variables: dict[str, Node] = {}
    for name in plain:
        variables[name] = _slot(len(getters))
        getters.append(_plain(name))
    for name, (root, field, presence) in fields.items():
        variables[name] = _slot(len(getters))
        if field is None:
            getters.append(_plain(root))
        else:
            getters.append(_presence(root, field) if presence else _field(root, field))
    trees: list[Node] = []
    try:
        for source in ([text] if isinstance(text, str) else text):
            parser = _Parser(source, variables, functions)
            trees.append(parser.expression())
            if parser.peek()[0] != "end":
                raise Unsupported("trailing input")
    except (Unsupported, Fallback, ValueError, RecursionError):
        return None
    read_all = _read_all(tuple(getters))
    if not isinstance(text, str):
        every = tuple(trees)

        def each(inputs: Mapping[str, Any]) -> list[Any]:
            values = read_all(inputs)
            return [tree(values) for tree in every]
        return each
    (tree,) = trees
    if not getters:
        return lambda inputs: tree([])
    return lambda inputs: tree(read_all(inputs))
