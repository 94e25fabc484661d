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
and call the helper functions they were given. `tests/test_cel_subset.py` checks each operator
against the CEL engine, and every rule of the bundled rules.yaml on generated inputs.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any, overload

__all__ = ["PURE", "Fallback", "Native", "compile_subset"]

#: The attribute that marks a helper function as pure (its result depends on its arguments
#: alone): each call of it in an expression then remembers its latest arguments and result.
PURE = "cel_pure"

Native = Callable[[Mapping[str, Any]], Any]  # input maps -> value
Node = Callable[[list[Any]], Any]  # variable values -> value

_INT_MIN, _INT_MAX = -(2 ** 63), 2 ** 63 - 1
#: Types whose `==` and ordering mean the same in Python and CEL (ints checked for range).
_EQUAL_TYPES = frozenset({str, int, bool, datetime})
_ORDER_TYPES = frozenset({str, int, datetime})


class Fallback(Exception):
    """The fast path cannot be sure of this evaluation; the CEL engine must decide it."""


class Unsupported(Exception):
    """The expression uses something outside the subset."""



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


# ── the closures ────────────────────────────────────────────────────────────────────────────────
#
# Every closure returns a value CEL would hold unchanged (`_checked`) or raises Fallback: input
# reads, helper results and arithmetic are checked where they enter, so operators only dispatch
# on types. Input reads (`_field`, `_presence`, `_plain`) take the input maps; every other closure
# takes the list of variable values they read.


def _unicode(value: str) -> str:
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate: CEL cannot hold it
        raise Fallback from None
    return value


@overload
def _checked(value: int) -> int: ...
@overload
def _checked(value: Any) -> Any: ...
def _checked(value: Any) -> Any:
    """`value` if CEL would hold the same value, else Fallback."""
    kind = type(value)
    if kind is str:
        return value if value.isascii() else _unicode(value)
    if kind is int:
        if _INT_MIN <= value <= _INT_MAX:
            return value
        raise Fallback
    if kind is bool or value is None:
        return value
    if kind is datetime and type(value.tzinfo) is timezone:
        return value
    raise Fallback


def _constant(value: Any) -> Node:
    return lambda values: value


def _field(root: str, name: str) -> Native:
    def get(inputs: Mapping[str, Any]) -> Any:
        source = inputs.get(root)
        if source is None:
            return None
        value = source.get(name)
        kind = type(value)
        if (kind is str and value.isascii()) or kind is bool or value is None:
            return value
        if kind is int and _INT_MIN <= value <= _INT_MAX:
            return value
        return _checked(value)
    return get


def _presence(root: str, name: str) -> Native:
    def has(inputs: Mapping[str, Any]) -> bool:
        source = inputs.get(root)
        return source is not None and name in source
    return has


def _plain(name: str) -> Native:
    return lambda inputs: _checked(inputs.get(name))


def _equal(left: Node, right: Node, negate: bool) -> Node:
    def equal(values: list[Any]) -> bool:
        a: object = left(values)
        b: object = right(values)
        kind = type(a)
        if kind is type(b) and kind in _EQUAL_TYPES:
            return (a != b) if negate else (a == b)
        if a is None or b is None:  # null equals only null (CEL's heterogeneous equality)
            return (a is not b) if negate else (a is b)
        raise Fallback
    return equal


def _order(left: Node, right: Node, compare: Callable[[Any, Any], bool]) -> Node:
    def order(values: list[Any]) -> bool:
        a, b = left(values), right(values)
        kind = type(a)
        if kind is type(b) and kind in _ORDER_TYPES:
            return compare(a, b)
        raise Fallback
    return order


def _member(left: Node, items: list[Any]) -> Node:
    kinds = {type(item) for item in items}
    if len(kinds) > 1 or not kinds <= {str, int}:
        raise Unsupported("a list of mixed or unsupported constants")
    for item in items:
        _checked(item)
    kind = kinds.pop() if kinds else str
    allowed = frozenset(items)

    def member(values: list[Any]) -> bool:
        a = left(values)
        if type(a) is kind:
            return a in allowed
        if a is None:
            return False
        raise Fallback
    return member


