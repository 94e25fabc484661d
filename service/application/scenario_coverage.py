"""Coverage of a policy by its scenarios: which rules were seen both holding and failing, which
transitions were taken, which timers fired — and what was never exercised.

The items come from the policy (every enabled rule on each event it is judged on, every transition
of each definition from each of its source states, every timer); whether each was exercised comes
from the `Seen` records of the scenario runs. A rule is covered on an event only when scenarios saw
it both hold and fail there: a guard that never fails is not tested, only present. The result is
also written as JSON (`as_dict`), which `tollgate diagram --coverage` reads back
(`untested_transitions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tollgate.service.application.scenarios import Seen
from tollgate.workflows.definitions import CREATE_EVENT
from tollgate.workflows.policy import Policy

__all__ = ["KINDS", "Coverage", "RuleItem", "TimerItem", "TransitionItem", "measure",
           "untested_transitions"]

KINDS = ("rules", "transitions", "timers")
FORMAT = "tollgate-coverage/1"


@dataclass(frozen=True)
class RuleItem:
    """A rule on one event it is judged on (a guard's `events`, a route's branches)."""

    rule: str
    kind: str  # guard | route
    workflow: str
    event: str
    held: bool
    failed: bool

    @property
    def covered(self) -> bool:
        return self.held and self.failed

    @property
    def name(self) -> str:
        return f"{self.rule} on {self.workflow}.{self.event}"

    @property
    def gap(self) -> str:
        if self.held:
            return "seen holding, never failing"
        if self.failed:
            return "seen failing, never holding"
        return "never judged"


@dataclass(frozen=True)
class TransitionItem:
    """A transition from one source state; `target` is the source for an internal one."""

    workflow: str
    source: str
    event: str
    target: str
    internal: bool
    route: str | None
    taken: bool

    @property
    def covered(self) -> bool:
        return self.taken

    @property
    def name(self) -> str:
        notes = ([f"when {self.route}"] if self.route else []) + (["internal"] if self.internal else [])
        return (f"{self.workflow}: {self.source} --{self.event}--> {self.target}"
                + (f" ({', '.join(notes)})" if notes else ""))


@dataclass(frozen=True)
class TimerItem:
    timer: str
    workflow: str
    event: str
    states: tuple[str, ...]
    fired: bool

    @property
    def covered(self) -> bool:
        return self.fired

    @property
    def name(self) -> str:
        return f"{self.timer} ({self.workflow}.{self.event} in {', '.join(self.states)})"


@dataclass(frozen=True)
class Coverage:
    """Every item of a policy with whether the scenarios exercised it."""

    rules_version: str
    rules: tuple[RuleItem, ...]
    transitions: tuple[TransitionItem, ...]
    timers: tuple[TimerItem, ...]

    def items(self, kind: str) -> tuple[RuleItem, ...] | tuple[TransitionItem, ...] | tuple[TimerItem, ...]:
        items: tuple[Any, ...] = getattr(self, kind)
        return items

    def counts(self, kind: str) -> tuple[int, int]:
        """(covered, total) of `kind` (one of KINDS)."""
        items = self.items(kind)
        return sum(1 for i in items if i.covered), len(items)

    def percent(self, kind: str) -> float:
        """The share of `kind` covered, 0–100 (100 when there is nothing of that kind)."""
        covered, total = self.counts(kind)
        return 100.0 * covered / total if total else 100.0

    def below(self, threshold: float) -> list[str]:
        """The kinds whose percentage is under `threshold`."""
        return [kind for kind in KINDS if self.percent(kind) < threshold]

    def never_exercised(self) -> list[str]:
        """One line per item not covered: what it is and what is missing."""
        lines = [f"rule {r.name}: {r.gap}" for r in self.rules if not r.covered]
        lines += [f"transition {t.name}: never taken" for t in self.transitions if not t.taken]
        lines += [f"timer {t.name}: never fired" for t in self.timers if not t.fired]
        return lines

    def summary(self) -> list[str]:
        nouns = {"rules": "rule bindings seen holding and failing", "transitions": "transitions taken",
                 "timers": "timers fired"}
        width = max(len(str(self.counts(k)[1])) for k in KINDS)
        return [f"{kind:<12}{self.counts(kind)[0]:>{width}}/{self.counts(kind)[1]:<{width}} "
                f"{self.percent(kind):6.1f}%  {nouns[kind]}" for kind in KINDS]

    def report(self) -> list[str]:
        """The text `tollgate rules test --coverage` prints: each item, the gaps, the summary."""
        def mark(ok: bool) -> str:
            return "✓" if ok else "✗"
        lines = [f"Coverage of rules {self.rules_version}:", "", "Rules (held / failed, per event):"]
        width = max((len(r.name) for r in self.rules), default=0)
        for r in self.rules:
            lines.append(f"  {mark(r.covered)} {r.name:<{width}}  {'held' if r.held else '-':<5}"
                         f"{'failed' if r.failed else '-'}")
        lines += ["", "Transitions (taken):"]
        lines += [f"  {mark(t.taken)} {t.name}" for t in self.transitions]
        lines += ["", "Timers (fired):"]
        lines += [f"  {mark(t.fired)} {t.name}" for t in self.timers]
        gaps = self.never_exercised()
        lines += ["", "Never exercised:" if gaps else "Never exercised: nothing."]
        lines += [f"  {gap}" for gap in gaps]
        return [*lines, "", *self.summary()]

    def as_dict(self) -> dict[str, Any]:
        """The machine-readable result (`--coverage-json`), read back by `diagram --coverage`."""
        return {
            "format": FORMAT,
            "rules_version": self.rules_version,
            "summary": {kind: {"covered": self.counts(kind)[0], "total": self.counts(kind)[1],
                               "percent": round(self.percent(kind), 2)} for kind in KINDS},
            "never_exercised": self.never_exercised(),
            "rules": [{"rule": r.rule, "kind": r.kind, "workflow": r.workflow, "event": r.event,
                       "held": r.held, "failed": r.failed, "covered": r.covered} for r in self.rules],
            "transitions": [{"workflow": t.workflow, "source": t.source, "event": t.event,
                             "target": t.target, "internal": t.internal, "route": t.route,
                             "taken": t.taken} for t in self.transitions],
            "timers": [{"timer": t.timer, "workflow": t.workflow, "event": t.event,
                        "states": list(t.states), "fired": t.fired} for t in self.timers],
        }


def measure(policy: Policy, seen: Iterable[Seen]) -> Coverage:
    """The coverage of `policy` by scenario runs that saw `seen`."""
    held: set[tuple[str, str]] = set()
    failed: set[tuple[str, str]] = set()
    taken: set[tuple[str, str, str, str]] = set()
    fired: set[str] = set()
    for s in seen:
        held |= s.held
        failed |= s.failed
        taken |= s.transitions
        fired |= s.timers_fired
    rules = []
    for rule in policy.rules.values():
        if not rule.enabled:
            continue  # judged nowhere, so nothing to cover
        definition = policy.definitions[rule.workflow]
        ordered = [e for e in (CREATE_EVENT, *definition.events) if e in rule.events]
        rules += [RuleItem(rule.id, rule.kind, rule.workflow, event, (rule.id, event) in held,
                           (rule.id, event) in failed) for event in ordered]
    transitions = []
    for definition in policy.definitions.values():
        for t in definition.transitions:
            key = (definition.name, t.source, t.event, t.target)
            transitions.append(TransitionItem(*key, internal=t.dest is None, route=t.when,
                                              taken=key in taken))
    timers = [TimerItem(t.id, t.workflow, t.event, tuple(sorted(t.states)), t.id in fired)
              for t in policy.timers.values()]
    return Coverage(policy.version, tuple(rules), tuple(transitions), tuple(timers))


def untested_transitions(result: Any, workflow: str) -> frozenset[tuple[str, str, str]]:
    """(source, target, event) of each of `workflow`'s transitions that a coverage result (`as_dict`,
    read back from JSON) says was never taken; `ValueError` says why `result` is not such a result."""
    rows = result.get("transitions") if isinstance(result, Mapping) else None
    if not isinstance(result, Mapping) or result.get("format") != FORMAT or not isinstance(rows, list):
        raise ValueError("it is not a coverage result of `tollgate rules test --coverage-json` (its "
                         f"`format` is not '{FORMAT}')")
    untested = set()
    for i, row in enumerate(rows):
        try:
            if row["workflow"] == workflow and not row["taken"]:
                untested.add((str(row["source"]), str(row["target"]), str(row["event"])))
        except (KeyError, TypeError):
            raise ValueError(f"its transitions[{i}] lacks one of workflow, source, target, event and "
                             "taken") from None
    return frozenset(untested)
