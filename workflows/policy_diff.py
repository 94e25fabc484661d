"""Two versions of the policy compared in policy terms: what a change to rules.yaml really changes.

Parsed data is compared, never text: comments, key order, white space, YAML quoting and block
styles are not changes, and expressions are compared token by token (white space, comments and
the quotes of CEL string literals do not count). Lists in `params` and a rule's `events` or a
timer's `states` are sets to the policy (rules ask `x in list`), so their order is not a change
either. `version_note` is a label, not policy. The report also says which workflow events and
transitions each change touches: a rule through its events (a guard) or the transitions that
name it (a route), a timer through the event it fires in its states, a parameter through every
rule, timer and action that reads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

from tollgate.workflows.actions import ACTIONS
from tollgate.workflows.definitions import CREATE_EVENT, Definition, Transition
from tollgate.workflows.documents import load_yaml
from tollgate.workflows.exceptions import ExpressionError
from tollgate.workflows.expression_check import tokens
from tollgate.workflows.guards import Rule
from tollgate.workflows.policy import Policy, TimerRule

__all__ = ["Affected", "ParamChange", "PolicyDiff", "RuleChange", "TimerChange", "diff_policies"]

ARROW = "→"
LANGUAGES = ("ko", "en")
_PLACEHOLDER = re.compile(r"\{params\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")
_SPACE = re.compile(r"\s+")

#: What a change touches: (workflow, event, its transitions); None for the creation of an instance.
_Target = tuple[str, str, list[Transition] | None]


@dataclass(frozen=True)
class ParamChange:
    """A parameter (a leaf of `params`, by dotted path) changed, added or removed."""

    path: str
    change: str  # changed | added | removed
    old: Any = None
    new: Any = None
    used_by: tuple[str, ...] = ()  # "rule min_age", "timer invoice_issue", "action grant_credit"


@dataclass(frozen=True)
class RuleChange:
    """One aspect of one rule: added, removed, switched_off, switched_on, expression, message.ko,
    message.en, events, workflow or kind; `old`/`new` as the policy editor wrote them."""

    rule: str
    workflow: str
    change: str
    old: Any = None
    new: Any = None


@dataclass(frozen=True)
class TimerChange:
    """One aspect of one timer's schedule: added, removed, at, when, states, event, workflow or
    on_new_version."""

    timer: str
    workflow: str
    change: str
    old: Any = None
    new: Any = None


@dataclass(frozen=True)
class Affected:
    """A workflow event whose verdicts or timers may change: its transitions and the changes why."""

    workflow: str
    event: str
    transitions: tuple[str, ...]
    causes: tuple[str, ...]


@dataclass(frozen=True)
class PolicyDiff:
    """What changed from one policy to another; empty when they are the same policy."""

    timezone: tuple[str, str] | None = None
    params: tuple[ParamChange, ...] = ()
    rules: tuple[RuleChange, ...] = ()
    timers: tuple[TimerChange, ...] = ()
    affected: tuple[Affected, ...] = ()

    @property
    def changes(self) -> int:
        return (self.timezone is not None) + len(self.params) + len(self.rules) + len(self.timers)

    @property
    def empty(self) -> bool:
        return self.changes == 0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON data, every key always present (null or [] when nothing changed)."""
        return {
            "changes": self.changes,
            "timezone": None if self.timezone is None else {"old": self.timezone[0],
                                                             "new": self.timezone[1]},
            "params": [{"path": p.path, "change": p.change, "old": _jsonable(p.old),
                        "new": _jsonable(p.new), "used_by": list(p.used_by)} for p in self.params],
            "rules": [{"rule": r.rule, "workflow": r.workflow, "change": r.change,
                       "old": _jsonable(r.old), "new": _jsonable(r.new)} for r in self.rules],
            "timers": [{"timer": t.timer, "workflow": t.workflow, "change": t.change,
                        "old": _jsonable(t.old), "new": _jsonable(t.new)} for t in self.timers],
            "affected": [{"workflow": a.workflow, "event": a.event, "transitions": list(a.transitions),
                          "causes": list(a.causes)} for a in self.affected],
        }

    def lines(self) -> list[str]:
        """The report as a policy editor reads it: one line per change, grouped."""
        groups: list[list[str]] = []
        if self.timezone is not None:
            groups.append([f"timezone: {_show(self.timezone[0])} {ARROW} {_show(self.timezone[1])}"])
        groups.append([_param_line(p) for p in self.params])
        groups.append([_rule_line(r) for r in self.rules])
        groups.append([_timer_line(t) for t in self.timers])
        groups.append([f"affected {a.workflow} {a.event}: {', '.join(a.transitions)} "
                       f"(by {', '.join(a.causes)})" for a in self.affected])
        out: list[str] = []
        for group in (g for g in groups if g):
            if out:
                out.append("")
            out.extend(group)
        return out

    def summary(self) -> str:
        """One sentence that counts the changes (and says when there are none)."""
        if self.empty:
            return "No policy changes."
        counts = [(1 if self.timezone else 0, "time zone"), (len(self.params), "param"),
                  (len(self.rules), "rule change"), (len(self.timers), "timer change")]
        parts = [f"{n} {noun}{'' if n == 1 else 's'}" for n, noun in counts if n]
        events = len(self.affected)
        return (f"{self.changes} change{'' if self.changes == 1 else 's'} ({', '.join(parts)}); "
                f"{events} workflow event{'' if events == 1 else 's'} affected.")


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    """Compare two loaded policies in policy terms."""
    before, after = _Side(old), _Side(new)
    affected = _Impacts()
    timezone = (old.timezone, new.timezone) if old.timezone != new.timezone else None
    params = tuple(_param_changes(before, after, affected))
    rules = tuple(_rule_changes(before, after, affected))
    timers = tuple(_timer_changes(before, after, affected))
    return PolicyDiff(timezone, params, rules, timers, affected.ordered(old.definitions, new.definitions))


