"""The closures the CEL subset compiles to: one builder per node kind, each checking its operands.

Kept apart from the parser (`workflows.cel_subset`) so the run-time half, what a guard executes on
every event, reads on its own; each closure either returns a value CEL would hold or raises Fallback.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any, overload

__all__ = ["PURE", "Fallback", "Native", "Node", "Unsupported"]

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
