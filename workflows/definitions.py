"""Workflow definitions: the structure of each lifecycle, parsed from the text of `definitions/*.yaml`.

Definitions are code-owned data (states, events, transitions, action names); policy (guards,
routes, timers, numbers) lives in rules.yaml. A definition is checked when it is loaded: schema,
unknown states and events, unreachable and dead-end states, unknown actions, branch order. The
files are read by the I/O side (`service/application/policy_files.py`), which hands over their text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator

from tollgate.workflows.actions import ACTIONS
from tollgate.workflows.documents import Document, load_yaml, schema_problems, validator_for
from tollgate.workflows.exceptions import DefinitionError, Problem
from tollgate.workflows.secrets import write_only_fields

WORKFLOWS = ("signup", "payment_method", "credit", "invoice")
CREATE_EVENT = "create"


@dataclass(frozen=True)
class State:
    name: str
    description: str = ""
    final: bool = False


@dataclass(frozen=True)
class Event:
    name: str
    data_schema: Mapping[str, Any]
    validator: Draft202012Validator = field(compare=False, repr=False)
    description: str = ""
    timed: bool = False
    prepare: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    on_denied: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()  # API roles allowed to fire it; empty: any that may fire events


@dataclass(frozen=True)
class Transition:
    event: str
    source: str
    dest: str | None  # None: internal (the state does not change, no exit or entry)
    when: str | None = None  # a route rule id

    @property
    def target(self) -> str:
        return self.dest or self.source


@dataclass(frozen=True)
class Key:
    """A declared key (`keys:` of a definition): values of the context that storage keeps findable,
    and unique among the workflow's instances when `unique`."""

    name: str
    fields: tuple[str, ...]
    description: str = ""
    case_insensitive: bool = False
    released_in: frozenset[str] = frozenset()
    unique: bool = False
    conflict: str = ""

    def value(self, values: Mapping[str, Any], state: str | None = None) -> str | None:
        """The key's value from `values` (a context, or event data), None when a field is missing or
        the instance's `state` releases it; several fields are joined by a unit separator."""
        if state is not None and state in self.released_in:
            return None
        parts = []
        for name in self.fields:
            part = values.get(name)
            if part is None:
                return None
            text = str(part)
            parts.append(text.strip().lower() if self.case_insensitive else text)
        return parts[0] if len(parts) == 1 else "\x1f".join(parts)


@dataclass(frozen=True)
class Definition:
    name: str
    description: str
    initial: str
    references_account: bool
    states: tuple[State, ...]
    events: Mapping[str, Event]
    transitions: tuple[Transition, ...]
    facts: Mapping[str, tuple[str, ...]]  # fact name → events that need it
    fact_descriptions: Mapping[str, str]
    secret_fields: frozenset[str]  # event-data properties marked `writeOnly: true`
    context_schema: Mapping[str, Any]
    context_validator: Draft202012Validator = field(compare=False, repr=False)
    file: str = ""
    keys: Mapping[str, Key] = field(default_factory=dict)
    fact_keys: Mapping[str, str] = field(default_factory=dict)  # fact name → the key it asks about
    id_prefix: str = ""  # of generated instance ids; the workflow's name when not declared
    is_account: bool = False  # its instances are the accounts that `references_account` workflows name

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    def state(self, name: str) -> State:
        return next(s for s in self.states if s.name == name)

    def events_from(self, state: str) -> list[str]:
        seen: dict[str, None] = {}
        for t in self.transitions:
            if t.source == state:
                seen[t.event] = None
        return list(seen)

    def branches(self, event: str, state: str) -> list[Transition]:
        return [t for t in self.transitions if t.event == event and t.source == state]

    def facts_for(self, event: str) -> tuple[str, ...]:
        return tuple(name for name, events in self.facts.items() if event in events)


def _as_list(value: Any) -> list[str]:
    return list(value) if isinstance(value, list) else [value]