# ── the two sides ────────────────────────────────────────────────────────────────────────────

@dataclass
class _Side:
    """One policy with what the comparison reads of it: message templates as written, and which
    rules, timers and actions read each parameter."""

    policy: Policy
    templates: dict[str, dict[str, str]] = field(default_factory=dict)  # rule → language → template
    readers: dict[str, set[str]] = field(default_factory=dict)  # "rule x" → parameter paths it reads

    def __post_init__(self) -> None:
        doc, _ = load_yaml(self.policy.text, self.policy.file)  # already validated: it loads
        raw_rules = doc.data.get("rules", {}) if doc is not None and isinstance(doc.data, dict) else {}
        for rule_id, rule in self.policy.rules.items():
            message = raw_rules.get(rule_id, {}).get("message", {})
            self.templates[rule_id] = {lang: _words(str(message.get(lang, getattr(rule, f"message_{lang}"))))
                                       for lang in LANGUAGES}
            paths = set(_expression_params(rule.expression.source))
            for template in self.templates[rule_id].values():
                paths.update(_PLACEHOLDER.findall(template))
            self.readers[f"rule {rule_id}"] = paths
        for timer in self.policy.timers.values():
            paths = set(_expression_params(timer.at.source))
            if timer.when is not None:
                paths.update(_expression_params(timer.when.source))
            self.readers[f"timer {timer.id}"] = paths
        for name, paths in _action_params().items():
            self.readers[f"action {name}"] = paths

    def targets(self, reader: str) -> list[_Target]:
        """The (workflow, event, transitions) a rule, timer or action touches; transitions None
        for the creation of an instance."""
        kind, name = reader.split(" ", 1)
        defs = self.policy.definitions
        if kind == "rule":
            return _rule_targets(self.policy.rules[name], defs)
        if kind == "timer":
            return _timer_targets(self.policy.timers[name], defs)
        return [(d.name, e, [t for t in d.transitions if t.event == e]) for d in defs.values()
                for e, event in d.events.items()
                if name in (*event.prepare, *event.actions, *event.on_denied)]