def _arithmetic(left: Node, right: Node, op: str) -> Node:
    compute = _ARITHMETIC[op]
    concatenates = op == "+"  # str + str is CEL's concatenation too

    def arithmetic(values: list[Any]) -> Any:
        a, b = left(values), right(values)
        kind = type(a)
        if kind is int and type(b) is int:
            value = compute(a, b)
            if _INT_MIN <= value <= _INT_MAX:
                return value
            raise Fallback
        if concatenates and kind is str and type(b) is str:
            return a + b
        raise Fallback
    return arithmetic


def _and(left: Node, right: Node) -> Node:
    def both(values: list[Any]) -> bool:
        a = left(values)
        if a is False:
            return False
        if a is True:
            b = right(values)
            if type(b) is bool:
                return b
        raise Fallback
    return both


def _or(left: Node, right: Node) -> Node:
    def either(values: list[Any]) -> bool:
        a = left(values)
        if a is True:
            return True
        if a is False:
            b = right(values)
            if type(b) is bool:
                return b
        raise Fallback
    return either


def _not(operand: Node) -> Node:
    def negation(values: list[Any]) -> bool:
        a = operand(values)
        if type(a) is bool:
            return not a
        raise Fallback
    return negation


def _negative(operand: Node) -> Node:
    def negative(values: list[Any]) -> int:
        a = operand(values)
        if type(a) is int:
            return _checked(-a)
        raise Fallback
    return negative


def _conditional(test: Node, then: Node, otherwise: Node) -> Node:
    def conditional(values: list[Any]) -> Any:
        a = test(values)
        if a is True:
            return then(values)
        if a is False:
            return otherwise(values)
        raise Fallback
    return conditional


def _same(a: Any, b: Any) -> bool:
    """`a` and `b` are the same CEL value: same type, equal, and instants in the same zone."""
    if a is b:
        return True
    if type(a) is not type(b) or a != b:
        return False
    return type(a) is not datetime or a.tzinfo is b.tzinfo


_NOTHING = object()


def _call(function: Callable[..., Any], arguments: list[Node]) -> Node:
    """A helper call; any exception (the helper's or an argument's) hands over to CEL. A pure
    helper's call remembers its latest arguments and result (one entry: a sweep repeats an
    instant, an API call brings a new one, and a miss costs a comparison)."""
    latest: list[Any] = [(_NOTHING, _NOTHING, None)]
    if len(arguments) == 1 and getattr(function, PURE, False):
        (first,) = arguments

        def pure1(values: list[Any]) -> Any:
            try:
                a = first(values)
                key, _, value = latest[0]
                if _same(key, a):
                    return value
                value = _checked(function(a))
            except Exception:
                raise Fallback from None
            latest[0] = (a, None, value)  # one tuple: a thread sees the old entry or the new
            return value
        return pure1
    if len(arguments) == 2 and getattr(function, PURE, False):
        first, second = arguments

        def pure2(values: list[Any]) -> Any:
            try:
                a, b = first(values), second(values)
                key_a, key_b, value = latest[0]
                if _same(key_a, a) and _same(key_b, b):
                    return value
                value = _checked(function(a, b))
            except Exception:
                raise Fallback from None
            latest[0] = (a, b, value)
            return value
        return pure2

    def call(values: list[Any]) -> Any:
        try:
            return _checked(function(*[argument(values) for argument in arguments]))
        except Exception:
            raise Fallback from None
    return call


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


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_ARITHMETIC: dict[str, Callable[[int, int], int]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul}


def _slot(index: int) -> Node:
    return itemgetter(index)


def _read_all(readers: tuple[Native, ...]) -> Callable[[Mapping[str, Any]], list[Any]]:
    """One call that reads every variable (unrolled for the common small counts)."""
    if len(readers) == 1:
        (first,) = readers
        return lambda inputs: [first(inputs)]
    if len(readers) == 2:
        first, second = readers
        return lambda inputs: [first(inputs), second(inputs)]
    if len(readers) == 3:
        first, second, third = readers
        return lambda inputs: [first(inputs), second(inputs), third(inputs)]
    return lambda inputs: [read(inputs) for read in readers]


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
