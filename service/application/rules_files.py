"""Rules files and the versions they became: when a start imports the file, and when it keeps the
active version.

The policy has two ways in: `PUT /rules` (source "api") and a rules file (source "file:" and
its absolute path), read by every server, gunicorn worker and `tollgate worker` when it starts,
or on purpose by `tollgate rules activate PATH`. A start imports the file only when the file
itself changed since its last import — a digest kept per path in `rules_file_imports` — so a
version activated over the API since is never replaced behind the editor's back. `plan` decides;
`RulesVersions.import_rules_file` runs it under a cluster-wide lock, so processes
starting together import a changed file once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import Connection, func, insert, select, update

from tollgate.service.storage.tables import rules_file_imports, rules_versions
from tollgate.workflows.exceptions import Problem, RulesError

log = logging.getLogger("tollgate.rules")

API_SOURCE = "api"  # rules_versions.source of a version activated with PUT /rules
FILE_SOURCE = "file:"  # … of a file import: this prefix and the file's absolute path
MAX_SOURCE = 500  # characters of rules_versions.source
STARTUP = "startup"  # rules_versions.activated_by of a file imported by a starting process

Action = Literal["import", "record", "keep"]


@dataclass(frozen=True)
class RulesFile:
    """A rules file as read now: its absolute path (the key of its imports), text and digest."""

    path: str
    text: str
    sha256: str

    @property
    def source(self) -> str:
        return FILE_SOURCE + self.path


@dataclass(frozen=True)
class Plan:
    """What a start does with a rules file: `import` it as a new version, `record` that it is
    already a version (no new version), or `keep` everything as it is."""

    action: Action
    reason: str
    version: int | None = None  # the version the file is, for `record`


def read_rules_file(path: str | Path) -> RulesFile:
    """The file at `path`; RulesError (one problem naming the file) when it cannot be read."""
    absolute = os.path.abspath(path)  # symlinks stay: a deploy that swaps one keeps the key
    if len(FILE_SOURCE + absolute) > MAX_SOURCE:
        raise RulesError([Problem("$", f"The rules file's absolute path is longer than "
                                  f"{MAX_SOURCE - len(FILE_SOURCE)} characters; move it to a shorter path.",
                                  str(path))])
    try:
        text = Path(absolute).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise RulesError([Problem("$", f"The rules file cannot be read: {reason}.", str(path))]) from None
    return RulesFile(absolute, text, hashlib.sha256(text.encode()).hexdigest())


def display_name(source: str) -> str:
    """The file name that problems in a stored version's text are reported against."""
    return source[len(FILE_SOURCE):] if source.startswith(FILE_SOURCE) else "rules.yaml"


def plan(conn: Connection, rules: RulesFile, *, force: bool, now: datetime) -> Plan:
    """Decide what to do with `rules`, from the version in effect at `now` (a version scheduled for
    later is not active yet, however new) and the file's last import.

    `force` (an operator's explicit `tollgate rules activate`) imports the file even when it has
    not changed since its last import. A path never imported before whose text a start already
    imported (before this table existed, or from another path) is recorded, not imported again:
    that text was replaced on purpose since.
    """
    effective = func.coalesce(rules_versions.c.effective_at, rules_versions.c.activated_at)
    active = conn.execute(select(rules_versions.c.id, rules_versions.c.sha256)
                          .where(rules_versions.c.cancelled_at.is_(None), effective <= now)
                          .order_by(effective.desc(), rules_versions.c.id.desc()).limit(1)).first()
    last = conn.execute(select(rules_file_imports.c.sha256)
                        .where(rules_file_imports.c.path == rules.path)).scalar_one_or_none()
    if active is not None and active.sha256 == rules.sha256:
        if last == rules.sha256:
            return Plan("keep", "the file has not changed since its import and is the active version")
        return Plan("record", "the file's text is the active version already", active.id)
    if force:
        return Plan("import", "an operator asked for it")
    if last is not None:
        if last == rules.sha256:
            return Plan("keep", "the file has not changed since its last import")
        return Plan("import", "the file changed since its last import")
    if active is None:
        return Plan("import", "no rules version is active yet")
    earlier = conn.execute(select(rules_versions.c.id).where(rules_versions.c.sha256 == rules.sha256,
                                                             rules_versions.c.activated_by == STARTUP)
                           .order_by(rules_versions.c.id.desc()).limit(1)).scalar_one_or_none()
    if earlier is not None:
        return Plan("record", f"a start imported this text as version {earlier} before", earlier)
    return Plan("import", "the file was never imported")


def record(conn: Connection, rules: RulesFile, version: int, now: datetime) -> None:
    """Remember that `rules` (its path and digest) was imported as, or found to be, `version`."""
    values = {"sha256": rules.sha256, "version": version, "imported_at": now}
    updated = conn.execute(update(rules_file_imports).where(rules_file_imports.c.path == rules.path)
                           .values(**values))
    if not updated.rowcount:
        conn.execute(insert(rules_file_imports).values(path=rules.path, **values))
