"""Every error tollgate raises on purpose; `service/errors.py` maps them to problem+json."""

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


class GuardDenied(TollgateError):
    """One or more policy rules refused the event (or the creation of an instance)."""

    status = 422
    type_slug = "guard_denied"
    title = "Denied by policy"

    def __init__(self, event: str, reasons: list[Reason]) -> None:
        self.event, self.reasons = event, reasons
        rules = ", ".join(r.rule for r in reasons)
        super().__init__(f"The event '{event}' was denied by the rules: {rules}.")

    def extra(self) -> dict[str, Any]:
        return {"reasons": [r.as_dict() for r in self.reasons]}


class Forbidden(TollgateError):
    """The caller's role may not fire this event (e.g. support actions need admin)."""

    status = 403
    type_slug = "forbidden"
    title = "Forbidden"


class Conflict(TollgateError):
    status = 409
    type_slug = "conflict"
    title = "Conflict"


class StaleVersion(TollgateError):
    status = 412
    type_slug = "stale_version"
    title = "Precondition failed"


class ClockError(TollgateError):
    status = 422
    type_slug = "clock_error"
    title = "Clock cannot move"


class ClockBusy(TollgateError):
    """Another advance holds the test clock (one advance of a clock runs at a time)."""

    status = 409
    type_slug = "clock_busy"
    title = "Clock busy"


class RulesFailed(TollgateError):
    """The active rules raised an error while judging an event (e.g. a timer's `at` expression
    on a field the instance does not have): nothing of the event is applied. A timer that fails
    so is recorded in the history as `failed` and parked (service/sweeps.py)."""

    status = 422
    type_slug = "rules_failed"
    title = "The rules failed on this event"

    def __init__(self, workflow: str, instance: str, event: str, error: BaseException) -> None:
        self.workflow, self.instance, self.event = workflow, instance, event
        self.error = f"{type(error).__name__}: {error}"
        super().__init__(f"The active rules failed while judging '{event}' on the {workflow} instance "
                         f"'{instance}' ({self.error}); nothing was applied. Fix the rules (PUT /rules) "
                         "and fire the event again.")

    def extra(self) -> dict[str, Any]:
        return {"instance": self.instance, "event": self.event, "error": self.error}


class Unprocessable(TollgateError):
    """A well-formed request that refers to something unusable (unknown account, wrong clock)."""

    status = 422
    type_slug = "unprocessable"
    title = "Unprocessable request"


class IdempotencyMismatch(TollgateError):
    status = 409
    type_slug = "idempotency_key_reused"
    title = "Idempotency key reused"


class StaleBatch(TollgateError):
    """A batch judged outside the write lock found, while writing, that a row it read had changed
    (service/sweeps.py judges it again under the lock; never reaches a client)."""

    status = 409
    type_slug = "conflict"
    title = "Conflict"


class SendFailed(GuardDenied):
    """An event sent to another instance was refused, so the whole transaction was undone."""

    type_slug = "guard_denied"

    def __init__(self, target: str, event: str, cause: TollgateError) -> None:
        reasons = list(getattr(cause, "reasons", []))
        if not reasons:
            reasons = [Reason("linked_instance",
                              f"연결된 인스턴스 {target}이(가) '{event}' 이벤트를 거부했습니다.",
                              f"The linked instance {target} refused '{event}': {cause.message}")]
        super().__init__(event, reasons)
        self.target, self.cause = target, cause
        self.message = (f"The event was undone because the linked instance {target} refused "
                        f"'{event}': {cause.message}")


class DiagramUnavailable(TollgateError):
    """A diagram format whose renderer (Graphviz `dot`) is not installed or failed."""

    status = 503
    type_slug = "diagram_unavailable"
    title = "Diagram unavailable"
