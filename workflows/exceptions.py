"""The errors the pure core raises, and the root of every deliberate tollgate error.

Errors only the I/O side raises (storage conflicts, clocks, authorisation, denials turned into
errors) subclass `TollgateError` in `service/exceptions.py`: one tree, mapped to problem+json by
`service/errors.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ExpressionError(ValueError):
    """An expression that does not compile, names something unknown or exceeds the expression
    budget (`workflows.expression_budget`); line/column are 1-based positions inside its text."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


class EngineFailure(RuntimeError):
    """The CEL engine failed inside (a Rust panic, which pyo3 raises as a BaseException): turned
    into an ordinary error so that a guard counts as failed and a request never crashes."""


class TollgateError(Exception):
    """Base of every deliberate tollgate error; `str(error)` is a full sentence."""

    status = 500
    type_slug = "error"
    title = "Internal error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def extra(self) -> dict[str, Any]:
        """Members added to the problem+json body besides type, title, status and detail."""
        return {}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rules file, definition or request body, with where it is."""

    path: str
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None

    def location(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def __str__(self) -> str:
        return f"{self.location()} {self.path}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "column": self.column,
                "message": self.message, **({"file": self.file} if self.file else {})}


class RulesError(TollgateError):
    """A rules file (or workflow definition) that cannot be activated; lists every problem."""

    status = 422
    type_slug = "invalid_rules"
    title = "Invalid rules"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        count = len(problems)
        first = f" The first: {problems[0]}" if problems else ""
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"The rules were refused because of {count} {noun}.{first}")

    def extra(self) -> dict[str, Any]:
        return {"errors": [p.as_dict() for p in self.problems]}


class DefinitionError(RulesError):
    """A workflow definition under workflows/definitions/ is inconsistent."""

    type_slug = "invalid_definition"
    title = "Invalid workflow definition"


class NotFound(TollgateError):
    status = 404
    type_slug = "not_found"
    title = "Not found"


class BadRequest(TollgateError):
    """A request body or event data that does not match its schema."""

    status = 400
    type_slug = "bad_request"
    title = "Bad request"

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def extra(self) -> dict[str, Any]:
        return {"errors": [p.as_dict() for p in self.problems]} if self.problems else {}


class InvalidTransition(TollgateError):
    """The event is not defined for the instance's current state."""

    status = 409
    type_slug = "invalid_transition"
    title = "Invalid transition"

    def __init__(self, workflow: str, state: str, event: str, allowed: list[str]) -> None:
        self.workflow, self.state, self.event, self.allowed = workflow, state, event, allowed
        options = ", ".join(allowed) if allowed else "none"
        super().__init__(
            f"The event '{event}' is not valid for a {workflow} instance in state '{state}'; "
            f"events valid there: {options}."
        )

    def extra(self) -> dict[str, Any]:
        return {"state": self.state, "event": self.event, "allowed_events": self.allowed}


@dataclass(frozen=True)
class Reason:
    """A failed policy rule: its id and its message in Korean and English."""

    rule: str
    ko: str
    en: str
    detail: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": {"ko": self.ko, "en": self.en}}
        if self.detail:
            out["detail"] = self.detail
        return out
