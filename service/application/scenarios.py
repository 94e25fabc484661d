"""Policy scenarios: YAML files of steps and expectations, run on the real runtime in memory.

A scenario starts a test clock at an instant, then creates instances, fires events and advances
the clock, checking after each step what it expects (applied or denied by exactly these rules,
states, context values, notifications produced, pending timers). Each scenario runs on its own
in-memory SQLite database (`sqlite://`), so nothing is left on disk and scenarios cannot disturb
one another. A failed expectation names the `file:line` of that expectation.

The runner also records what each scenario exercised (`Seen`: every attempt with its rules and
transition, every timer fired); `scenario_coverage.py` turns that into a coverage report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from tollgate.service.application.policy_files import schema
from tollgate.service.application.runtime import Runtime
from tollgate.service.exceptions import GuardDenied
from tollgate.service.storage.db import Database
from tollgate.workflows.calendar import parse_instant
from tollgate.workflows.definitions import CREATE_EVENT
from tollgate.workflows.documents import Document, PathKey, load_yaml, schema_problems
from tollgate.workflows.exceptions import InvalidTransition, Problem, RulesError, TollgateError

__all__ = ["Failure", "ScenarioFile", "ScenarioResult", "Seen", "load_scenarios", "run_files",
           "scenario_files"]

SCHEMA = "scenario.schema.json"
ACTOR = "scenario"
PASSWORD = "Scenario#2026"
EMAILED_CODE = "$emailed_code"  # in event data: the code the instance's last verification email carried
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


@dataclass(frozen=True)
class Failure:
    """One expectation that did not hold (or a step that could not run), where it is written."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line or '?'}: {self.message}"


@dataclass
class Seen:
    """What a scenario exercised — the raw material of coverage: every attempt (workflow, event,
    from, to, outcome, failed rules, routes that held, actor); each rule binding seen holding and
    failing, as (rule, event): a guard on every attempt of its events, a route on every applied
    event whose branches it was judged for; each transition taken, as (workflow, from, event, to)
    with `to` the source for an internal one; each timer that fired its event, by id."""

    attempts: list[dict[str, Any]] = field(default_factory=list)
    held: set[tuple[str, str]] = field(default_factory=set)
    failed: set[tuple[str, str]] = field(default_factory=set)
    transitions: set[tuple[str, str, str, str]] = field(default_factory=set)
    timers_fired: set[str] = field(default_factory=set)


@dataclass
class ScenarioResult:
    name: str
    file: str
    line: int | None
    failures: list[Failure]
    seen: Seen

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ScenarioFile:
    """A scenario file, loaded and checked against `schemas/scenario.schema.json`."""

    path: str
    doc: Document

    @property
    def scenarios(self) -> list[dict[str, Any]]:
        return list(self.doc.data["scenarios"])


def scenario_files(paths: Iterable[str | Path]) -> list[Path]:
    """The YAML files named, and those inside the folders named (sorted, recursively)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*.yaml") if p.is_file()))
        else:
            out.append(path)
    return out


def load_scenarios(path: str | Path) -> ScenarioFile:
    """The scenario file at `path`; `RulesError` lists every problem with file:line:column."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise RulesError([Problem("$", f"The scenario file cannot be read: {reason}.", file)]) from None
    doc, problems = load_yaml(text, file)
    if doc is None or problems:
        raise RulesError(problems)
    problems = schema_problems(doc, schema(SCHEMA))
    if problems:
        raise RulesError(problems)
    return ScenarioFile(file, doc)


def run_files(files: Iterable[ScenarioFile], rules_path: str | Path) -> list[ScenarioResult]:
    """Run every scenario of `files` under the rules file at `rules_path`, each on a fresh database."""
    return [run_scenario(f, index, rules_path) for f in files for index in range(len(f.scenarios))]


def run_scenario(file: ScenarioFile, index: int, rules_path: str | Path) -> ScenarioResult:
    """Run scenario `index` of `file` on a fresh in-memory runtime."""
    base: PathKey = ("scenarios", index)
    scenario = file.scenarios[index]
    runtime = Runtime(Database("sqlite://"), workers=1)
    try:
        runtime.db.migrate()
        runtime.versions.start(rules_path)
        run = _Run(runtime, file, base, scenario)
        run.all_steps()
        return ScenarioResult(scenario["name"], file.path, file.doc.where(base)[0], run.failures,
                              run.seen())
    finally:
        runtime.close()


