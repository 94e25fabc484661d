"""Core benchmark: one event judged by the engine ÷ a bare `transitions` trigger.

For each representative event of the bundled rules.yaml, two callables are timed side by side
in the same run, interleaved round by round so that load from other processes hits both alike:

* the baseline: a plain `transitions.Machine` with the workflow's states and transitions
  (`auto_transitions=False`), the measured event guarded by two Python callables, triggered on
  a model bound once (the model's state is reset to the source before each trigger);
* the candidate: `Engine.decide(snapshot, event, data, now)` with the event's real guards.

Each figure is the median over the rounds of the per-call time (timeit-style: a warm-up, then
`number` calls per round with the garbage collector paused). Run `python -m bench.core [--quick]
[--json FILE]`; `core_figures()` is what a `tollgate bench` command calls.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import timeit
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any
from zoneinfo import ZoneInfo

from transitions import EventData, Machine

from bench.report import Figure, print_table, write_json
from tollgate.service.application.passwords import new_engine
from tollgate.service.application.policy_files import load_policy_file
from tollgate.workflows.definitions import Definition
from tollgate.workflows.engine import Engine
from tollgate.workflows.outcome import Snapshot
from tollgate.workflows.policy import Policy

__all__ = ["CASES", "CoreCase", "bare_trigger", "core_figures", "engine_call", "main"]

GOAL = 2.0
#: Distinct instants a candidate cycles through: far more than any memo of the core keeps.
_INSTANTS = 100_000
UNIT = "us/event"
_KST = ZoneInfo("Asia/Seoul")


@dataclass(frozen=True)
class CoreCase:
    """One event applied from one state, with data that passes every guard."""

    workflow: str
    state: str
    event: str
    data: Mapping[str, Any]
    context: Mapping[str, Any]
    now: datetime
    account: Mapping[str, Any] | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    goal: float | None = GOAL

    @property
    def name(self) -> str:
        return f"core.{self.workflow}.{self.event}"

    def snapshot(self) -> Snapshot:
        return Snapshot(self.workflow, self.state, self.context, id="bench-1", account=self.account,
                        facts=self.facts)


_ACCOUNT = {"id": "acct-1", "state": "active", "country": "KR", "member_type": "individual",
            "partner": False, "email": "member@example.com"}

#: The measured events: invoice pay_now (2 guards) is the headline figure.
CASES: tuple[CoreCase, ...] = (
    CoreCase("invoice", "issued", "pay_now", {"amount": 5000},
             {"account": "acct-1", "usage_month": "2026-10", "amount_due": 5000, "paid_amount": 0},
             datetime(2026, 11, 3, 14, 0, tzinfo=_KST), account=_ACCOUNT),
    CoreCase("payment_method", "phone_verification", "verify_phone", {"owner_match": True},
             {"account": "acct-1", "channel": "web", "method": "credit_card"},
             datetime(2026, 11, 3, 14, 0, tzinfo=_KST), account=_ACCOUNT),
    CoreCase("payment_method", "method_selection", "select_method",
             {"method": "credit_card", "card_type": "personal", "card_owner": "person"},
             {"account": "acct-1", "channel": "web"},
             datetime(2026, 11, 3, 14, 0, tzinfo=_KST), account=_ACCOUNT),
    CoreCase("signup", "type_selection", "select_type",
             {"country": "KR", "member_type": "individual", "birth_date": "1990-05-17"},
             {}, datetime(2026, 11, 3, 14, 0, tzinfo=_KST)),
)


# ── the two callables ─────────────────────────────────────────────────────────────────────────


class _Model:
    """A plain model for the baseline machine."""

    state: str


def _guard_has_data(event_data: EventData) -> bool:
    return bool(event_data.kwargs)


def _guard_in_state(event_data: EventData) -> bool:
    return event_data.state is not None


def bare_trigger(definition: Definition, case: CoreCase) -> Callable[[], Any]:
    """The baseline: a bare trigger with two Python guards on the same machine shape."""
    transitions = []
    for t in definition.transitions:
        spec: dict[str, Any] = {"trigger": t.event, "source": t.source, "dest": t.dest}
        if t.event == case.event:
            spec["conditions"] = [_guard_has_data, _guard_in_state]
        transitions.append(spec)
    model = _Model()
    Machine(model=model, states=list(definition.state_names), initial=case.state,
            transitions=transitions, auto_transitions=False, send_event=True,
            name=f"bare_{definition.name}")
    trigger = getattr(model, case.event)
    source, data = case.state, dict(case.data)

    def call() -> Any:
        model.state = source
        return trigger(**data)

    return call


def engine_call(engine: Engine, case: CoreCase) -> Callable[[], Any]:
    """The candidate: `Engine.decide` for the case's snapshot, event and data.

    Every call is a microsecond later than the one before, as API requests are, so nothing the
    core remembers by instant (timestamps, memoised expressions) is reused across calls. The
    instants (in the policy's zone, as a caller might pass them) are made before timing: making
    them is the caller's cost, not the engine's.
    """
    snapshot, event, data = case.snapshot(), case.event, dict(case.data)
    decide = engine.decide
    instants = itertools.cycle([case.now + timedelta(microseconds=i) for i in range(_INSTANTS)])

    def call() -> Any:
        return decide(snapshot, event, data, next(instants))

    return call


def _check(engine: Engine, case: CoreCase, baseline: Callable[[], Any],
           candidate: Callable[[], Any]) -> int:
    """Both callables take the transition; return the number of guards the engine evaluates."""
    if baseline() is not True:
        raise RuntimeError(f"The baseline trigger of {case.name} did not take the transition.")
    outcome = candidate()
    if not outcome.applied:
        failed = ", ".join(r.rule for r in outcome.reasons)
        raise RuntimeError(f"{case.name} is denied by {failed}; fix the case's data.")
    return len(engine.policy.guards(case.workflow, case.event).rules)


# ── timing ────────────────────────────────────────────────────────────────────────────────────


def calibrate(fn: Callable[[], Any], seconds: float) -> int:
    """How many calls take about `seconds` (after a warm-up of the same length)."""
    timer = timeit.Timer(fn)
    number, elapsed = 1, 0.0
    while elapsed < seconds / 4:
        number *= 2
        elapsed = timer.timeit(number)
    return max(1, int(number * seconds / max(elapsed, 1e-9)))


def measure_pair(baseline: Callable[[], Any], candidate: Callable[[], Any], *, repeat: int,
                 seconds: float) -> tuple[float, float]:
    """Median µs per call of both callables, timed in alternating rounds."""
    n_base, n_cand = calibrate(baseline, seconds), calibrate(candidate, seconds)
    base_timer, cand_timer = timeit.Timer(baseline), timeit.Timer(candidate)
    base, cand = [], []
    for _ in range(repeat):
        base.append(base_timer.timeit(n_base) / n_base * 1e6)
        cand.append(cand_timer.timeit(n_cand) / n_cand * 1e6)
    return statistics.median(base), statistics.median(cand)


def core_figures(policy: Policy | None = None, *, quick: bool = False,
                 cases: Sequence[CoreCase] = CASES,
                 progress: Callable[[str], None] | None = None) -> list[Figure]:
    """One figure per case: engine µs/event against the bare trigger in the same run."""
    policy = policy or load_policy_file("rules.yaml")
    engine = new_engine(policy)
    repeat, seconds = (5, 0.02) if quick else (15, 0.1)
    figures = []
    for case in cases:
        baseline = bare_trigger(policy.definitions[case.workflow], case)
        candidate = engine_call(engine, case)
        guards = _check(engine, case, baseline, candidate)
        if progress:
            progress(f"{case.name}: {guards} guard(s), {repeat} rounds")
        base_us, cand_us = measure_pair(baseline, candidate, repeat=repeat, seconds=seconds)
        figures.append(Figure(case.name, cand_us, UNIT, base_us, goal=case.goal,
                              note=f"{guards} guard(s); baseline: bare transitions trigger "
                                   "with 2 Python guards"))
    return figures


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer, shorter rounds")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--rules", default="rules.yaml", help="the rules file (default rules.yaml)")
    args = parser.parse_args(argv)

    def progress(text: str) -> None:
        print(f"… {text}", file=sys.stderr, flush=True)

    figures = core_figures(load_policy_file(args.rules), quick=args.quick, progress=progress)
    print_table(figures, out)
    if args.json:
        write_json(figures, args.json)
    return 0 if all(f.met is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
