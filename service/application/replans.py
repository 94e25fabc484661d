"""Re-planning armed timers when another rules version takes effect, once, for real time and per clock.

Each timer of rules.yaml declares `on_new_version`: `replan` (the default) or `keep`. When the
version in effect changes — a version activated now, or a scheduled one whose instant arrives —
the already-armed timers of `replan` timers get the due time the new version gives them (from the
instant they were armed, `workflows/timer_plans.replan_due`), or are removed when it would not
have them armed; `keep` timers stay as armed. Timers the new version does not declare at all are
removed (nothing would arm them again).

Real-time timers: `rules_state.timers_version` names the version they were last planned under;
`real_time` compares it with the version in effect now and re-plans under the cluster lock
`rules_takeover`, so several servers and workers racing at the instant do it once. The scheduler
and `tollgate worker` call it before each sweep (`Runtime.run_due_timers`), with the sweep's own
instant, so no timer due after the instant fires before the re-planning; an activation calls it
at once. Test clocks: `clocks.rules_version`, re-planned by the clock's advance when it crosses a
version's instant, before it fires the timers due from that instant on (`Clocks.advance_clock`,
under the advance's lease).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from tollgate.service.application.judging import account_view
from tollgate.service.application.rules_versions import RulesVersion, RulesVersions
from tollgate.service.application.times import rfc3339
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import clocks, history, instances, rules_state, rules_versions, timers
from tollgate.workflows.engine import Engine
from tollgate.workflows.timer_plans import replan_due

log = logging.getLogger("tollgate.timers")

_CHUNK = 500


@dataclass
class Replanned:
    """What a re-planning did: timers moved, removed, and left as they were."""

    moved: int = 0
    removed: int = 0
    kept: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"moved": self.moved, "removed": self.removed, "kept": self.kept}


class Replans:
    """Re-plans the timers of `db` when the version in effect changes (see the module)."""

    def __init__(self, db: Database, versions: RulesVersions) -> None:
        self.db = db
        self.versions = versions

    def real_time(self, now: datetime) -> Replanned | None:
        """Re-plan real-time timers if the version in effect at `now` is not the one they were
        planned under; None when there was nothing to do. Once, whatever the processes."""
        with self.db.read() as conn:
            version, _ = self.versions.schedule(conn).at(now, now)
            planned = conn.execute(select(rules_state.c.timers_version).where(rules_state.c.id == 1)
                                   ).scalar_one_or_none()
        if planned == version.id:
            return None
        with self.db.transaction(bulk=True) as conn:
            self.db.cluster_lock(conn, "rules_takeover")
            version, engine = self.versions.schedule(conn).at(now, now)
            planned = conn.execute(select(rules_state.c.timers_version).where(rules_state.c.id == 1)
                                   ).scalar_one_or_none()
            if planned == version.id:
                return None
            done = self.replan(conn, None, planned, version, engine)
            if not conn.execute(update(rules_state).where(rules_state.c.id == 1)
                                .values(timers_version=version.id)).rowcount:
                conn.execute(insert(rules_state).values(id=1, generation=1, timers_version=version.id))
        log.info("rules version %d is in effect for real time (since %s): real-time timers re-planned "
                 "from version %s: %d moved, %d removed, %d left as armed", version.id,
                 rfc3339(version.effective), planned, done.moved, done.removed, done.kept)
        return done

    def clock(self, conn: Connection, clock_id: str, instant: datetime,
              real_now: datetime) -> Replanned | None:
        """Inside an advance's transaction (its lease held): the clock reaches `instant`; re-plan its
        timers if the version in effect there is not the one they were planned under."""
        version, engine = self.versions.schedule(conn).at(instant, real_now)
        conn.execute(update(clocks).where(clocks.c.id == clock_id, clocks.c.now < instant)
                     .values(now=instant))
        planned = conn.execute(select(clocks.c.rules_version).where(clocks.c.id == clock_id)).scalar_one()
        if planned == version.id:
            return None
        done = Replanned()
        if planned is not None:  # (a clock from before migration 0010 starts from where it is)
            done = self.replan(conn, clock_id, planned, version, engine)
            log.info("rules version %d is in effect on the clock '%s' at %s: its timers re-planned from "
                     "version %s: %d moved, %d removed, %d left as armed", version.id, clock_id,
                     rfc3339(instant), planned, done.moved, done.removed, done.kept)
        conn.execute(update(clocks).where(clocks.c.id == clock_id).values(rules_version=version.id))
        return done

    def replan(self, conn: Connection, clock_id: str | None, planned: int | None, version: RulesVersion,
               engine: Engine) -> Replanned:
        """Re-plan the armed timers of `clock_id` (None: real time), planned under version
        `planned`, under `version`."""
        done = Replanned()
        if planned is not None:
            old = conn.execute(select(rules_versions.c.sha256).where(rules_versions.c.id == planned)
                               ).scalar_one_or_none()
            if old == version.sha256:  # the same text (a re-activation): every due time stays
                return done
        policy = engine.policy
        where = timers.c.clock.is_(None) if clock_id is None else timers.c.clock == clock_id
        armed = conn.execute(select(timers.c.instance, timers.c.name, timers.c.event, timers.c.due_at,
                                    timers.c.armed_at)
                             .where(where).order_by(timers.c.instance, timers.c.name)).all()
        todo = []
        for row in armed:
            rule = policy.timers.get(row.name)
            if rule is not None and rule.on_new_version == "keep":
                done.kept += 1
            else:
                todo.append(row)
        for start in range(0, len(todo), _CHUNK):
            chunk = todo[start:start + _CHUNK]
            records = self._records(conn, {row.instance for row in chunk})
            # since migration 0009 a timer records when it was armed; older ones: from the history
            unrecorded = {row.instance for row in chunk if row.armed_at is None}
            armed_at = self._armed_at(conn, engine, {i: records[i] for i in unrecorded if i in records})
            for row in chunk:
                record = records.get(row.instance)
                due = None
                when: datetime | None = row.armed_at or armed_at.get(row.instance)
                if record is not None and when is None:
                    done.kept += 1  # no applied transition recorded (rows seeded in bulk): as armed
                    continue
                if record is not None and when is not None:
                    try:
                        due = replan_due(policy, record["workflow"], row.name, record["state"],
                                         record["context"], record["account_view"], when)
                    except Exception as error:  # the new rules fail on this instance: leave it as armed
                        log.error("The timer '%s' of '%s' could not be re-planned under rules version %d "
                                  "(%s); it stays due at %s.", row.name, row.instance, version.id, error,
                                  rfc3339(row.due_at))
                        done.kept += 1
                        continue
                key = (timers.c.instance == row.instance) & (timers.c.name == row.name)
                rule = policy.timers.get(row.name)
                if due is None or rule is None:
                    conn.execute(delete(timers).where(key))
                    done.removed += 1
                elif due != row.due_at or rule.event != row.event:
                    conn.execute(update(timers).where(key).values(due_at=due, event=rule.event))
                    done.moved += 1
                else:
                    done.kept += 1
        return done

    @staticmethod
    def _records(conn: Connection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The instances `ids` (workflow, state, context) with the account view their timers see."""
        c = instances.c
        found = {row.id: dict(row._mapping) for row in conn.execute(
            select(c.id, c.workflow, c.state, c.context, c.account).where(c.id.in_(list(ids))))}
        account_ids = {r["account"] for r in found.values() if r["account"]}
        accounts = {row.id: account_view(dict(row._mapping)) for row in conn.execute(
            select(c.id, c.state, c.context).where(c.id.in_(sorted(account_ids))))} if account_ids else {}
        for record in found.values():
            record["context"] = record["context"] or {}
            record["account_view"] = accounts.get(record["account"]) if record["account"] else None
        return found

    @staticmethod
    def _armed_at(conn: Connection, engine: Engine,
                  records: dict[str, dict[str, Any]]) -> dict[str, datetime]:
        """When each instance's timers were armed: the instant of its last applied transition that
        was not internal (an internal one leaves timers as they are), its creation included."""
        h = history.c
        found: dict[str, datetime] = {}
        if not records:
            return found
        rows = conn.execute(select(h.instance, h.event, h.from_state, h.to_state, h.at)
                            .where(h.instance.in_(list(records)), h.outcome == "applied")
                            .order_by(h.instance, h.seq.desc()))
        for row in rows:
            if row.instance in found:
                continue
            record = records[row.instance]
            machine = engine.machines.get(record["workflow"])
            internal = (row.from_state is not None and row.from_state == row.to_state and machine is not None
                        and machine.stays_internal.get((row.event, row.from_state), False))
            if not internal:
                found[row.instance] = row.at
        return found
