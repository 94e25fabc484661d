"""The parser that checks a policy expression against `workflows.expression_budget` before its text
ever reaches the CEL engine.

It is safe on any input: the text is bounded first (`MAX_EXPRESSION_CHARS`), the lexer is one
regular expression of unambiguous alternatives (linear time), and the recursive-descent parser
counts its own nesting and refuses past `MAX_NESTING_DEPTH`, so its Python recursion is bounded
whatever the input (about ten frames a level). It follows CEL's grammar (cel-spec langdef.md)
and, instead of building a tree, gives each sub-expression its `Facts` bottom-up: static type,
depth, node count, comprehension nesting and estimated cost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from tollgate.workflows.exceptions import ExpressionError
from tollgate.workflows.expression_budget import (
    FUNCTION_TYPES,
    MACROS,
    MAX_AST_NODES,
    MAX_COMPREHENSION_NESTING,
    MAX_ESTIMATED_COST,
    MAX_EXPRESSION_CHARS,
    MAX_NESTING_DEPTH,
    REGEX_COST,
    SCALAR_TYPES,
    SCANNING,
    STRING_TRAVERSAL_COST,
    UNBOUNDED_LIST_SIZE,
    UNBOUNDED_STRING_LENGTH,
    Facts,
    Refused,
    constant_facts,
    field_facts,
    join,
    position,
    scan_cost,
)

__all__ = ["check_budget", "tokens"]

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n\f]+|//[^\n]*)
  | (?P<string>(?:[rR][bB]?|[bB][rR]?)?(?:
        '''(?:\\.|[^\\])*?''' | \"\"\"(?:\\.|[^\\])*?\"\"\"
      | '(?:\\.|[^'\\\n\r])*' | "(?:\\.|[^"\\\n\r])*"))
  | (?P<number>0[xX][0-9a-fA-F]+[uU]? | \d+\.\d+(?:[eE][+-]?\d+)? | \.\d+(?:[eE][+-]?\d+)?
      | \d+[eE][+-]?\d+ | \d+[uU]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[<>!?:()\[\]{},.+\-*/%])
""", re.VERBOSE | re.DOTALL)
_RAW_STRING = re.compile(r"""[bB]?[rR][bB]?('''.*?'''|\"\"\".*?\"\"\"|'[^'\n\r]*'|"[^"\n\r]*")""",
                         re.DOTALL)
_RELATIONS = frozenset({"<", "<=", ">", ">=", "==", "!=", "in"})



