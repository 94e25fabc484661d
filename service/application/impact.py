"""Impact before activation: what a candidate policy would change, looking back and looking ahead.

`tollgate rules impact CANDIDATE` and `POST /rules/impact` (read only):

* **Looking back.** Every attempt recorded in the window (`since`) is judged again with the
  inputs it was judged on (`history.inputs`, migration 0009; `workflows/replay.py`), once under
  the version that judged it — which must give back the recorded verdict: the report's
  self-check — and once under the candidate. Verdicts that would change are counted by
  workflow, event, kind of change and rule, with a few example instances each. Rows written
  before migration 0009 kept no inputs: they are counted as not replayable, never guessed.
* **Looking ahead.** For every live instance in a state some timer covers, each pending timer is
  planned again under the candidate: by replaying the attempt that armed it (so that a due time
  an action derives from params, like the grace deadline, moves too), else by
  `workflows.timer_plans.replan_due` on the instance as it is. Due times that would move, and
  timers that would appear or disappear, are grouped by timer and shift, with the timer's
  `on_new_version` declaration (replan, the default, or keep: then only timers armed after the
  activation change).

Both passes read in keyset-paginated batches of `batch` rows inside one read transaction, so the
memory a report takes does not grow with the history: a bucket keeps a count and three examples.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, and_, or_, select, tuple_

from tollgate.service.application.judging import account_view
from tollgate.service.application.rules_history import RulesHistory
from tollgate.service.application.times import rfc3339
from tollgate.service.storage.bulk import Reader
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import history, instances, rules_versions, timers
from tollgate.workflows.calendar import parse_instant
from tollgate.workflows.engine import Engine
from tollgate.workflows.exceptions import BadRequest, Problem, TollgateError
from tollgate.workflows.policy import Policy
from tollgate.workflows.policy_diff import diff_policies
from tollgate.workflows.replay import Unreplayable, Verdict, judge_again, replay_engine
from tollgate.workflows.timer_plans import replan_due

#: How far back the report looks when not told (`--since`).
DEFAULT_WINDOW = timedelta(days=30)
BATCH = 5000
EXAMPLES = 3
NO_INPUTS = "written before migration 0009: the inputs it was judged on were not kept"
ARMED_BEFORE = "armed before migration 0009: when and by which attempt it was armed is not known"

_DURATION = re.compile(r"^\s*([0-9]{1,6})\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """The start of the window: `30d`, `12h`, `90m` before `now`, an RFC 3339 instant, or `all`
    (None: the whole history); None given means the default window (30 days)."""
    if text is None or not text.strip():
        return now - DEFAULT_WINDOW
    if text.strip().lower() == "all":
        return None
    match = _DURATION.match(text)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        return parse_instant(text.strip()).astimezone(UTC)
    except ValueError:
        raise BadRequest(f"since='{text}' is neither a duration (30d, 12h, 90m), an RFC 3339 instant "
                         "(2026-11-01T00:00:00+09:00) nor 'all'.",
                         [Problem("$.since", f"{text!r} is not a duration, an instant or 'all'",
                                  file="query")]) from None


@dataclass
class _Bucket:
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES and example not in self.examples:
            self.examples.append(example)


@dataclass
class ImpactReport:
    """What `Impact.report` found; `as_dict` is the JSON of POST /rules/impact."""

    candidate: str
    active_version: int | None
    since: datetime | None
    diff_summary: str
    diff: dict[str, Any]
    attempts: int = 0
    replayed: int = 0
    not_replayable: dict[str, _Bucket] = field(default_factory=dict)
    reproduced: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    mismatch_count: int = 0
    changes: dict[tuple[str, str, str, str], _Bucket] = field(default_factory=dict)
    timers_checked: int = 0
    timer_moves: dict[tuple[str, str, str], _Bucket] = field(default_factory=dict)
    timer_examples: dict[tuple[str, str, str], tuple[str, str]] = field(default_factory=dict)
    timer_declarations: dict[str, str] = field(default_factory=dict)
    timers_unplannable: dict[str, _Bucket] = field(default_factory=dict)
    timer_reproduced: int = 0
    timer_mismatch_count: int = 0
    timer_mismatches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes or self.timer_moves)

    @property
    def trusted(self) -> bool:
        """Whether the self-checks held: replay reproduced every verdict and every due time."""
        return self.mismatch_count == 0 and self.timer_mismatch_count == 0

    def verdict_changes(self) -> int:
        """Attempts whose verdict would change (an attempt is counted once, however many rules)."""
        return sum(b.count for k, b in self.changes.items() if k[3] == _FIRST)

    def as_dict(self) -> dict[str, Any]:
        changes = [{"workflow": w, "event": e, "change": c, "rule": None if r in (_FIRST, "") else r,
                    "count": b.count, "examples": b.examples}
                   for (w, e, c, r), b in sorted(self.changes.items(), key=lambda kv: (-kv[1].count, kv[0]))
                   if r != _FIRST]
        attempts = {(w, e, c): b for (w, e, c, r), b in self.changes.items() if r == _FIRST}
        moves = [{"timer": t, "change": kind, "shift": shift, "count": b.count, "examples": b.examples,
                  "example_from": self.timer_examples[(t, kind, shift)][0] or None,
                  "example_to": self.timer_examples[(t, kind, shift)][1] or None,
                  "on_new_version": self.timer_declarations.get(t, "replan"),
                  "applies_to_armed": self.timer_declarations.get(t, "replan") == "replan"}
                 for (t, kind, shift), b in sorted(self.timer_moves.items(),
                                                   key=lambda kv: (kv[0][0], -kv[1].count))]
        return {
            "candidate": self.candidate,
            "active_version": self.active_version,
            "since": rfc3339(self.since),
            "changed": self.changed,
            "diff": {"summary": self.diff_summary, **self.diff},
            "looking_back": {
                "attempts": self.attempts,
                "replayed": self.replayed,
                "not_replayable": [{"why": why, "count": b.count, "examples": b.examples}
                                   for why, b in sorted(self.not_replayable.items(),
                                                        key=lambda kv: -kv[1].count)],
                "self_check": {"reproduced": self.reproduced, "mismatched": self.mismatch_count,
                               "examples": self.mismatches},
                "changed_attempts": sum(b.count for b in attempts.values()),
                "by_event": [{"workflow": w, "event": e, "change": c, "count": b.count,
                              "examples": b.examples}
                             for (w, e, c), b in sorted(attempts.items(),
                                                        key=lambda kv: (-kv[1].count, kv[0]))],
                "by_rule": changes,
            },
            "looking_ahead": {
                "timers": self.timers_checked,
                "self_check": {"reproduced": self.timer_reproduced, "mismatched": self.timer_mismatch_count,
                               "examples": self.timer_mismatches},
                "not_replannable": [{"why": why, "count": b.count, "examples": b.examples}
                                    for why, b in sorted(self.timers_unplannable.items(),
                                                         key=lambda kv: -kv[1].count)],
                "changes": moves,
            },
        }

    def lines(self, zone: Any = UTC) -> Iterator[str]:
        """The report as a policy editor reads it (times in the policy's zone)."""
        window = f"since {_local(self.since, zone)}" if self.since else "over the whole history"
        yield f"Impact of {self.candidate} against the active version {self.active_version}:"
        yield f"  policy diff: {self.diff_summary}"
        yield ""
        yield f"Looking back — {self.attempts:,} attempts recorded {window}"
        yield f"  replayed: {self.replayed:,}"
        for why, bucket in sorted(self.not_replayable.items(), key=lambda kv: -kv[1].count):
            yield f"  not replayable: {bucket.count:,} — {why} (e.g. {', '.join(bucket.examples)})"
        check = "every recorded verdict reproduced" if not self.mismatch_count else \
            f"{self.mismatch_count:,} NOT reproduced: the report below cannot be trusted"
        yield f"  self-check under the versions that judged them: {self.reproduced:,} reproduced; {check}"
        for m in self.mismatches:
            yield (f"    ✗ history row {m['history_id']} ({m['instance']} {m['event']}): recorded "
                   f"{m['recorded']}, replayed {m['replayed']}")
        data = self.as_dict()["looking_back"]
        if not data["by_event"]:
            yield "  under the candidate: no verdict would change"
        else:
            yield f"  under the candidate: {_count(data['changed_attempts'], 'verdict')} would change"
            for entry in data["by_event"]:
                yield (f"    {entry['workflow']}.{entry['event']}: {entry['count']:,} {entry['change']} "
                       f"(e.g. {', '.join(entry['examples'])})")
            yield "  by rule:"
            for entry in data["by_rule"]:
                rule = entry["rule"] or "—"
                yield (f"    {rule:<28} {entry['workflow']}.{entry['event']}: {entry['count']:,} "
                       f"{entry['change']} (e.g. {', '.join(entry['examples'])})")
        yield ""
        yield f"Looking ahead — {_count(self.timers_checked, 'pending timer')} of live instances"
        tcheck = "every due time reproduced" if not self.timer_mismatch_count else \
            f"{self.timer_mismatch_count:,} NOT reproduced"
        yield f"  self-check: {self.timer_reproduced:,} re-planned to their stored due time; {tcheck}"
        for m in self.timer_mismatches:
            yield f"    ✗ {m['instance']} {m['timer']}: stored {m['stored']}, re-planned {m['replanned']}"
        for why, bucket in sorted(self.timers_unplannable.items(), key=lambda kv: -kv[1].count):
            yield f"  not re-plannable: {bucket.count:,} — {why} (e.g. {', '.join(bucket.examples)})"
        if not self.timer_moves:
            yield "  under the candidate: no due time would move, appear or disappear"
        for (name, kind, shift), bucket in sorted(self.timer_moves.items(),
                                                  key=lambda kv: (kv[0][0], -kv[1].count)):
            before, after = self.timer_examples[(name, kind, shift)]
            declared = self.timer_declarations.get(name, "replan")
            applies = ("applies to the timers armed now" if declared == "replan"
                       else "armed timers keep their due time; only timers armed after activation")
            one = bucket.count == 1
            what = {"moves": f"{'moves' if one else 'move'} by {shift}",
                    "appears": "appears" if one else "appear",
                    "disappears": "disappears" if one else "disappear"}[kind]
            example = (f"{_local_text(before, zone)} → {_local_text(after, zone)}" if kind == "moves"
                       else _local_text(after or before, zone))
            yield (f"  {name} {example}: {bucket.count:,} {what} (e.g. {', '.join(bucket.examples)}) "
                   f"[on_new_version: {declared} — {applies}]")


class _Attempt(NamedTuple):
    """A history row as replay reads it (`recorded`: the reasons of a denial, the notes otherwise)."""

    id: int
    instance: str
    event: str
    from_state: str | None
    to_state: str
    outcome: str
    recorded: list[dict[str, Any]]
    data: dict[str, Any]
    at: datetime
    rules_version: int
    inputs: dict[str, Any] | None
    workflow: str


_FIRST = "\x00attempt"  # the bucket key that counts an attempt once (not per rule)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _local(moment: datetime | None, zone: Any) -> str:
    return "" if moment is None else moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def _local_text(text: str, zone: Any) -> str:
    return _local(datetime.fromisoformat(text), zone) if text else "—"


def shift_text(delta: timedelta) -> str:
    """A due-time shift as people say it: '+1 h', '−2 d 3 h', '+30 min'."""
    seconds = int(delta.total_seconds())
    sign = "+" if seconds >= 0 else "−"
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes else "",
             f"{secs} s" if secs else ""]
    return sign + " ".join(p for p in parts if p) if any(parts) else "0"


