"""Which roles may fire which events (SPEC §6): checked per event once the instance's workflow is known.

Support actions need a role their definition names, the payment gateway reports only charges and
deposits, and timer events are the scheduler's (an admin may fire one by hand, recorded as `admin`
in the history). The HTTP edge (`service/auth.py`) authenticates the caller and passes its role.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tollgate.service.exceptions import Forbidden
from tollgate.workflows.definitions import Event
from tollgate.workflows.engine import Engine

#: Roles that may fire only the events named here (SPEC §6), whatever the workflow.
EVENT_LIMITS: Mapping[str, frozenset[str]] = {
    "gateway": frozenset({"charge_succeeded", "charge_failed", "deposit"}),
}
#: Besides the scheduler (which needs no token), the roles that may fire a timer event over the API.
TIMER_ROLES = frozenset({"admin"})


def event_refusal(role: str, event: Event, timers: tuple[str, ...]) -> str | None:
    """Why `role` may not fire `event` over the API (a sentence for the 403), or None if it may.

    `timers` are the ids of the active rules' timer schedules that fire this event; an event
    with one, or marked `timed` in its definition, is a timer event.
    """
    if event.roles and role not in event.roles:
        return (f"The event '{event.name}' is a support action: only the role(s) {', '.join(event.roles)} "
                f"may fire it, not {role}.")
    limit = EVENT_LIMITS.get(role)
    if limit is not None and event.name not in limit:
        return (f"The role '{role}' may only report {', '.join(sorted(limit))}; it may not fire "
                f"'{event.name}'.")
    if (event.timed or timers) and role not in TIMER_ROLES:
        schedules = f" (timer {', '.join(timers)} of the rules)" if timers else ""
        return (f"The event '{event.name}' is fired by the scheduler when it falls due{schedules}; the "
                f"role '{role}' may not fire it over the API. Advance a test clock to fire it, or ask an "
                f"{' or '.join(sorted(TIMER_ROLES))} to fire it by hand.")
    return None


def authorize(engine: Engine, record: Mapping[str, Any], event: str, role: str) -> None:
    """Raise Forbidden when the API caller's `role` may not fire `event` on this instance.

    The timer events come from the rules version judged under (`engine`: its timer schedules) and
    the definition (`timed`).
    """
    workflow = record["workflow"]
    spec = engine.definition(workflow).events.get(event)
    if spec is None:
        return  # not an event of the workflow: judged (404/409) like any other call
    timers = tuple(t.id for t in engine.policy.timers_of(workflow) if t.event == event)
    refusal = event_refusal(role, spec, timers)
    if refusal is not None:
        raise Forbidden(refusal)
