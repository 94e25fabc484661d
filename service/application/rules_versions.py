"""Rules versions: the active version, activation (PUT /rules, a rules file), an engine per version.

Every event is judged under the newest version, read on each transaction (another process may have
activated one); the engine of a version (machines and compiled guards) is built once per process.
A rules file is imported when it changed since its last import (`rules_files.plan` decides), under
a cluster-wide lock so that processes starting together import it once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select

from tollgate.service.application import rules_files
from tollgate.service.application.passwords import new_engine
from tollgate.service.application.policy_files import load_policy
from tollgate.service.application.rules_files import log
from tollgate.service.application.times import rfc3339
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import rules_versions
from tollgate.workflows.engine import Engine
from tollgate.workflows.exceptions import Problem, RulesError, TollgateError
from tollgate.workflows.policy import Policy


@dataclass(frozen=True)
class RulesVersion:
    id: int
    sha256: str
    activated_at: datetime
    source: str
    yaml: str

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.id, "sha256": self.sha256, "activated_at": rfc3339(self.activated_at),
                "source": self.source, "yaml": self.yaml}


class RulesVersions:
    """The versions stored in `db`, and the engines of those this process judged under."""

    def __init__(self, db: Database, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now
        self._engines: dict[str, Engine] = {}
        self._engines_lock = threading.Lock()
        self._active_version: RulesVersion | None = None

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

    def active(self, conn: Connection) -> RulesVersion:
        """The active version (without its text); its engine is built here the first time.

        The newest version's id and digest are read on the DBAPI cursor on every call (another
        process may have activated rules); the rest is reused while they stay the same.
        """
        cursor = conn.connection.cursor()
        try:
            cursor.execute("SELECT id, sha256 FROM rules_versions ORDER BY id DESC LIMIT 1")
            newest = cursor.fetchone()
        finally:
            cursor.close()
        known = self._active_version
        if known is not None and newest is not None and (known.id, known.sha256) == tuple(newest):
            return known
        version = self._read_active(conn)
        self._active_version = version
        return version

    def _read_active(self, conn: Connection) -> RulesVersion:
        row = conn.execute(select(rules_versions.c.id, rules_versions.c.sha256, rules_versions.c.activated_at,
                                  rules_versions.c.source)
                           .order_by(rules_versions.c.id.desc()).limit(1)).first()
        if row is None:
            raise TollgateError("No rules version is active; start the service with a rules file.")
        version = RulesVersion(row.id, row.sha256, row.activated_at, row.source, "")
        if row.sha256 not in self._engines:
            query = select(rules_versions.c.yaml).where(rules_versions.c.id == row.id)
            text = conn.execute(query).scalar_one()
            self.engine_for(RulesVersion(row.id, row.sha256, row.activated_at, row.source, text))
        return version

    def has_version(self) -> bool:
        with self.db.read() as conn:
            return conn.execute(select(rules_versions.c.id).limit(1)).first() is not None

    def active_rules(self) -> RulesVersion:
        """The active version with its YAML text (GET /rules)."""
        with self.db.read() as conn:
            row = conn.execute(select(rules_versions).order_by(rules_versions.c.id.desc()).limit(1)).first()
        if row is None:
            raise TollgateError("No rules version is active; start the service with a rules file.")
        return RulesVersion(row.id, row.sha256, row.activated_at, row.source, row.yaml)

    def validate_rules(self, text: str, source: str = "rules.yaml") -> list[Problem]:
        try:
            load_policy(text, source)
        except RulesError as error:
            return error.problems
        return []

    def activate_rules(self, text: str, *, source: str = rules_files.API_SOURCE, actor: str = "admin",
                       filename: str = "rules.yaml") -> RulesVersion:
        """Validate and activate `text` as a new version; the old version stays on any problem.

        `source` is recorded with the version ("api", or "file:" and a path); problems are
        reported against `filename`."""
        policy = load_policy(text, filename)  # raises RulesError with every problem
        with self.db.transaction() as conn:
            self.db.cluster_lock(conn, "rules_versions")  # versions commit in the order of their ids
            version = self.insert_version(conn, policy, source, actor)
        self.keep_engine(policy)
        log.info("rules version %d activated (sha256 %s, source %s, by %s)", version.id,
                 version.sha256, source, actor)
        return version

    def insert_version(self, conn: Connection, policy: Policy, source: str, actor: str) -> RulesVersion:
        now = self.now()
        new_id = conn.execute(insert(rules_versions).values(
            sha256=policy.sha256, yaml=policy.text, source=source, activated_at=now,
            activated_by=actor).returning(rules_versions.c.id)).scalar_one()
        return RulesVersion(new_id, policy.sha256, now, source, policy.text)

    def keep_engine(self, policy: Policy) -> None:
        with self._engines_lock:
            self._engines.setdefault(policy.sha256, new_engine(policy))

    def import_rules_file(self, path: str | Path, *, force: bool = False,
                          actor: str = rules_files.STARTUP) -> tuple[RulesVersion, bool]:
        """Activate the rules file at `path` if it changed since its last import (or, with `force`,
        unless it is the active version already): the active version, and whether it is new.

        Plan, then import or record under a cluster-wide lock, so that processes starting together
        import a changed file once; log what was done. Compiling the file (the slow part) happens
        before the lock, when the first look says it will be imported; the plan is made again under
        the lock, where it counts."""
        rules = rules_files.read_rules_file(path)
        with self.db.read() as conn:
            first = rules_files.plan(conn, rules, force=force)
        policy = load_policy(rules.text, rules.path) if first.action == "import" else None
        with self.db.transaction() as conn:
            self.db.cluster_lock(conn, "rules_versions")
            chosen = rules_files.plan(conn, rules, force=force)
            if chosen.action == "import":
                policy = policy or load_policy(rules.text, rules.path)
                imported = self.insert_version(conn, policy, rules.source, actor)
                rules_files.record(conn, rules, imported.id, imported.activated_at)
            elif chosen.action == "record" and chosen.version is not None:
                rules_files.record(conn, rules, chosen.version, self.now())
        if policy is not None and chosen.action == "import":
            self.keep_engine(policy)
        version = self.active_rules()
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