def _verdict_text(outcome: str, target: str, rules: Any) -> str:
    rules = list(rules)
    return f"{outcome} → {target}" + (f" ({', '.join(rules)})" if rules else "")


class Impact:
    """Impact reports over the history and timers of `db` (read only)."""

    def __init__(self, db: Database, versions: RulesHistory) -> None:
        self.db = db
        self.versions = versions
        self._engines: dict[str, Engine] = {}

    def _engine(self, policy: Policy) -> Engine:
        engine = self._engines.get(policy.sha256)
        if engine is None:
            if len(self._engines) > 16:
                self._engines.clear()
            engine = self._engines[policy.sha256] = replay_engine(policy)
        return engine

    def report(self, candidate: Policy, since: datetime | None, *, name: str = "the candidate",
               batch: int = BATCH, progress: Callable[[int], None] | None = None) -> ImpactReport:
        """Replay the window's attempts and re-plan the live timers under `candidate`."""
        with self.db.read() as conn:
            active_id = conn.execute(select(rules_versions.c.id).order_by(rules_versions.c.id.desc())
                                     .limit(1)).scalar()
            if active_id is None:
                raise TollgateError("The database has no rules version; nothing was judged yet, so "
                                    "there is nothing to compare the candidate with.")
            active = self.versions.policy(active_id)
            diff = diff_policies(active, candidate)
            report = ImpactReport(candidate=name, active_version=active_id, since=since,
                                  diff_summary=diff.summary(), diff=diff.as_dict())
            self._looking_back(conn, report, candidate, since, batch, progress)
            self._looking_ahead(conn, report, active, candidate, batch)
        return report

    # ── looking back ─────────────────────────────────────────────────────────────────────────

    def _looking_back(self, conn: Connection, report: ImpactReport, candidate: Policy,
                      since: datetime | None, batch: int, progress: Callable[[int], None] | None) -> None:
        cand_engine = self._engine(candidate)
        policies: dict[int, Engine] = {}
        # On the DBAPI cursor with the dialect's own conversions (`storage/bulk.py`'s Reader): a
        # SQLAlchemy Row with JSON and timestamp processors cost more than the replay itself.
        reader = Reader(conn)
        loads, moment = reader.loads, reader.moment
        sql = ("SELECT h.id, h.instance, h.event, h.from_state, h.to_state, h.outcome, h.reasons, h.notes, "
               "h.data, h.at, h.rules_version, h.inputs, i.workflow FROM history h "
               "JOIN instances i ON i.id = h.instance WHERE h.id > ?"
               + (" AND h.at >= ?" if since is not None else "") + " ORDER BY h.id LIMIT ?")
        window = [reader.writer.ts(since)] if since is not None else []
        last = 0
        while True:
            rows = reader.fetch(sql, [last, *window, batch])
            if not rows:
                break
            last = rows[-1][0]
            for (id_, instance, event, source, target, outcome, reasons, notes, data, at, version, inputs,
                 workflow) in rows:
                recorded = reasons if outcome != "applied" else notes
                self._replay_row(report, _Attempt(
                    id_, instance, event, source, target, outcome,
                    [] if recorded in ("[]", None) else loads(recorded),
                    loads(data) if data not in ("{}", None) else {}, cast(datetime, moment(at)), version,
                    None if inputs is None else loads(inputs), workflow), cand_engine, policies)
            if progress is not None:
                progress(report.attempts)

    def _replay_row(self, report: ImpactReport, row: _Attempt, cand_engine: Engine,
                    engines: dict[int, Engine]) -> None:
        report.attempts += 1
        inputs = row.inputs
        if inputs is None:
            report.not_replayable.setdefault(NO_INPUTS, _Bucket()).add(row.instance)
            return
        if "unreplayable" in inputs:
            why = f"its verdict did not come from its own rules: {inputs['unreplayable']}"
            report.not_replayable.setdefault(why, _Bucket()).add(row.instance)
            return
        engine = engines.get(row.rules_version)
        if engine is None:
            if len(engines) > 16:
                engines.clear()
            engine = engines[row.rules_version] = self._engine(self.versions.policy(row.rules_version))
        data = row.data
        recorded_rules = [r["rule"] for r in row.recorded]
        recorded = (row.outcome, row.to_state, frozenset(recorded_rules))
        again = judge_again(engine, row.instance, row.workflow, row.event, row.from_state, data, inputs,
                            row.at)
        if isinstance(again, Unreplayable) or again.key() != recorded:
            report.mismatch_count += 1
            if len(report.mismatches) < 5:
                replayed = again.why if isinstance(again, Unreplayable) else \
                    _verdict_text(again.outcome, again.target, again.rules)
                report.mismatches.append({
                    "history_id": row.id, "instance": row.instance, "event": row.event,
                    "recorded": _verdict_text(row.outcome, row.to_state, recorded_rules),
                    "replayed": replayed})
            return
        report.reproduced += 1
        new = again if cand_engine is engine else judge_again(
            cand_engine, row.instance, row.workflow, row.event, row.from_state, data, inputs, row.at)
        if isinstance(new, Unreplayable):
            report.not_replayable.setdefault(f"not replayable under the candidate: {new.why}",
                                             _Bucket()).add(row.instance)
            return
        report.replayed += 1
        self._compare(report, row.workflow, row.event, row.instance, again, new)

    @staticmethod
    def _compare(report: ImpactReport, workflow: str, event: str, instance: str, old: Verdict,
                 new: Verdict) -> None:
        rules: tuple[str, ...]
        if old.outcome == new.outcome == "applied":
            if old.target == new.target:
                return
            change = f"another destination ({old.target} → {new.target})"
            rules = tuple(sorted(set(old.rules) ^ set(new.rules))) or ("",)
        elif old.outcome == new.outcome == "denied":
            if set(old.rules) == set(new.rules):
                return
            change = "denied by other rules"
            rules = tuple([f"+{r}" for r in new.rules if r not in old.rules]
                          + [f"−{r}" for r in old.rules if r not in new.rules])
        elif new.outcome == "denied":
            change = f"{old.outcome} → denied"
            rules = new.rules
        elif old.outcome == "denied" and new.outcome == "applied":
            change = "denied → applied"
            rules = old.rules
        elif new.outcome == "invalid":
            change = f"{old.outcome} → not allowed ({new.rules[0]})"
            rules = ("",)
        elif new.outcome == "failed":
            change = f"{old.outcome} → the rules would fail"
            rules = ("",)
        else:
            change = f"{old.outcome} → {new.outcome}"
            rules = new.rules or ("",)
        changes = report.changes
        changes.setdefault((workflow, event, change, _FIRST), _Bucket()).add(instance)
        for rule in rules:
            changes.setdefault((workflow, event, change, rule), _Bucket()).add(instance)

    # ── looking ahead ────────────────────────────────────────────────────────────────────────

    def _looking_ahead(self, conn: Connection, report: ImpactReport, active: Policy, candidate: Policy,
                       batch: int) -> None:
        covered: dict[str, set[str]] = {}
        for policy in (active, candidate):
            for timer in policy.timers.values():
                covered.setdefault(timer.workflow, set()).update(timer.states)
        for name, timer in candidate.timers.items():
            report.timer_declarations[name] = str(getattr(timer, "on_new_version", "replan"))
        for name, timer in active.timers.items():
            report.timer_declarations.setdefault(name, str(getattr(timer, "on_new_version", "replan")))
        if not covered:
            return
        where = [and_(instances.c.workflow == w, instances.c.state.in_(sorted(states)))
                 for w, states in sorted(covered.items())]
        query = (select(instances.c.id, instances.c.workflow, instances.c.state, instances.c.context,
                        instances.c.account, instances.c.updated_at)
                 .where(or_(*where)).order_by(instances.c.id).limit(batch))
        cand_engine = self._engine(candidate)
        engines: dict[int, Engine] = {}
        last = ""
        while True:
            rows = conn.execute(query.where(instances.c.id > last)).all()
            if not rows:
                break
            last = rows[-1].id
            ids = [r.id for r in rows]
            pending: dict[str, list[Any]] = {}
            for t in conn.execute(select(timers.c.instance, timers.c.name, timers.c.due_at, timers.c.armed_at,
                                         timers.c.armed_seq).where(timers.c.instance.in_(ids))):
                pending.setdefault(t.instance, []).append(t)
            arming = {(h.instance, h.seq): h for h in conn.execute(
                select(history.c.instance, history.c.seq, history.c.event, history.c.from_state,
                       history.c.to_state, history.c.data, history.c.at, history.c.rules_version,
                       history.c.inputs)
                .where(tuple_(history.c.instance, history.c.seq).in_(
                    [(t.instance, t.armed_seq) for ts in pending.values() for t in ts
                     if t.armed_seq is not None] or [("", -1)])))}
            account_ids = sorted({r.account for r in rows if r.account})
            accounts = {a.id: account_view(dict(a._mapping)) for a in conn.execute(
                select(instances.c.id, instances.c.workflow, instances.c.state, instances.c.context)
                .where(instances.c.id.in_(account_ids or [""])))}
            for row in rows:
                self._plan_instance(report, row, pending.get(row.id, []), arming, accounts, active,
                                    candidate, cand_engine, engines)

    def _plan_instance(self, report: ImpactReport, row: Any, pending: list[Any], arming: Mapping[Any, Any],
                       accounts: Mapping[str, Any], active: Policy, candidate: Policy,
                       cand_engine: Engine, engines: dict[int, Engine]) -> None:
        account = accounts.get(row.account) if row.account else None
        armed_names = set()
        for t in pending:
            armed_names.add(t.name)
            report.timers_checked += 1
            old = t.due_at
            source: Any = arming.get((row.id, t.armed_seq)) if t.armed_seq is not None else None
            inputs = source.inputs if source is not None else None
            if inputs is not None and "unreplayable" not in inputs:
                engine = engines.get(source.rules_version)
                if engine is None:
                    engine = engines[source.rules_version] = self._engine(
                        self.versions.policy(source.rules_version))
                baseline = judge_again(engine, row.id, row.workflow, source.event, source.from_state,
                                       source.data or {}, inputs, source.at)
                base_due = baseline.timers.get(t.name) if isinstance(baseline, Verdict) else None
                if base_due != old:
                    self._timer_mismatch(report, row.id, t.name, old, base_due)
                    continue
                report.timer_reproduced += 1
                again = baseline if cand_engine is engine else judge_again(
                    cand_engine, row.id, row.workflow, source.event, source.from_state, source.data or {},
                    inputs, source.at)
                timer = candidate.timers.get(t.name)
                if isinstance(again, Unreplayable):
                    report.timers_unplannable.setdefault(f"under the candidate: {again.why}",
                                                         _Bucket()).add(row.id)
                    continue
                covers = timer is not None and timer.workflow == row.workflow and row.state in timer.states
                if again.outcome == "applied" and again.target == source.to_state:
                    new = again.timers.get(t.name) if covers else None
                else:  # the arming attempt would not get here now: plan on the instance as it is
                    new = replan_due(candidate, row.workflow, t.name, row.state, row.context, account,
                                     source.at)
            elif t.armed_at is not None:
                base_due = replan_due(active, row.workflow, t.name, row.state, row.context, account,
                                      t.armed_at)
                if base_due != old:
                    self._timer_mismatch(report, row.id, t.name, old, base_due)
                    continue
                report.timer_reproduced += 1
                new = replan_due(candidate, row.workflow, t.name, row.state, row.context, account, t.armed_at)
            else:
                report.timers_unplannable.setdefault(ARMED_BEFORE, _Bucket()).add(row.id)
                continue
            if new == old:
                continue
            key = (t.name, "disappears", "") if new is None else (t.name, "moves", shift_text(new - old))
            self._timer_change(report, key, row.id, old, new)
        for name, timer in candidate.timers.items():
            if name in armed_names or timer.workflow != row.workflow or row.state not in timer.states:
                continue
            before = active.timers.get(name)
            if before is not None and before.workflow == row.workflow and row.state in before.states:
                continue  # not new here: it fired already, or its `when` did not hold
            due = replan_due(candidate, row.workflow, name, row.state, row.context, account, row.updated_at)
            if due is not None:
                self._timer_change(report, (name, "appears", ""), row.id, None, due)

    @staticmethod
    def _timer_change(report: ImpactReport, key: tuple[str, str, str], instance: str,
                      old: datetime | None, new: datetime | None) -> None:
        bucket = report.timer_moves.get(key)
        if bucket is None:
            bucket = report.timer_moves[key] = _Bucket()
            report.timer_examples[key] = (rfc3339(old) or "", rfc3339(new) or "")
        bucket.add(instance)

    @staticmethod
    def _timer_mismatch(report: ImpactReport, instance: str, name: str, stored: datetime,
                        replanned: datetime | None) -> None:
        report.timer_mismatch_count += 1
        if len(report.timer_mismatches) < 5:
            report.timer_mismatches.append({"instance": instance, "timer": name, "stored": rfc3339(stored),
                                            "replanned": rfc3339(replanned)})