class _Impacts:
    """(workflow, event) → the transitions touched and the changes that touch them."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], tuple[dict[str, None], dict[str, None]]] = {}

    def add(self, targets: Iterable[_Target], cause: str,
            defs: Mapping[str, Definition]) -> None:
        for workflow, event, transitions in targets:
            seen, causes = self.found.setdefault((workflow, event), ({}, {}))
            if transitions is None:
                seen[f"(new) {ARROW} {defs[workflow].initial}"] = None
            for t in transitions or ():
                seen[_transition(t)] = None
            causes[cause] = None

    def ordered(self, *all_defs: Mapping[str, Definition]) -> tuple[Affected, ...]:
        """In the order of the definitions: workflows, then events (creation first)."""
        order: dict[tuple[str, str], int] = {}
        for defs in all_defs:
            for definition in defs.values():
                for event in (CREATE_EVENT, *definition.events):
                    order.setdefault((definition.name, event), len(order))
        keys = sorted(self.found, key=lambda k: (order.get(k, len(order)), k))
        return tuple(Affected(w, e, tuple(self.found[(w, e)][0]), tuple(self.found[(w, e)][1]))
                     for w, e in keys)


def _transition(t: Transition) -> str:
    text = f"{t.source} {ARROW} {t.target}"
    if t.dest is None:
        text += " (internal)"
    if t.when:
        text += f" when {t.when}"
    return text


def _rule_targets(rule: Rule, defs: Mapping[str, Definition]) -> list[_Target]:
    definition = defs[rule.workflow]
    if rule.kind == "route":  # the routed transitions and the branches they are chosen over
        routed = [t for t in definition.transitions if t.when == rule.id]
        out: list[_Target] = []
        for event in dict.fromkeys(t.event for t in routed):
            sources = {t.source for t in routed if t.event == event}
            out.append((definition.name, event,
                        [t for t in definition.transitions if t.event == event and t.source in sources]))
        return out
    return [(definition.name, event, None if event == CREATE_EVENT else
             [t for t in definition.transitions if t.event == event]) for event in rule.events]


def _timer_targets(timer: TimerRule, defs: Mapping[str, Definition]) -> list[_Target]:
    definition = defs[timer.workflow]
    return [(definition.name, timer.event, [t for t in definition.transitions
                                            if t.event == timer.event and t.source in timer.states])]


# ── params ───────────────────────────────────────────────────────────────────────────────────

def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """The leaves of the params tree by dotted path (an empty mapping is a leaf)."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def _same(a: Any, b: Any) -> bool:
    return _canonical(a) == _canonical(b)


def _canonical(value: Any) -> str:
    """A text equal for equal values: mappings by key, lists as sets; 19 and 19.0 differ (CEL does too)."""
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_canonical(v)}"
                              for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(sorted(_canonical(v) for v in value)) + "]"
    return json.dumps(value, default=str) + type(value).__name__


def _touches(path: str, read: str) -> bool:
    """Whether a change at `path` changes what a reader of `read` sees (either may hold the other)."""
    return path == read or path.startswith(read + ".") or read.startswith(path + ".")


def _param_changes(before: _Side, after: _Side, affected: _Impacts) -> Iterator[ParamChange]:
    old = dict(_leaves(before.policy.params))
    new = dict(_leaves(after.policy.params))
    for path in [*new, *(p for p in old if p not in new)]:
        if path in old and path in new:
            if _same(old[path], new[path]):
                continue
            change = ParamChange(path, "changed", old[path], new[path])
        elif path in new:
            change = ParamChange(path, "added", None, new[path])
        else:
            change = ParamChange(path, "removed", old[path], None)
        users: dict[str, None] = {}
        for side in (after, before):
            for reader, reads in side.readers.items():
                if any(_touches(path, read) for read in reads):
                    users[reader] = None
                    affected.add(side.targets(reader), f"param {path}", side.policy.definitions)
        yield ParamChange(change.path, change.change, change.old, change.new, tuple(users))