def _build(doc: Document, schema: Draft202012Validator) -> tuple[Definition | None, list[Problem]]:
    problems = schema_problems(doc, schema)
    if problems:
        return None, problems
    raw = doc.data
    states = tuple(State(s["name"], s.get("description", ""), bool(s.get("final"))) for s in raw["states"])
    names = [s.name for s in states]
    for i, name in enumerate(names):
        if names.index(name) != i:
            problems.append(doc.problem(("states", i, "name"), f"The state '{name}' is defined twice."))
    if raw["initial"] not in names:
        problems.append(doc.problem(("initial",), f"The initial state '{raw['initial']}' is not a state."))
    events: dict[str, Event] = {}
    for name, spec in raw["events"].items():
        for key in ("prepare", "actions", "on_denied"):
            for i, action in enumerate(spec.get(key, [])):
                if action not in ACTIONS:
                    message = f"The action '{action}' is not defined in workflows/actions.py."
                    problems.append(doc.problem(("events", name, key, i), message))
        events[name] = Event(name, spec["data"], validator_for(spec["data"]), spec.get("description", ""),
                             bool(spec.get("timed")), tuple(spec.get("prepare", [])),
                             tuple(spec.get("actions", [])), tuple(spec.get("on_denied", [])),
                             tuple(spec.get("roles", [])))
    if CREATE_EVENT in events:
        problems.append(doc.problem(("events", CREATE_EVENT), "'create' is reserved for instance creation.",
                                    key=True))
    transitions: list[Transition] = []
    for i, spec in enumerate(raw["transitions"]):
        if spec["event"] not in events:
            problems.append(doc.problem(("transitions", i, "event"), f"The event '{spec['event']}' is not "
                                        "defined under events."))
        if spec.get("to") is not None and spec["to"] not in names:
            problems.append(doc.problem(("transitions", i, "to"),
                                        f"The state '{spec['to']}' is not defined."))
        for j, source in enumerate(_as_list(spec["from"])):
            if source not in names:
                where: tuple[str | int, ...] = ("transitions", i, "from")
                if isinstance(spec["from"], list):
                    where = (*where, j)
                problems.append(doc.problem(where, f"The state '{source}' is not defined."))
            transitions.append(Transition(spec["event"], source, spec.get("to"), spec.get("when")))
    used = {t.event for t in transitions}
    for name in events:
        if name not in used:
            problems.append(doc.problem(("events", name), f"The event '{name}' has no transition.", key=True))
    facts = {name: tuple(spec["events"]) for name, spec in raw.get("facts", {}).items()}
    for name, fact_events in facts.items():
        for i, event in enumerate(fact_events):
            if event not in events and event != CREATE_EVENT:
                problems.append(doc.problem(("facts", name, "events", i),
                                            f"The event '{event}' is not defined."))
    keys: dict[str, Key] = {}
    for key_name, spec in raw.get("keys", {}).items():
        released = spec.get("released_in", [])
        keys[key_name] = Key(key_name, tuple(spec["fields"]), spec["description"],
                             bool(spec.get("case_insensitive")), frozenset(released),
                             bool(spec.get("unique")), spec.get("conflict", ""))
        for i, state in enumerate(released):
            if state not in names:
                problems.append(doc.problem(("keys", key_name, "released_in", i),
                                            f"The state '{state}' is not defined."))
    fact_keys = {name: spec["key"] for name, spec in raw.get("facts", {}).items() if "key" in spec}
    for name, key_name in fact_keys.items():
        if key_name not in keys:
            problems.append(doc.problem(("facts", name, "key"), f"The key '{key_name}' is not declared "
                                        "under keys."))
    definition = Definition(
        name=raw["workflow"], description=raw.get("description", ""), initial=raw["initial"],
        references_account=raw["references_account"], states=states, events=events,
        transitions=tuple(transitions), facts=facts,
        fact_descriptions={n: s["description"] for n, s in raw.get("facts", {}).items()},
        secret_fields=write_only_fields(spec["data"] for spec in raw["events"].values()),
        context_schema=raw["context"],
        context_validator=validator_for(raw["context"]), file=doc.file, keys=keys, fact_keys=fact_keys,
        id_prefix=raw.get("id_prefix", raw["workflow"]), is_account=bool(raw.get("is_account")))
    if not problems:
        problems.extend(_structure_problems(definition, doc))
    return definition, problems


def _structure_problems(definition: Definition, doc: Document) -> list[Problem]:
    """Unreachable and dead-end states, and branches hidden behind an unconditional one."""
    problems = []
    reachable = {definition.initial}
    frontier = [definition.initial]
    while frontier:
        current = frontier.pop()
        for t in definition.transitions:
            if t.source == current and t.target not in reachable:
                reachable.add(t.target)
                frontier.append(t.target)
    for i, state in enumerate(definition.states):
        if state.name not in reachable:
            problems.append(doc.problem(("states", i), f"The state '{state.name}' cannot be reached from "
                                        f"'{definition.initial}'."))
        leaves = any(t.source == state.name and t.dest not in (None, state.name)
                     for t in definition.transitions)
        if not state.final and not leaves:
            problems.append(doc.problem(("states", i), f"The state '{state.name}' is a dead end: no "
                                        "transition leaves it; mark it final or add one."))
        if state.final and any(t.source == state.name for t in definition.transitions):
            problems.append(doc.problem(("states", i), f"The final state '{state.name}' has outgoing "
                                        "transitions."))
    groups: dict[tuple[str, str], list[Transition]] = {}
    for t in definition.transitions:
        groups.setdefault((t.event, t.source), []).append(t)
    for (event, source), branches in groups.items():
        for t in branches[:-1]:
            if t.when is None:
                problems.append(doc.problem(("transitions",), f"The event '{event}' from '{source}' has an "
                                            "unconditional branch before another; only the last may have "
                                            "no 'when'."))
        if branches[-1].when is not None:
            problems.append(doc.problem(("transitions",), f"The event '{event}' from '{source}' needs a last "
                                        "branch without 'when', taken when no route rule holds."))
    return problems


def parse_definition(text: str, file: str, schema: Draft202012Validator) -> Definition:
    """The definition in `text` (read from `file`), checked against `schema` (workflow.schema.json)
    and for consistency; raise `DefinitionError` listing every problem."""
    doc, problems = load_yaml(text, file)
    if doc is None:
        raise DefinitionError(problems)
    definition, more = _build(doc, schema)
    problems += more
    if problems or definition is None:
        raise DefinitionError(problems)
    return definition


def named_as_files(loaded: Mapping[str, Definition]) -> Mapping[str, Definition]:
    """`loaded` (each definition under the name of its file, `signup` for signup.yaml), once each
    defines the workflow its file is named for; raise `DefinitionError` otherwise."""
    for name, definition in loaded.items():
        if definition.name != name:
            raise DefinitionError([Problem("$.workflow", f"The file {name}.yaml defines '{definition.name}'.",
                                           definition.file)])
    return loaded
