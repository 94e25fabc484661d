"""rules.yaml → `Policy`: the load pipeline, read top to bottom.

YAML (safe loader, positions kept) → JSON Schema (every error, with line, column and path) →
policy consistency → compiled CEL expressions → rules and timers bound to the workflow
definitions. Any problem anywhere refuses the whole file with every problem listed; nothing
downstream re-validates. The caller reads the file and hands over its text, the workflow
definitions and the rules schema (`service/application/policy_files.py`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jsonschema import Draft202012Validator

from tollgate.workflows.calendar import parse_clock_time
from tollgate.workflows.definitions import CREATE_EVENT, Definition
from tollgate.workflows.documents import Document, PathKey, load_yaml, schema_problems
from tollgate.workflows.exceptions import Problem, RulesError
from tollgate.workflows.expressions import Expression, ExpressionError, compile_expression
from tollgate.workflows.guards import INPUT_MAPS, GuardSet, Rule, helper_functions

_PLACEHOLDER = re.compile(r"\{(params(?:\.[A-Za-z_][A-Za-z0-9_]*)+)\}")


@dataclass(frozen=True)
class TimerRule:
    """A timer schedule: armed when the instance enters `states`, cancelled when it leaves them."""

    id: str
    workflow: str
    event: str
    states: frozenset[str]
    at: Expression
    when: Expression | None = None
    #: What a new rules version taking effect does to this timer where it is already armed:
    #: "replan" (its due time computed again under the new version; removed if it no longer
    #: applies) or "keep" (left as armed). The incoming version's declaration decides.
    on_new_version: str = "replan"


@dataclass
class Policy:
    """One validated, compiled version of rules.yaml."""

    text: str
    file: str
    sha256: str
    timezone: str
    zone: ZoneInfo
    params: Mapping[str, Any]
    rules: dict[str, Rule]
    timers: dict[str, TimerRule]
    definitions: Mapping[str, Definition]
    guard_sets: dict[tuple[str, str], GuardSet] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """A short, stable name for this version: the first 12 hex digits of its SHA-256."""
        return self.sha256[:12]

    def guards(self, workflow: str, event: str) -> GuardSet:
        return self.guard_sets.get((workflow, event)) or GuardSet([])

    def timers_of(self, workflow: str) -> list[TimerRule]:
        return [t for t in self.timers.values() if t.workflow == workflow]

    def rules_for(self, workflow: str, event: str) -> list[Rule]:
        return [r for r in self.rules.values() if r.workflow == workflow and event in r.events]


def _lookup(params: Mapping[str, Any], dotted: str) -> Any:
    value: Any = {"params": params}
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _display(value: Any) -> str:
    """A parameter as a message shows it: lists as "KR, US", not Python's "['KR', 'US']"."""
    if isinstance(value, list | tuple):
        return ", ".join(_display(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _interpolate(text: str, params: Mapping[str, Any], doc: Document, path: PathKey,
                 problems: list[Problem]) -> str:
    def replace(match: re.Match[str]) -> str:
        try:
            return _display(_lookup(params, match.group(1)))
        except KeyError:
            problems.append(doc.problem(path, f"The placeholder {{{match.group(1)}}} names no parameter."))
            return match.group(0)
    return _PLACEHOLDER.sub(replace, text)


def _consistency(params: Mapping[str, Any], doc: Document) -> list[Problem]:
    """Policy that is well-formed but contradicts itself."""
    out: list[Problem] = []
    billing, signup, payment = params["billing"], params["signup"], params["payment"]
    first, last = billing["autopay_days"]["first"], billing["autopay_days"]["last"]
    if first <= billing["issue_day"]:
        out.append(doc.problem(("params", "billing", "autopay_days", "first"),
                               f"The first autopay day ({first}) must come after the issue day "
                               f"({billing['issue_day']}); invoices are charged after they are issued."))
    if last < first:
        out.append(doc.problem(("params", "billing", "autopay_days", "last"),
                               f"The last autopay day ({last}) is before the first ({first})."))
    overdue_day = last + 1
    if overdue_day > 28 or (overdue_day == 28 and billing["grace_deadline"] == "00:00"):
        out.append(doc.problem(("params", "billing", "grace_deadline"),
                               f"The grace deadline ({billing['grace_deadline']} on the last day of the "
                               f"billing month) is not after the overdue date (day {overdue_day}) in "
                               "February; end the autopay window earlier."))
    if signup["password"]["min_length"] > signup["password"]["max_length"]:
        out.append(doc.problem(("params", "signup", "password", "min_length"),
                               "The minimum password length is greater than the maximum."))
    hours = payment["restricted_hours"]
    if parse_clock_time(hours["start"]) == parse_clock_time(hours["end"]):
        out.append(doc.problem(("params", "payment", "restricted_hours", "end"),
                               "The restricted hours start and end at the same time, so they restrict "
                               "nothing; to allow every method at any time, empty `methods` instead."))
    if payment["domestic_country"] not in signup["countries"]:
        out.append(doc.problem(("params", "payment", "domestic_country"),
                               f"The domestic country {payment['domestic_country']} is not among "
                               "params.signup.countries."))
    return out


#: What each kind of expression must give, and how a policy editor is told.
_RESULTS = {"guard": ("bool", "a guard must be true or false (compare the value, e.g. `x == 1`)"),
            "route": ("bool", "a route rule must be true or false (compare the value, e.g. `x == 1`)"),
            "when": ("bool", "a timer's `when` must be true or false"),
            "at": ("timestamp", "a timer's `at` must be a timestamp (e.g. add_days(now, 1))")}


def _schemas(definition: Definition, events: tuple[str, ...]) -> dict[str, list[Mapping[str, Any]]]:
    """The JSON Schemas of the input maps of an expression serving `events` (data: one per event)."""
    out: dict[str, list[Mapping[str, Any]]] = {"context": [definition.context_schema]}
    if events and all(e in definition.events for e in events):
        out["data"] = [definition.events[e].data_schema for e in events]
    return out


def _compile(doc: Document, path: PathKey, source: str, *, maps: tuple[str, ...],
             params: Mapping[str, Any], functions: Mapping[str, Any], problems: list[Problem],
             schemas: Mapping[str, list[Mapping[str, Any]]] | None = None) -> Expression | None:
    """Compile one expression (budget, names, then the CEL engine) and check its result type."""
    try:
        expression = compile_expression(source, constants={"params": params}, maps=maps,
                                        scalars=("now",), functions=functions, schemas=schemas)
    except ExpressionError as error:
        problems.append(doc.problem(path, error.message, offset=(error.line, error.column)))
        return None
    wanted, rule = _RESULTS[str(path[-1])]
    if expression.type is not None and expression.type != wanted:
        article = "an" if expression.type[0] in "aeiou" else "a"
        problems.append(doc.problem(path, f"The expression gives {article} {expression.type}, not a "
                                    f"{wanted}: {rule}."))
        return None
    return expression


def _check_facts(doc: Document, path: PathKey, expression: Expression, definition: Definition,
                 events: tuple[str, ...], problems: list[Problem]) -> None:
    for binding in expression.bindings:
        if binding.root != "facts":
            continue
        if binding.field is None:
            problems.append(doc.problem(path, "Use named facts (facts.NAME), not the whole facts map."))
            continue
        if binding.field not in definition.facts:
            problems.append(doc.problem(path, f"The fact '{binding.field}' is not declared by the "
                                        f"{definition.name} workflow; it declares: "
                                        f"{', '.join(definition.facts) or 'none'}."))
            continue
        missing = [e for e in events if e not in definition.facts[binding.field]]
        if missing:
            problems.append(doc.problem(path, f"The fact '{binding.field}' is not supplied for the "
                                        f"event(s) {', '.join(missing)}; add them to its events in "
                                        f"{_file_name(definition.file)}."))


def _file_name(path: str) -> str:
    """The last part of a file's path, as a message names it (`invoice.yaml`)."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def load_policy(text: str, file: str, workflow_definitions: Mapping[str, Definition],
                schema: Draft202012Validator) -> Policy:
    """Validate `text` (read from `file`) against `schema` (rules.schema.json) and compile it over
    `workflow_definitions`; raise `RulesError` listing every problem."""
    defs = workflow_definitions
    doc, problems = load_yaml(text, file)
    if doc is None:
        raise RulesError(problems)
    if not isinstance(doc.data, dict):
        raise RulesError([Problem("$", "The rules file must be a mapping with timezone, params, rules "
                                  "and timers.", file, 1, 1)])
    problems += schema_problems(doc, schema)
    if problems:
        raise RulesError(problems)
    raw = doc.data
    try:
        zone = ZoneInfo(raw["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise RulesError([doc.problem(("timezone",), f"'{raw['timezone']}' is not an IANA time zone "
                                      "(e.g. Asia/Seoul).")]) from None
    params = raw["params"]
    problems += _consistency(params, doc)
    functions = helper_functions(zone)

    route_users: dict[str, list[tuple[str, str]]] = {}
    for definition in defs.values():
        for t in definition.transitions:
            if t.when:
                route_users.setdefault(t.when, []).append((definition.name, t.event))

    rules: dict[str, Rule] = {}
    for rule_id, spec in raw["rules"].items():
        definition = defs[spec["workflow"]]
        kind = spec.get("kind", "guard")
        maps = tuple(m for m in INPUT_MAPS if m != "account" or definition.references_account)
        base: PathKey = ("rules", rule_id)
        events: tuple[str, ...]
        if kind == "guard":
            events = tuple(spec["events"])
            for i, event in enumerate(events):
                if event not in definition.events and event != CREATE_EVENT:
                    problems.append(doc.problem((*base, "events", i),
                                                f"The {definition.name} workflow has no event '{event}'; "
                                                f"its events: {', '.join(definition.events)}."))
        else:
            users = route_users.get(rule_id, [])
            if not users:
                problems.append(doc.problem(base, f"The route rule '{rule_id}' is not used by any "
                                            "transition's 'when'.", key=True))
            elif any(w != spec["workflow"] for w, _ in users):
                problems.append(doc.problem((*base, "workflow"), f"The route rule '{rule_id}' is used by "
                                            f"the {users[0][0]} workflow."))
            events = tuple(dict.fromkeys(e for _, e in users))
        expr_key = "guard" if kind == "guard" else "route"
        expression = _compile(doc, (*base, expr_key), spec[expr_key], maps=maps, params=params,
                              functions=functions, problems=problems,
                              schemas=_schemas(definition, events))
        if expression is not None:
            _check_facts(doc, (*base, expr_key), expression, definition, events, problems)
        messages = {lang: _interpolate(spec["message"][lang], params, doc, (*base, "message", lang),
                                       problems) for lang in ("ko", "en")}
        if expression is not None:
            rules[rule_id] = Rule(rule_id, kind, spec["workflow"], events, expression,
                                  messages["ko"], messages["en"], spec.get("enabled", True))
    for route, users in route_users.items():
        if route not in raw["rules"]:
            workflow, event = users[0]
            problems.append(Problem(f"$.rules.{route}", f"The {workflow} definition routes '{event}' with "
                                    f"the rule '{route}', which rules.yaml does not define.", file))
        elif raw["rules"][route].get("kind", "guard") != "route":
            problems.append(doc.problem(("rules", route, "kind"), f"The rule '{route}' chooses a branch of "
                                        "a transition, so it must be `kind: route`."))

    timers: dict[str, TimerRule] = {}
    for timer_id, spec in raw["timers"].items():
        definition = defs[spec["workflow"]]
        base = ("timers", timer_id)
        maps = ("context", "account") if definition.references_account else ("context",)
        if spec["event"] not in definition.events:
            problems.append(doc.problem((*base, "event"), f"The {definition.name} workflow has no event "
                                        f"'{spec['event']}'."))
            continue
        for i, state in enumerate(spec["states"]):
            if state not in definition.state_names:
                problems.append(doc.problem((*base, "states", i), f"The {definition.name} workflow has no "
                                            f"state '{state}'."))
            elif not definition.branches(spec["event"], state):
                problems.append(doc.problem((*base, "states", i),
                                            f"The timer would fire '{spec['event']}' in state '{state}', "
                                            "where that event is not valid."))
        schemas = _schemas(definition, ())
        at = _compile(doc, (*base, "at"), spec["at"], maps=maps, params=params, functions=functions,
                      problems=problems, schemas=schemas)
        when = None
        if "when" in spec:
            when = _compile(doc, (*base, "when"), spec["when"], maps=maps, params=params,
                            functions=functions, problems=problems, schemas=schemas)
        if at is not None:
            timers[timer_id] = TimerRule(timer_id, spec["workflow"], spec["event"],
                                         frozenset(spec["states"]), at, when,
                                         spec.get("on_new_version", "replan"))
    if problems:
        raise RulesError(sorted(problems, key=lambda p: (p.line or 0, p.column or 0)))

    policy = Policy(text=text, file=file, sha256=hashlib.sha256(text.encode()).hexdigest(),
                    timezone=raw["timezone"], zone=zone, params=params, rules=rules, timers=timers,
                    definitions=defs)
    for definition in defs.values():
        for event in (*definition.events, CREATE_EVENT):
            bound = [r for r in rules.values() if r.workflow == definition.name and r.kind == "guard"
                     and r.enabled and event in r.events]
            try:
                policy.guard_sets[(definition.name, event)] = GuardSet(bound)
            except ExpressionError as error:  # the engine refused the combined program
                raise RulesError([doc.problem(("rules", bound[0].id, "guard"), error.message)]) from None
    return policy


def check(text: str, file: str, workflow_definitions: Mapping[str, Definition],
          schema: Draft202012Validator) -> list[Problem]:
    """Every problem of a rules text (empty when it would activate)."""
    try:
        load_policy(text, file, workflow_definitions, schema)
    except RulesError as error:
        return error.problems
    return []
