"""The errors only the I/O side raises: storage, clocks, authorisation, denied or failed events.

They subclass the core's `TollgateError` (`workflows/exceptions.py`), so there is one tree and one
problem+json mapping (`service/errors.py`); the core never raises them.
"""

from __future__ import annotations

from typing import Any

from tollgate.workflows.exceptions import Reason, TollgateError


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
    so is recorded in the history as `failed` and parked (service/application/sweeps.py)."""

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
    (service/application/sweeps.py judges it again under the lock; never reaches a client)."""

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