def parse_duration(text: str) -> timedelta:
    match = _DURATION.fullmatch(text)
    assert match is not None  # the schema's pattern
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


class _Run:
    """One scenario's steps on one runtime."""

    def __init__(self, runtime: Runtime, file: ScenarioFile, base: PathKey,
                 scenario: Mapping[str, Any]) -> None:
        self.rt, self.file, self.base, self.scenario = runtime, file, base, scenario
        self.failures: list[Failure] = []
        self.clock = runtime.create_clock(parse_instant(scenario["clock"]), "scenario")["id"]
        self.instances: dict[str, str] = {}  # alias → workflow
        with runtime.db.read() as conn:
            self.policy = runtime.engine_for(runtime.versions.active(conn)).policy
        self.zone = self.policy.zone

    # ── reporting ──────────────────────────────────────────────────────────────────────────

    def fail(self, path: PathKey, message: str) -> None:
        line, _ = self.file.doc.where((*self.base, *path))
        self.failures.append(Failure(self.file.path, line, message))

    def now(self) -> datetime:
        return parse_instant(self.rt.get_clock(self.clock)["now"])

    # ── steps ──────────────────────────────────────────────────────────────────────────────

    def all_steps(self) -> None:
        for j, step in enumerate(self.scenario["steps"]):
            path: PathKey = ("steps", j)
            before = len(self.rt.notifications())
            try:
                verdict = self.step(path, step)
            except TollgateError as error:
                if isinstance(error, InvalidTransition) and step.get("expect", {}).get("invalid"):
                    verdict = "invalid"
                else:
                    self.fail(path, f"the step could not run: {error}")
                    return  # later steps would only report the consequences
            if "expect" in step:
                self.check((*path, "expect"), step, step["expect"], verdict, before)

    def step(self, path: PathKey, step: Mapping[str, Any]) -> tuple[str, list[str]] | str | None:
        if "account" in step:
            self.account(step["account"])
            return None
        if "create" in step:
            spec = step["create"]
            context = dict(spec.get("context") or {})
            try:
                self.rt.create_instance(spec["workflow"], context, instance_id=spec["as"],
                                        clock=None if "account" in context else self.clock, actor=ACTOR)
            except GuardDenied as denied:
                return ("denied", [r.rule for r in denied.reasons])
            self.instances[spec["as"]] = spec["workflow"]
            return ("applied", self.guards(spec["workflow"], CREATE_EVENT))
        if "fire" in step:
            spec = step["fire"]
            instance = spec["instance"]
            if instance not in self.instances:
                raise StepError(f"there is no instance '{instance}' yet; create it in an earlier step")
            self.rt.fire(instance, spec["event"], self.filled(instance, spec.get("data") or {}), actor=ACTOR)
            last = self.rt.history(instance)[-1]
            if last["outcome"] == "applied":
                held = self.guards(self.instances[instance], spec["event"])
                return ("applied", held + [n["rule"] for n in last["notes"]])
            return (last["outcome"], [r["rule"] for r in last["reasons"]])
        spec = step["advance"]
        to = parse_instant(spec["to"]) if "to" in spec else self.now() + parse_duration(spec["by"])
        self.rt.advance_clock(self.clock, to)
        return None

    def guards(self, workflow: str, event: str) -> list[str]:
        """The enabled guards judged on `event` of `workflow` (all held when it applied)."""
        return [r.id for r in self.policy.rules_for(workflow, event) if r.enabled and r.kind == "guard"]

    def filled(self, instance: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """`data` with the value `$emailed_code` replaced by the code last emailed for `instance`."""
        if EMAILED_CODE not in data.values():
            return dict(data)
        codes = [n["payload"].get("code") for n in self.rt.notifications(instance)
                 if n["template"] == "email_verification"]
        return {k: (codes[-1] if codes else None) if v == EMAILED_CODE else v for k, v in data.items()}

    def account(self, spec: Mapping[str, Any]) -> None:
        """Signup through its real events; then a personal credit card registered on the web."""
        alias = spec["as"]
        member_type = spec.get("member_type", "individual")
        rt = self.rt
        rt.create_instance("signup", {}, instance_id=alias, clock=self.clock, actor=ACTOR)
        self.instances[alias] = "signup"
        steps: list[tuple[str, str, dict[str, Any]]] = [
            (alias, "select_type", {"country": spec.get("country", "KR"), "member_type": member_type,
                                    **({"birth_date": spec.get("birth_date", "1990-01-01")}
                                       if member_type == "individual" else {})}),
            (alias, "submit_email", {"email": f"{alias.lower()}@example.com"})]
        for instance, event, data in steps:
            self.must(instance, event, data)
        code = rt.notifications(alias)[-1]["payload"]["code"]
        self.must(alias, "verify_email", {"code": code})
        self.must(alias, "set_password", {"password": PASSWORD, "password_confirm": PASSWORD})
        if spec.get("partner"):
            self.must(alias, "set_partner", {"partner": True})
        if spec.get("with", "personal_credit_card") == "no_payment_method":
            return
        card = f"{alias}_card"
        rt.create_instance("payment_method", {"account": alias, "channel": "web"}, instance_id=card,
                           actor=ACTOR)
        self.instances[card] = "payment_method"
        self.must(card, "select_method",
                  {"method": "credit_card", "card_type": "personal", "card_owner": "person"})
        self.must(card, "verify_phone", {"owner_match": True})
        self.must(card, "register", {"agree_payment_info": True, "agree_recurring": True})

    def must(self, instance: str, event: str, data: Mapping[str, Any]) -> None:
        result = self.rt.fire(instance, event, data, actor=ACTOR)
        if result.status != 200:
            raise StepError(f"the account shorthand's '{event}' on '{instance}' was refused: "
                               f"{result.body.get('detail')}")

    # ── expectations ───────────────────────────────────────────────────────────────────────

    def check(self, path: PathKey, step: Mapping[str, Any], expect: Mapping[str, Any],
              verdict: tuple[str, list[str]] | str | None, before: int) -> None:
        if "invalid" in expect and verdict != "invalid":
            self.fail((*path, "invalid"), f"expected the event to be invalid in its state, got "
                      f"{_verdict(verdict)}")
        if "applied" in expect:
            self.check_applied((*path, "applied"), step, expect["applied"], verdict)
        if "denied" in expect:
            wanted = sorted(expect["denied"])
            if not (isinstance(verdict, tuple) and verdict[0] == "denied" and sorted(verdict[1]) == wanted):
                self.fail((*path, "denied"),
                          f"expected denied by {', '.join(wanted)}, got {_verdict(verdict)}")
        for alias, state in (expect.get("state") or {}).items():
            actual = self.instance((*path, "state", alias), alias)
            if actual is not None and actual["state"] != state:
                self.fail((*path, "state", alias),
                          f"expected {alias} in state {state}, got {actual['state']}")
        for alias, fields in (expect.get("context") or {}).items():
            actual = self.instance((*path, "context", alias), alias)
            for name, value in fields.items():
                if actual is not None and actual["context"].get(name, _MISSING) != value:
                    got = actual["context"].get(name, _MISSING)
                    fields_ = ", ".join(sorted(actual["context"]))
                    self.fail((*path, "context", alias, name), f"expected {alias}.{name} = {value!r}, got "
                              f"{f'no such field (fields: {fields_})' if got is _MISSING else repr(got)}")
        if "notifications" in expect:
            self.check_notifications((*path, "notifications"), expect["notifications"], before)
        for alias, timers in (expect.get("timers") or {}).items():
            actual = self.instance((*path, "timers", alias), alias)
            if actual is None:
                continue
            pending = {t["name"]: parse_instant(t["at"]) for t in actual["timers"] if "status" not in t}
            due = {name: parse_instant(at) for name, at in timers.items()}
            if pending != due:
                self.fail((*path, "timers", alias),
                          f"expected {alias}'s timers {_timers(due, self.zone)}, "
                          f"got {_timers(pending, self.zone)}")

    def check_applied(self, path: PathKey, step: Mapping[str, Any], rules: Any,
                      verdict: tuple[str, list[str]] | str | None) -> None:
        """`applied: true`, or `applied: [ids]`: exactly these rules held on the event — every
        enabled guard bound to it, and the route that chose the branch taken, if any."""
        if not (isinstance(verdict, tuple) and verdict[0] == "applied"):
            self.fail(path, f"expected applied, got {_verdict(verdict)}")
            return
        if rules is True:
            return
        held = set(verdict[1])
        if set(rules) != held:
            what = f"{step['fire']['instance']}.{step['fire']['event']}" if "fire" in step else \
                f"the creation of {step['create']['as']}"
            extra, missing = sorted(held - set(rules)), sorted(set(rules) - held)
            differences = [f"{', '.join(extra)} held as well"] if extra else []
            if missing:
                differences.append(f"{', '.join(missing)} did not hold there or is not judged there")
            self.fail(path, f"expected exactly the rules {', '.join(sorted(rules)) or 'none'} holding on "
                      f"{what}, got {', '.join(sorted(held)) or 'none'} ({'; '.join(differences)})")

    def check_notifications(self, path: PathKey, expected: list[Mapping[str, Any]], before: int) -> None:
        produced = self.rt.notifications()[before:]
        with_instance = any("instance" in e for e in expected)

        def key(n: Mapping[str, Any]) -> tuple[str, ...]:
            return (n["template"], n["channel"], *([n.get("instance", "")] if with_instance else []))
        got = sorted(key(n) for n in produced)
        wanted = sorted(key(e) for e in expected)
        if got != wanted:
            self.fail(path, f"expected notifications {_notes(wanted)}, got {_notes(got)}")

    def instance(self, path: PathKey, alias: str) -> dict[str, Any] | None:
        if alias not in self.instances:
            self.fail(path, f"there is no instance '{alias}' in this scenario")
            return None
        return self.rt.get_instance(alias)

    def seen(self) -> Seen:
        seen = Seen()
        for alias, workflow in self.instances.items():
            definition = self.policy.definitions[workflow]
            for row in self.rt.history(alias):
                event, source = row["event"], row["from"] or ""
                failed = [r["rule"] for r in row["reasons"]]
                routes = [n["rule"] for n in row["notes"]]
                seen.attempts.append({"workflow": workflow, "event": event, "from": row["from"],
                                      "to": row["to"], "outcome": row["outcome"], "failed": failed,
                                      "routes": routes, "actor": row["actor"]})
                seen.failed.update((rule, event) for rule in failed)
                seen.held.update((rule, event) for rule in self.guards(workflow, event) if rule not in failed)
                if row["actor"] == "timer":
                    seen.timers_fired.update(t.id for t in self.policy.timers_of(workflow)
                                             if t.event == event and source in t.states)
                if row["outcome"] != "applied":
                    continue
                seen.transitions.add((workflow, source, event, row["to"]))
                # Routes are judged in the order of the event's branches until one holds.
                for branch in definition.branches(event, source):
                    if branch.when is None:
                        break
                    if branch.when in routes:
                        seen.held.add((branch.when, event))
                        break
                    seen.failed.add((branch.when, event))
        return seen


class StepError(TollgateError):
    """A step that cannot run: it names an instance no earlier step created, or a shorthand was refused."""

    status = 422


_MISSING = object()


def _verdict(verdict: tuple[str, list[str]] | str | None) -> str:
    if verdict is None:
        return "a step that judges no event"
    if isinstance(verdict, str):
        return "an event not valid in this state"
    outcome, rules = verdict
    return f"denied by {', '.join(sorted(rules))}" if outcome == "denied" else "applied"


def _timers(timers: Mapping[str, datetime], zone: tzinfo) -> str:
    """`name at instant, …` in the rules' time zone (KST for the bundled policy)."""
    if not timers:
        return "none"
    return ", ".join(f"{name} at {at.astimezone(zone).isoformat()}" for name, at in sorted(timers.items()))


def _notes(notes: list[tuple[str, ...]]) -> str:
    return "[" + ", ".join("/".join(n) for n in notes) + "]" if notes else "none"