def _action_params() -> dict[str, set[str]]:
    """The parameter paths each action reads with `step.param("a.b")` (string constants of its code)."""
    def strings(code: CodeType) -> Iterator[str]:
        for const in code.co_consts:
            if isinstance(const, str):
                yield const
            elif isinstance(const, CodeType):
                yield from strings(const)
    return {name: {s for s in strings(fn.__code__) if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", s)}
            for name, fn in ACTIONS.items()}


# ── rules and timers ─────────────────────────────────────────────────────────────────────────

def _rule_changes(before: _Side, after: _Side, affected: _Impacts) -> Iterator[RuleChange]:
    old, new = before.policy.rules, after.policy.rules
    for rule_id in [*new, *(r for r in old if r not in new)]:
        a, b = old.get(rule_id), new.get(rule_id)
        changes: list[RuleChange] = []
        if a is None and b is not None:
            changes.append(RuleChange(rule_id, b.workflow, "added", None, _display(b.expression.source)))
            if not b.enabled:
                changes.append(RuleChange(rule_id, b.workflow, "switched_off", None, False))
        elif b is None and a is not None:
            changes.append(RuleChange(rule_id, a.workflow, "removed", _display(a.expression.source), None))
        elif a is not None and b is not None:
            changes.extend(_rule_aspects(a, b, before.templates[rule_id], after.templates[rule_id]))
        yield from changes
        if changes:
            for side, rule in ((before, a), (after, b)):
                if rule is not None:
                    affected.add(side.targets(f"rule {rule_id}"), f"rule {rule_id}", side.policy.definitions)


def _rule_aspects(a: Rule, b: Rule, old_messages: Mapping[str, str],
                  new_messages: Mapping[str, str]) -> Iterator[RuleChange]:
    rule, workflow = b.id, b.workflow
    if a.workflow != b.workflow:
        yield RuleChange(rule, workflow, "workflow", a.workflow, b.workflow)
    if a.kind != b.kind:
        yield RuleChange(rule, workflow, "kind", a.kind, b.kind)
    if a.enabled != b.enabled:
        yield RuleChange(rule, workflow, "switched_on" if b.enabled else "switched_off", a.enabled, b.enabled)
    if _normal(a.expression.source) != _normal(b.expression.source):
        yield RuleChange(rule, workflow, "expression", _display(a.expression.source),
                         _display(b.expression.source))
    for lang in LANGUAGES:
        if old_messages[lang] != new_messages[lang]:
            yield RuleChange(rule, workflow, f"message.{lang}", old_messages[lang], new_messages[lang])
    if set(a.events) != set(b.events):
        yield RuleChange(rule, workflow, "events", list(a.events), list(b.events))


def _timer_changes(before: _Side, after: _Side, affected: _Impacts) -> Iterator[TimerChange]:
    old, new = before.policy.timers, after.policy.timers
    for timer_id in [*new, *(t for t in old if t not in new)]:
        a, b = old.get(timer_id), new.get(timer_id)
        changes: list[TimerChange] = []
        if a is None and b is not None:
            changes.append(TimerChange(timer_id, b.workflow, "added", None, _display(b.at.source)))
        elif b is None and a is not None:
            changes.append(TimerChange(timer_id, a.workflow, "removed", _display(a.at.source), None))
        elif a is not None and b is not None:
            changes.extend(_timer_aspects(a, b, after.policy.definitions))
        yield from changes
        if changes:
            for side, timer in ((before, a), (after, b)):
                if timer is not None:
                    affected.add(side.targets(f"timer {timer_id}"), f"timer {timer_id}",
                                 side.policy.definitions)


def _timer_aspects(a: TimerRule, b: TimerRule, defs: Mapping[str, Definition]) -> Iterator[TimerChange]:
    timer, workflow = b.id, b.workflow
    if a.workflow != b.workflow:
        yield TimerChange(timer, workflow, "workflow", a.workflow, b.workflow)
    if a.event != b.event:
        yield TimerChange(timer, workflow, "event", a.event, b.event)
    if a.states != b.states:
        order = defs[b.workflow].state_names if b.workflow in defs else ()
        yield TimerChange(timer, workflow, "states", _in_order(a.states, order), _in_order(b.states, order))
    if _normal(a.at.source) != _normal(b.at.source):
        yield TimerChange(timer, workflow, "at", _display(a.at.source), _display(b.at.source))
    old_when = None if a.when is None else a.when.source
    new_when = None if b.when is None else b.when.source
    if (old_when is None) != (new_when is None) or (
            old_when is not None and new_when is not None and _normal(old_when) != _normal(new_when)):
        yield TimerChange(timer, workflow, "when", old_when and _display(old_when),
                          new_when and _display(new_when))
    if a.on_new_version != b.on_new_version:  # what taking effect does to timers already armed
        yield TimerChange(timer, workflow, "on_new_version", a.on_new_version, b.on_new_version)


def _in_order(states: frozenset[str], order: tuple[str, ...]) -> list[str]:
    return sorted(states, key=lambda s: (order.index(s) if s in order else len(order), s))


# ── expressions ──────────────────────────────────────────────────────────────────────────────

def _normal(source: str) -> tuple[tuple[str, str], ...]:
    """An expression as its tokens, string literals in one quoting: equal for equal expressions."""
    try:
        return tuple((kind, _string(text) if kind == "string" else text) for kind, text, _ in tokens(source))
    except ExpressionError:  # cannot happen for a loaded policy; compare the words then
        return (("text", _words(source)),)


def _string(literal: str) -> str:
    """A plain '…' or "…" literal rewritten with double quotes (raw, bytes and triple-quoted kept)."""
    quote = literal[0]
    if quote not in "'\"" or literal.startswith(quote * 3):
        return literal
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            pair = body[i:i + 2]
            out.append("'" if pair == "\\'" else pair)
            i += 2
            continue
        out.append('\\"' if body[i] == '"' else body[i])
        i += 1
    return '"' + "".join(out) + '"'


def _display(source: str) -> str:
    """An expression on one line: white space between tokens as one space, comments dropped."""
    try:
        found = tokens(source)
    except ExpressionError:
        return _words(source)
    out: list[str] = []
    end = None
    for _, text, offset in found:
        if end is not None and offset > end:
            out.append(" ")
        out.append(text)
        end = offset + len(text)
    return "".join(out)


def _expression_params(source: str) -> Iterator[str]:
    """The parameter paths an expression reads (`params.a.b` → "a.b")."""
    try:
        found = [(kind, text) for kind, text, _ in tokens(source)]
    except ExpressionError:
        return
    for i, (kind, text) in enumerate(found):
        if kind != "ident" or text != "params" or (i and found[i - 1] == ("op", ".")):
            continue
        parts: list[str] = []
        j = i + 1
        while j + 1 < len(found) and found[j] == ("op", ".") and found[j + 1][0] == "ident":
            parts.append(found[j + 1][1])
            j += 2
        if parts:
            yield ".".join(parts)


def _words(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


# ── the human form ───────────────────────────────────────────────────────────────────────────

def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _show(value: Any) -> str:
    return json.dumps(_jsonable(value), ensure_ascii=False)


def _param_line(p: ParamChange) -> str:
    if p.change == "added":
        text = f"param {p.path}: added, {_show(p.new)}"
    elif p.change == "removed":
        text = f"param {p.path}: removed (was {_show(p.old)})"
    else:
        text = f"param {p.path}: {_show(p.old)} {ARROW} {_show(p.new)}"
        if isinstance(p.old, list) and isinstance(p.new, list):
            olds, news = {_show(v) for v in p.old}, {_show(v) for v in p.new}
            parts = [f"added {', '.join(_show(v) for v in p.new if _show(v) not in olds)}"
                     if news - olds else "",
                     f"removed {', '.join(_show(v) for v in p.old if _show(v) not in news)}"
                     if olds - news else ""]
            if any(parts):
                text += f" ({'; '.join(x for x in parts if x)})"
    if p.used_by:
        text += f"; read by {', '.join(p.used_by)}"
    return text


_RULE_WORDS = {"switched_off": "switched off (enabled: false)", "switched_on": "switched on"}


def _rule_line(r: RuleChange) -> str:
    head = f"rule {r.rule} ({r.workflow})"
    if r.change in _RULE_WORDS:
        return f"{head}: {_RULE_WORDS[r.change]}"
    if r.change == "added":
        return f"{head}: added: {r.new}"
    if r.change == "removed":
        return f"{head}: removed (was: {r.old})"
    if r.change.startswith("message."):
        return f"{head}: message ({r.change[8:]}) {_show(r.old)} {ARROW} {_show(r.new)}"
    if r.change == "events":
        return f"{head}: events {', '.join(r.old)} {ARROW} {', '.join(r.new)}"
    return f"{head}: {r.change} {r.old} {ARROW} {r.new}"


def _timer_line(t: TimerChange) -> str:
    head = f"timer {t.timer} ({t.workflow})"
    if t.change == "added":
        return f"{head}: added, at {t.new}"
    if t.change == "removed":
        return f"{head}: removed (was at {t.old})"
    if t.change == "states":
        return f"{head}: states {', '.join(t.old)} {ARROW} {', '.join(t.new)}"
    if t.change == "when":
        return f"{head}: when {t.old or '(always)'} {ARROW} {t.new or '(always)'}"
    return f"{head}: {t.change} {t.old} {ARROW} {t.new}"