class _Parser:
    """CEL's grammar (cel-spec langdef.md), computing `Facts` instead of building a tree."""

    def __init__(self, text: str, constants: Mapping[str, Any], maps: Iterable[str],
                 schemas: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        self.text, self.constants, self.maps, self.schemas = text, constants, frozenset(maps), schemas
        self.tokens = list(self._lex(text))
        self.at = 0
        self.nesting = 0
        self.inlined = 0  # characters added by inlining constants
        self.scopes: list[dict[str, Facts]] = []
        self.notes: dict[str, None] = {}

    @staticmethod
    def _lex(text: str) -> Iterable[tuple[str, str, int]]:
        i = 0
        while i < len(text):
            match = _RAW_STRING.match(text, i) or _TOKEN.match(text, i)
            if match is None:
                if text[i] in "\"'":
                    raise Refused("The expression does not compile: a string literal is not closed.", i)
                raise Refused(f"The expression does not compile: unexpected character {text[i]!r}.", i)
            kind = match.lastgroup or "string"
            if kind != "space":
                yield kind, match.group(), i
            i = match.end()
        yield "end", "", len(text)

    # ── helpers ─────────────────────────────────────────────────────────────────────────────

    def peek(self, ahead: int = 0) -> tuple[str, str, int]:
        return self.tokens[min(self.at + ahead, len(self.tokens) - 1)]

    def accept(self, text: str) -> bool:
        kind, value, _ = self.peek()
        if kind in ("op", "ident") and value == text:
            self.at += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            self.fail(f"expected '{text}'")

    def fail(self, what: str) -> None:
        kind, value, offset = self.peek()
        found = "the end of the expression" if kind == "end" else f"'{value}'"
        raise Refused(f"The expression does not compile: {what}, found {found}.", offset=offset)

    def node(self, kind: str | None, parts: Sequence[Facts], cost: int = 1, **more: Any) -> Facts:
        facts = Facts(kind, cost=cost + sum(p.cost for p in parts),
                      depth=1 + max((p.depth for p in parts), default=0),
                      nodes=1 + sum(p.nodes for p in parts),
                      comprehensions=max((p.comprehensions for p in parts), default=0), **more)
        if facts.depth > MAX_NESTING_DEPTH:
            raise Refused(f"The expression is nested more than {MAX_NESTING_DEPTH} levels deep (a chain "
                          "like a + b + c counts one level per operator); split it into "
                          "simpler rules or parameters.", offset=self.peek()[2])
        if facts.nodes > MAX_AST_NODES:
            raise Refused(f"The expression has more than {MAX_AST_NODES:,} parts (operators, calls, "
                          "fields, literals); split it into simpler rules.", offset=self.peek()[2])
        return facts

    def scan_cost(self, facts: Facts, what: str) -> int:
        if facts.size is None:
            self.notes[f"{what} declares no maxLength, so up to {UNBOUNDED_STRING_LENGTH:,} characters "
                       "are assumed"] = None
        return scan_cost(facts.size)

    def list_size(self, facts: Facts, what: str) -> int:
        if facts.size is not None:
            return facts.size
        self.notes[f"{what} declares no maxItems, so up to {UNBOUNDED_LIST_SIZE:,} elements "
                   "are assumed"] = None
        return UNBOUNDED_LIST_SIZE

    # ── grammar ─────────────────────────────────────────────────────────────────────────────

    def expr(self) -> Facts:
        self.nesting += 1
        if self.nesting > MAX_NESTING_DEPTH:
            raise Refused(f"The expression is nested more than {MAX_NESTING_DEPTH} levels deep; split "
                          "it into simpler rules or parameters.", offset=self.peek()[2])
        condition = self.binary(0)
        if self.accept("?"):
            then = self.binary(0)
            self.expect(":")
            otherwise = self.expr()
            joined = join(then, otherwise)
            condition = self.node(joined.type if joined else None, [condition, then, otherwise],
                                  size=joined.size if joined else None)
        self.nesting -= 1
        return condition

    _LEVELS = (("||",), ("&&",), tuple(_RELATIONS), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> Facts:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while True:
            kind, op, _ = self.peek()
            if kind not in ("op", "ident") or op not in self._LEVELS[level]:
                return left
            self.at += 1
            right = self.binary(level + 1)
            left = self.operator(op, left, right)

    def operator(self, op: str, left: Facts, right: Facts) -> Facts:
        if op in ("||", "&&") or op in _RELATIONS:
            extra = 0
            if op == "in" and right.type != "map":
                # a list of unknown type is scanned once per evaluation, bounded by the input itself
                extra = self.list_size(right, "the list after 'in'") if right.type == "list" else 0
            return self.node("bool", [left, right], 1 + extra)
        kind = left.type if left.type == right.type else None
        if op == "+" and {left.type, right.type} == {"timestamp", "duration"}:
            kind = "timestamp"
        size = None if left.size is None or right.size is None else left.size + right.size
        extra = 0
        if op == "+" and kind == "string":
            extra = self.scan_cost(replace(left, size=size), "a string joined with +")
        elif op == "+" and kind == "list":
            extra = math.ceil(STRING_TRAVERSAL_COST * (UNBOUNDED_LIST_SIZE if size is None else size))
        return self.node(kind, [left, right], 1 + extra, size=size if kind in ("string", "list") else None,
                         elem=join(left.elem, right.elem))

    def unary(self) -> Facts:
        ops = []
        while self.peek()[0] == "op" and self.peek()[1] in ("!", "-"):
            ops.append(self.peek()[1])
            self.at += 1
        facts = self.member()
        for op in reversed(ops):
            facts = self.node("bool" if op == "!" else facts.type, [facts])
        return facts

    def member(self) -> Facts:
        facts, path = self.primary()
        while True:
            if self.accept("."):
                kind, name, offset = self.peek()
                if kind != "ident":
                    self.fail("expected a field or method name after '.'")
                self.at += 1
                if self.peek()[1] == "(" and self.peek()[0] == "op":
                    facts, path = self.method(facts, name, path), None
                else:
                    facts, path = self.select(facts, name, path, offset)
            elif self.accept("["):
                index = self.expr()
                self.expect("]")
                facts, path = self.node(facts.elem.type if facts.elem else None, [facts, index],
                                        size=facts.elem.size if facts.elem else None), None
            else:
                return facts

    def select(self, facts: Facts, name: str, path: tuple[Any, ...] | None, offset: int) -> tuple[Facts, Any]:
        if path is not None and path[0] == "const":  # params.a.b: inline the constant
            value = path[1]
            if isinstance(value, Mapping) and name in value:
                constant, chars = constant_facts(value[name], offset)
                self.inlined += chars
                return constant, ("const", value[name])
            return Facts(), None  # an unknown parameter: the rewriter names it
        if path is not None and path[0] == "map":
            field = field_facts(path[1], name)
            return self.node(field.type, [facts], size=field.size, elem=field.elem, schema=field.schema), (
                ("map", [field.schema]) if field.schema else None)
        return self.node(None, [facts]), None

    def arguments(self) -> list[Facts]:
        args: list[Facts] = []
        self.expect("(")
        if not self.accept(")"):
            args.append(self.expr())
            while self.accept(","):
                args.append(self.expr())
            self.expect(")")
        return args

    def method(self, target: Facts, name: str, path: Any) -> Facts:
        if name in MACROS and self.peek(1)[0] == "ident" and self.peek(2)[1] == ",":
            return self.comprehension(target, name)
        args = self.arguments()
        cost = 1
        if name in SCANNING:
            cost += self.scan_cost(target, f"the string before .{name}()")
        elif name == "matches":
            pattern = args[0].value if args and isinstance(args[0].value, str) else None
            regex = scan_cost(None) if pattern is None else math.ceil(REGEX_COST * len(pattern))
            cost += (1 + self.scan_cost(target, "the string before .matches()")) * (1 + regex)
        return self.node(FUNCTION_TYPES.get(name), [target, *args], cost)

    def comprehension(self, target: Facts, name: str) -> Facts:
        self.expect("(")
        _, var, _ = self.peek()
        self.at += 2  # the variable and the comma
        self.scopes.append({var: target.elem or Facts()})
        parts = [self.expr()]
        while self.accept(","):
            parts.append(self.expr())
        self.scopes.pop()
        self.expect(")")
        size = self.list_size(target, "the list this comprehension ranges over")
        body = sum(p.cost for p in parts) + 1
        facts = self.node(FUNCTION_TYPES[name], [target, *parts], size * body - body + 1,
                          size=target.size if name in ("map", "filter") else None,
                          elem=target.elem if name == "filter" else parts[-1] if name == "map" else None)
        nesting = 1 + max(p.comprehensions for p in parts)
        if nesting > MAX_COMPREHENSION_NESTING:
            raise Refused(f"The expression nests comprehensions ({', '.join(sorted(MACROS))}) "
                          f"{nesting} deep; at most {MAX_COMPREHENSION_NESTING} are allowed.",
                          offset=self.peek()[2])
        return replace(facts, comprehensions=nesting)

    def primary(self) -> tuple[Facts, Any]:
        kind, value, offset = self.peek()
        self.at += 1
        if kind == "number":
            lowered = value.lower()
            number = "uint" if lowered.endswith("u") else (
                "int" if lowered.startswith("0x") or not ("." in value or "e" in lowered) else "double")
            return Facts(number, cost=0), None
        if kind == "string":
            if value[0] in "bB" or value[:2].lower() in ("rb",):
                return Facts("bytes", cost=0, size=len(value)), None
            body = value.lstrip("rR")
            quote = 3 if body[:3] in ("'''", '"""') else 1
            return Facts("string", cost=0, size=len(body) - 2 * quote, value=body[quote:-quote]), None
        if kind == "ident":
            if value in ("true", "false"):
                return Facts("bool", cost=0), None
            if value == "null":
                return Facts("null", cost=0), None
            if self.peek()[1] == "(" and self.peek()[0] == "op":
                return self.node(FUNCTION_TYPES.get(value), self.arguments()), None
            for scope in reversed(self.scopes):
                if value in scope:
                    return replace(scope[value], cost=1, depth=1, nodes=1, comprehensions=0), None
            if value in self.constants:
                if self.peek()[1] != ".":  # the whole constant is inlined
                    constant, chars = constant_facts(self.constants[value], offset)
                    self.inlined += chars
                    return constant, None
                return Facts("map", cost=0), ("const", self.constants[value])
            if value in self.maps:
                schemas = self.schemas.get(value)
                return Facts("map"), (("map", schemas) if schemas else None)
            return Facts(SCALAR_TYPES.get(value)), None
        if kind == "op" and value == "(":
            inner = self.expr()
            self.expect(")")
            return inner, None
        if kind == "op" and value in ("[", "{"):
            close = "]" if value == "[" else "}"
            items: list[Facts] = []
            while not self.accept(close):
                items.append(self.expr())
                if value == "{":
                    self.expect(":")
                    items.append(self.expr())
                if not self.accept(","):
                    self.expect(close)
                    break
            if value == "{":
                return self.node("map", items, size=len(items) // 2), None
            elem = None
            for item in items:
                elem = join(elem, item)
            return self.node("list", items, size=len(items), elem=elem), None
        if kind == "op" and value == "." and self.peek()[0] == "ident":
            return self.primary()  # a leading dot names the root scope
        self.at -= 1
        self.fail("expected a value")
        raise AssertionError  # unreachable: fail raises



def check_budget(source: str, *, constants: Mapping[str, Any] | None = None, maps: Iterable[str] = (),
                 schemas: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> Facts:
    """The facts of `source`, or `ExpressionError` (with its position) when it is not valid CEL or
    exceeds the budget. Linear in the length of `source`; recursion bounded by MAX_NESTING_DEPTH."""
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"The expression is {len(source):,} characters long; at most "
                              f"{MAX_EXPRESSION_CHARS:,} are allowed. Split it into several rules.")
    try:
        return _check(source, constants or {}, maps, schemas or {})
    except Refused as refused:
        raise ExpressionError(refused.message, *position(source, refused.offset)) from None


def tokens(source: str) -> list[tuple[str, str, int]]:
    """The tokens of `source` as (kind, text, offset) — kinds `string`, `number`, `ident`, `op` —
    without white space and comments: what two spellings of one expression have in common."""
    try:
        return [token for token in _Parser._lex(source) if token[0] != "end"]
    except Refused as refused:
        raise ExpressionError(refused.message, *position(source, refused.offset)) from None


def _check(source: str, constants: Mapping[str, Any], maps: Iterable[str],
           schemas: Mapping[str, Sequence[Mapping[str, Any]]]) -> Facts:
    parser = _Parser(source, constants, maps, schemas)
    facts = parser.expr()
    if parser.peek()[0] != "end":
        parser.fail("expected an operator or the end of the expression")
    if facts.cost > MAX_ESTIMATED_COST:
        why = "; ".join(parser.notes)
        raise Refused(
            f"The expression's estimated cost is {facts.cost:,}, over the budget of {MAX_ESTIMATED_COST:,} "
            f"(each comprehension multiplies by the size of its list, string functions by the length of "
            f"their string){': ' + why if why else ''}. Declare maxItems/maxLength in the data schema, "
            "range over shorter lists or avoid nested comprehensions.")
    if len(source) + parser.inlined > MAX_EXPRESSION_CHARS:
        raise Refused(f"With its parameters inlined the expression is over {MAX_EXPRESSION_CHARS:,} "
                      "characters long; use shorter parameter lists or split the rule.")
    return facts
