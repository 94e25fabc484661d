"""Rules versions: the schedule of versions, activation (PUT /rules, a rules file, now or at a given
instant), cancellation and re-activation, and an engine per version.

Each version takes effect at its `effective_at` (its activation time, unless it was scheduled for
a later instant); each event and timer is judged by the version in effect at its own instant (its
test clock's time, or real time). Instants before real time are judged by the version in effect
now: a test clock set in the past rehearses today's policy, never a superseded one. So the
versions that can still judge anything are the one in effect now and the scheduled ones: the
`Schedule`, read again on each transaction only when the versions changed (one small query: the
newest id and `rules_state.generation`), each engine (machines and compiled guards) built once per
process. Real time passing a scheduled instant needs no re-read: the schedule already holds the
version, and every process picks it from that instant on.

A rules file is imported when it changed since its last import (`rules_files.plan` decides), under
a cluster-wide lock so that processes starting together import it once.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from tollgate.service.application import rules_files
from tollgate.service.application.passwords import new_engine
from tollgate.service.application.policy_files import load_policy
from tollgate.service.application.rules_files import log
from tollgate.service.application.times import rfc3339
from tollgate.service.exceptions import Conflict
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import rules_state, rules_versions
from tollgate.workflows.engine import Engine
from tollgate.workflows.exceptions import BadRequest, NotFound, Problem, RulesError, TollgateError
from tollgate.workflows.policy import Policy

#: `source` of a version re-activated from an earlier one: this prefix and that version's number.
REACTIVATED_SOURCE = "version:"


@dataclass(frozen=True)
class RulesVersion:
    id: int
    sha256: str
    activated_at: datetime
    source: str
    yaml: str
    #: The instant from which it judges (None: its activation time, as before migration 0010).
    effective_at: datetime | None = None

    @property
    def effective(self) -> datetime:
        return self.activated_at if self.effective_at is None else self.effective_at

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.id, "sha256": self.sha256, "activated_at": rfc3339(self.activated_at),
                "effective_at": rfc3339(self.effective), "source": self.source, "yaml": self.yaml}


class Schedule:
    """The versions that can still judge an instant, as this process last read them: the one in
    effect at real time when read, then the scheduled ones, in order of `effective_at` (ties: the
    later version). Immutable; a new one is built when the versions change."""

    __slots__ = ("entries", "key", "single", "times")

    def __init__(self, key: tuple[Any, ...], entries: list[tuple[RulesVersion, Engine]]) -> None:
        self.key = key
        self.entries = entries
        self.times = [version.effective for version, _ in entries]
        #: One version judges every instant (the hot path: no look-up per event).
        self.single = len(entries) == 1

    def at(self, instant: datetime, real_now: datetime) -> tuple[RulesVersion, Engine]:
        """The version (and its engine) in effect at `instant`; an instant before real time is
        judged by the version in effect at real time."""
        if self.single:
            return self.entries[0]
        index = bisect_right(self.times, instant if instant > real_now else real_now) - 1
        return self.entries[index if index > 0 else 0]

    def changes_between(self, start: datetime, end: datetime, real_now: datetime) -> list[datetime]:
        """The instants in (start, end] at which another version takes effect, for an instant
        moving from `start` to `end` (a test clock's advance)."""
        low = start if start > real_now else real_now
        return [t for t in self.times[1:] if low < t <= end]


class RulesVersions:
    """The versions stored in `db`, and the engines of those this process judged under."""

    def __init__(self, db: Database, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now
        self._engines: dict[str, Engine] = {}
        self._engines_lock = threading.Lock()
        self._active_version: RulesVersion | None = None
        self._schedule: Schedule | None = None

    def engine_for(self, version: RulesVersion) -> Engine:
        """The engine (machines and compiled guards) of a rules version, built once."""
        engine = self._engines.get(version.sha256)
        if engine is None:
            with self._engines_lock:
                engine = self._engines.get(version.sha256)
                if engine is None:
                    engine = new_engine(load_policy(version.yaml, rules_files.display_name(version.source)))
                    self._engines[version.sha256] = engine
        return engine

    def schedule(self, conn: Connection) -> Schedule:
        """The versions that judge instants from now on; their engines are built here the first time.

        The newest version's id and `rules_state.generation` (moved by every activation and
        cancellation) are read on the DBAPI cursor on every call (another process may have changed
        the versions); the schedule is reused while they stay the same."""
        cursor = conn.connection.cursor()
        try:
            cursor.execute("SELECT (SELECT max(id) FROM rules_versions), "
                           "(SELECT generation FROM rules_state WHERE id = 1)")
            key = tuple(cursor.fetchone() or ())
        finally:
            cursor.close()
        known = self._schedule
        if known is not None and known.key == key:
            return known
        schedule = self._read_schedule(conn, key)
        self._schedule = schedule
        return schedule

    def active(self, conn: Connection) -> RulesVersion:
        """The version in effect at real time (without its text); its engine is built here."""
        return self.schedule(conn).at(self.now(), self.now())[0]

    def _read_schedule(self, conn: Connection, key: tuple[Any, ...]) -> Schedule:
        c = rules_versions.c
        rows = conn.execute(select(c.id, c.sha256, c.activated_at, c.source, c.effective_at)
                            .where(c.cancelled_at.is_(None))).all()
        if not rows:
            raise TollgateError("No rules version is active; start the service with a rules file.")
        versions = sorted((RulesVersion(r.id, r.sha256, r.activated_at, r.source, "", r.effective_at)
                           for r in rows), key=lambda v: (v.effective, v.id))
        now = self.now()
        in_effect = [i for i, v in enumerate(versions) if v.effective <= now]
        kept = versions[in_effect[-1] if in_effect else 0:]
        entries = []
        for version in kept:
            if version.sha256 not in self._engines:
                text = conn.execute(select(c.yaml).where(c.id == version.id)).scalar_one()
                self.engine_for(RulesVersion(version.id, version.sha256, version.activated_at,
                                             version.source, text))
            entries.append((version, self._engines[version.sha256]))
        return Schedule(key, entries)

    def has_version(self) -> bool:
        with self.db.read() as conn:
            return conn.execute(select(rules_versions.c.id).limit(1)).first() is not None

    def active_rules(self) -> RulesVersion:
        """The version in effect now with its YAML text (GET /rules)."""
        with self.db.read() as conn:
            active = self.active(conn)
            row = conn.execute(select(rules_versions).where(rules_versions.c.id == active.id)).one()
        return self._version(row)

    def scheduled_rules(self) -> list[RulesVersion]:
        """The versions scheduled to take effect later (not cancelled), soonest first, with their text."""
        c = rules_versions.c
        with self.db.read() as conn:
            rows = conn.execute(select(rules_versions).where(c.cancelled_at.is_(None),
                                                             c.effective_at > self.now())
                                .order_by(c.effective_at, c.id)).all()
        return [self._version(row) for row in rows]

    @staticmethod
    def _version(row: Any) -> RulesVersion:
        return RulesVersion(row.id, row.sha256, row.activated_at, row.source, row.yaml, row.effective_at)

    def validate_rules(self, text: str, source: str = "rules.yaml") -> list[Problem]:
        try:
            load_policy(text, source)
        except RulesError as error:
            return error.problems
        return []

    def activate_rules(self, text: str, *, source: str = rules_files.API_SOURCE, actor: str = "admin",
                       filename: str = "rules.yaml", effective_at: datetime | None = None) -> RulesVersion:
        """Validate and activate `text` as a new version; the old version stays on any problem.

        `source` is recorded with the version ("api", or "file:" and a path); problems are
        reported against `filename`. `effective_at`: the instant from which it judges (it must be
        later than now, `check_effective_at`); without it, now."""
        policy = load_policy(text, filename)  # raises RulesError with every problem
        if effective_at is not None:
            self.check_effective_at(effective_at)
        with self.db.transaction() as conn:
            self.db.cluster_lock(conn, "rules_versions")  # versions commit in the order of their ids
            version = self.insert_version(conn, policy, source, actor, effective_at)
        self.keep_engine(policy)
        when = "scheduled for " + str(rfc3339(effective_at)) if effective_at is not None else "activated"
        log.info("rules version %d %s (sha256 %s, source %s, by %s)", version.id, when,
                 version.sha256, source, actor)
        return version

    def check_effective_at(self, effective_at: datetime) -> None:
        """A scheduled version must take effect after now (real time): an instant already past
        would judge events already judged, so it is refused rather than taken for now."""
        now = self.now()
        if effective_at <= now:
            raise BadRequest(f"effective_at {rfc3339(effective_at)} is not in the future (it is "
                             f"{rfc3339(now)} now); give a later instant, or leave effective_at out "
                             "to activate the version now.",
                             [Problem("$.effective_at", "not after now", file="query")])

    def reactivate(self, number: int, *, actor: str = "admin",
                   effective_at: datetime | None = None) -> RulesVersion:
        """Activate the text of the stored version `number` again as a new version (now, or at
        `effective_at`), so the history of versions stays append-only; its source names `number`."""
        with self.db.read() as conn:
            text = conn.execute(select(rules_versions.c.yaml).where(rules_versions.c.id == number)
                                ).scalar_one_or_none()
        if text is None:
            raise NotFound(f"There is no rules version {number}; GET /rules/versions lists them.")
        return self.activate_rules(text, source=f"{REACTIVATED_SOURCE}{number}", actor=actor,
                                   filename=f"rules version {number}", effective_at=effective_at)

    def cancel(self, number: int, *, actor: str = "admin") -> RulesVersion:
        """Cancel the scheduled version `number`: it will never take effect. Conflict (409) once it
        has taken effect or was cancelled already; NotFound when there is no such version."""
        c = rules_versions.c
        with self.db.transaction() as conn:
            self.db.cluster_lock(conn, "rules_versions")
            row = conn.execute(select(rules_versions).where(c.id == number)).first()
            if row is None:
                raise NotFound(f"There is no rules version {number}; GET /rules/versions lists them.")
            if row.cancelled_at is not None:
                raise Conflict(f"The rules version {number} was cancelled already, at "
                               f"{rfc3339(row.cancelled_at)}.")
            now = self.now()
            effective = row.effective_at or row.activated_at
            if effective <= now:
                raise Conflict(f"The rules version {number} took effect at {rfc3339(effective)}; only a "
                               "scheduled version can be cancelled. To go back, re-activate an earlier "
                               "version (POST /rules/versions/{n}/activate).")
            conn.execute(update(rules_versions).where(c.id == number)
                         .values(cancelled_at=now, cancelled_by=actor))
            self._bump(conn)
        log.info("rules version %d (scheduled for %s) cancelled by %s", number, rfc3339(effective), actor)
        return self._version(row)

    def insert_version(self, conn: Connection, policy: Policy, source: str, actor: str,
                       effective_at: datetime | None = None) -> RulesVersion:
        now = self.now()
        effective = now if effective_at is None else effective_at
        new_id = conn.execute(insert(rules_versions).values(
            sha256=policy.sha256, yaml=policy.text, source=source, activated_at=now,
            activated_by=actor, effective_at=effective).returning(rules_versions.c.id)).scalar_one()
        self._bump(conn, new_id if effective_at is None else None)
        return RulesVersion(new_id, policy.sha256, now, source, policy.text, effective)

    @staticmethod
    def _bump(conn: Connection, first: int | None = None) -> None:
        """Move `rules_state.generation`: every process reads its schedule again. `first`: a
        version in effect now, which real-time timers count as planned under when none was (the
        first version of a database: no timer is armed yet)."""
        state = rules_state.c
        moved = conn.execute(update(rules_state).where(state.id == 1).values(
            generation=state.generation + 1,
            timers_version=func.coalesce(state.timers_version, first))).rowcount
        if not moved:
            conn.execute(insert(rules_state).values(id=1, generation=1, timers_version=first))

    def keep_engine(self, policy: Policy) -> None:
        with self._engines_lock:
            self._engines.setdefault(policy.sha256, new_engine(policy))

    def import_rules_file(self, path: str | Path, *, force: bool = False, actor: str = rules_files.STARTUP,
                          effective_at: datetime | None = None) -> tuple[RulesVersion, bool]:
        """Activate the rules file at `path` if it changed since its last import (or, with `force`,
        unless it is the active version already): the active version, and whether it is new.

        Plan, then import or record under a cluster-wide lock, so that processes starting together
        import a changed file once; log what was done. Compiling the file (the slow part) happens
        before the lock, when the first look says it will be imported; the plan is made again under
        the lock, where it counts. `effective_at` (`tollgate rules activate --effective-at`):
        the imported version is scheduled for that instant (it must be after now)."""
        if effective_at is not None:
            self.check_effective_at(effective_at)
        rules = rules_files.read_rules_file(path)
        with self.db.read() as conn:
            first = rules_files.plan(conn, rules, force=force, now=self.now())
        policy = load_policy(rules.text, rules.path) if first.action == "import" else None
        with self.db.transaction() as conn:
            self.db.cluster_lock(conn, "rules_versions")
            chosen = rules_files.plan(conn, rules, force=force, now=self.now())
            if chosen.action == "import":
                policy = policy or load_policy(rules.text, rules.path)
                imported = self.insert_version(conn, policy, rules.source, actor, effective_at)
                rules_files.record(conn, rules, imported.id, imported.activated_at)
            elif chosen.action == "record" and chosen.version is not None:
                rules_files.record(conn, rules, chosen.version, self.now())
        if policy is not None and chosen.action == "import":
            self.keep_engine(policy)
        version = imported if chosen.action == "import" and effective_at is not None else self.active_rules()
        done = "imported as" if chosen.action == "import" else "not imported; kept"
        log.info("rules file %s (sha256 %s) %s rules version %d (sha256 %s, source %s): %s", rules.path,
                 rules.sha256, done, version.id, version.sha256, version.source, chosen.reason)
        return version, chosen.action == "import"

    def start(self, rules_path: str | Path, *, strict: bool = True) -> RulesVersion:
        """Import the rules file if it changed since its last import, build the active engine; the
        active version.

        A version activated over the API since the file's last import stays active: a restart
        (of a server, a gunicorn worker or a `tollgate worker`) never reverts it. A file with
        problems raises RulesError, unless `strict` is false and a version is active: then the
        problems are logged and that version keeps serving (a gunicorn worker respawned after a
        crash must not fail to boot, and so stop the whole server, over a file being edited)."""
        try:
            version, _ = self.import_rules_file(rules_path)
        except RulesError as error:
            if strict or not self.has_version():
                raise
            log.error("The rules file %s has %d problem(s) and was not imported; the active "
                      "version keeps serving. %s", rules_path, len(error.problems),
                      " ".join(str(problem) for problem in error.problems))
            version = self.active_rules()
        with self.db.read() as conn:  # build the active engine now, before the freeze
            self.engine_for(self.active(conn))
        return version
