"""Guards: rules.yaml expressions compiled against the helper functions of the policy's zone.

A `GuardSet` holds every enabled guard rule bound to one event and evaluates them in one CEL
call, so a denial lists every failed rule at the cost of converting the inputs once.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from tollgate.workflows import calendar
from tollgate.workflows.actions import code_digest
from tollgate.workflows.cel_subset import PURE
from tollgate.workflows.exceptions import Reason
from tollgate.workflows.expressions import Expression, combine

INPUT_MAPS = ("data", "context", "account", "facts")
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")

#: The logger the CEL engine writes to.
CEL_LOGGER = "cel"


def is_helper_failure(message: str) -> bool:
    """Whether a message of the CEL engine's logger reports a failing helper call.

    The engine logs each one, with the error quoting its arguments (a password given to `ts()`),
    as a warning before it raises; the raise is what counts: it becomes a rule's reason here
    (redacted where the data holds secrets), so the caller drops such records from its logs
    (`service/application/passwords.py`): the core itself does no logging."""
    return message.startswith("Python function ")


def helper_functions(zone: ZoneInfo) -> dict[str, Callable[..., Any]]:
    """The functions rules.yaml expressions may call, bound to the policy's time zone.

    The month and clock helpers are pure functions of a few distinct values per billing month
    (a usage month, a day, "HH:MM"), so they are memoised: a guard like `now >= local_at(
    add_months(context.usage_month, 1), 3, "14:00")` then costs a dictionary look-up, not a
    parse and a time-zone conversion. All are marked pure, so each call in an expression
    remembers its latest arguments and result (`workflows.cel_subset`): a timer sweep judges
    thousands of events at one instant.
    """

    def local_time(ts: datetime) -> str:
        return ts.astimezone(zone).strftime("%H:%M:%S")

    def is_email(text: str) -> bool:
        return isinstance(text, str) and len(text) <= 254 and bool(_EMAIL.match(text.strip()))

    def code_matches(code: str, digest: str) -> bool:
        return hmac.compare_digest(code_digest(str(code)), str(digest))

    helpers: dict[str, Callable[..., Any]] = {
        "in_daily_window": lambda ts, start, end: calendar.in_daily_window(ts, start, end, zone),
        "age_on": lambda birth, ts: calendar.age_on(birth, ts, zone),
        "local_date": lambda ts: calendar.local_date(ts, zone),
        "local_time": local_time,
        "local_day": lambda ts: ts.astimezone(zone).day,
        "month_of": lambda ts: calendar.month_of(ts, zone),
        "add_months": calendar.remembered(lambda month, n: calendar.add_months(month, int(n))),
        "last_day": calendar.last_day,
        "local_at": calendar.remembered(lambda month, day, clock: calendar.at_local(
            month, int(day), clock, zone)),
        "start_of_day": lambda ts: calendar.start_of_local_day(ts, zone),
        "add_days": lambda ts, n: calendar.add_days(ts, int(n), zone),
        "add_hours": lambda ts, n: calendar.add_hours(ts, n),
        "add_calendar_months": lambda ts, n: calendar.add_calendar_months(ts, int(n), zone),
        "length": lambda text: len(text),
        "code_matches": code_matches,
        "is_email": is_email,
        "ts": lambda text: calendar.as_utc(calendar.parse_instant(text)),
    }
    for helper in helpers.values():
        setattr(helper, PURE, True)  # each is a function of its arguments and the zone alone
    return helpers


@dataclass(frozen=True)
class Rule:
    """A named rule of rules.yaml, compiled."""

    id: str
    kind: str  # guard | route
    workflow: str
    events: tuple[str, ...]
    expression: Expression
    message_ko: str
    message_en: str
    enabled: bool = True

    def reason(self, detail: str | None = None) -> Reason:
        return Reason(self.id, self.message_ko, self.message_en, detail)


class GuardSet:
    """Every enabled guard rule of one event, evaluated together."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = tuple(rules)
        self.program: Expression | None = combine([r.expression for r in rules]) if rules else None

    def failures(self, inputs: Mapping[str, Any]) -> list[Reason]:
        """The reasons of every rule that does not hold; a rule that errors counts as failed."""
        if self.program is None:
            return []
        try:
            verdicts = self.program.evaluate(inputs)
        except Exception:  # CEL raised: find which rules error, judge the others one by one
            return [r for r in (self._judge(rule, inputs) for rule in self.rules) if r is not None]
        for ok in verdicts:
            if ok is not True:
                return [rule.reason() for rule, ok in zip(self.rules, verdicts, strict=True)
                        if ok is not True]
        return []

    @staticmethod
    def _judge(rule: Rule, inputs: Mapping[str, Any]) -> Reason | None:
        try:
            ok = rule.expression.evaluate(inputs)
        except Exception as error:
            return rule.reason(f"The rule could not be evaluated: {error}")
        return None if ok is True else rule.reason()


def holds(rule: Rule | None, inputs: Mapping[str, Any]) -> bool:
    """Whether a route rule holds (a disabled or failing route does not)."""
    if rule is None or not rule.enabled:
        return False
    try:
        return rule.expression.evaluate(inputs) is True
    except Exception:
        return False
