"""The rules versions a database keeps, listed newest first, and two of them compared in policy terms.

Read-only: `GET /rules/versions`, `GET /rules/diff` and `tollgate rules diff OLD NEW --database URL`.
The comparison itself is the pure core's (`workflows/policy_diff.py`); this module reads the texts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from threading import Lock
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from tollgate.service.application import rules_files
from tollgate.service.application.policy_files import load_policy
from tollgate.service.application.times import rfc3339, system_now
from tollgate.service.storage.db import Database, normalise_url
from tollgate.service.storage.tables import rules_versions
from tollgate.workflows.exceptions import NotFound, TollgateError
from tollgate.workflows.policy import Policy
from tollgate.workflows.policy_diff import PolicyDiff, diff_policies

#: Compiled policies of stored versions kept for the next comparison (by digest).
_KEEP = 8


@dataclass(frozen=True)
class VersionEntry:
    """One stored rules version, without its text; `status` is one of `STATUSES`."""

    id: int
    sha256: str
    source: str
    activated_at: datetime
    activated_by: str
    active: bool
    effective_at: datetime | None = None
    status: str = "active"
    cancelled_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.id, "sha256": self.sha256, "source": self.source,
                "activated_at": rfc3339(self.activated_at), "activated_by": self.activated_by,
                "active": self.active, "effective_at": rfc3339(self.effective_at or self.activated_at),
                "status": self.status, "cancelled_at": rfc3339(self.cancelled_at)}


#: scheduled: takes effect later; active: in effect now; superseded: took effect, then another
#: did; cancelled: cancelled while it was scheduled.
STATUSES = ("scheduled", "active", "superseded", "cancelled")


class RulesHistory:
    """The versions stored in `db`, read only; `now` is real time (which versions are in effect)."""

    def __init__(self, db: Database, now: Callable[[], datetime] = system_now) -> None:
        self.db = db
        self.now = now
        self._policies: OrderedDict[str, Policy] = OrderedDict()
        self._lock = Lock()

    def versions(self) -> list[VersionEntry]:
        """Every version, newest first, with its status now (see `STATUSES`)."""
        c = rules_versions.c
        query = select(c.id, c.sha256, c.source, c.activated_at, c.activated_by, c.effective_at,
                       c.cancelled_at).order_by(c.id.desc())
        with self._reading() as conn:
            rows = conn.execute(query).all()
        now = self.now()
        live = sorted((r.effective_at or r.activated_at, r.id) for r in rows if r.cancelled_at is None)
        in_effect = [key for key in live if key[0] <= now] or live[:1]
        active = in_effect[-1][1] if in_effect else None
        entries = []
        for r in rows:
            effective = r.effective_at or r.activated_at
            status = ("cancelled" if r.cancelled_at is not None else "active" if r.id == active
                      else "scheduled" if effective > now else "superseded")
            entries.append(VersionEntry(r.id, r.sha256, r.source, r.activated_at, r.activated_by,
                                        status == "active", effective, status, r.cancelled_at))
        return entries

    def policy(self, version: int) -> Policy:
        """The compiled policy of a stored version; `NotFound` names the versions there are."""
        with self._reading() as conn:
            row = conn.execute(select(rules_versions.c.sha256, rules_versions.c.source, rules_versions.c.yaml)
                               .where(rules_versions.c.id == version)).first()
            if row is None:
                low, high = conn.execute(select(func.min(rules_versions.c.id),
                                                func.max(rules_versions.c.id))).one()
        if row is None:
            known = "it has none" if low is None else f"its versions are {low} to {high}"
            raise NotFound(f"There is no rules version {version} in the database; {known}.")
        with self._lock:
            kept = self._policies.get(row.sha256)
            if kept is not None:
                self._policies.move_to_end(row.sha256)
                return kept
        policy = load_policy(row.yaml, f"version {version} ({rules_files.display_name(row.source)})")
        with self._lock:
            self._policies[row.sha256] = policy
            while len(self._policies) > _KEEP:
                self._policies.popitem(last=False)
        return policy

    def diff(self, old: int, new: int) -> PolicyDiff:
        """What changed in policy terms from version `old` to version `new`."""
        return diff_policies(self.policy(old), self.policy(new))

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """`db.read()`, with a database that is not tollgate's (no rules_versions table, cannot be
        opened) reported in one sentence instead of SQLAlchemy's error."""
        try:
            with self.db.read() as conn:
                yield conn
        except SQLAlchemyError as error:
            where = self.db.url.split("@")[-1]
            reason = str(getattr(error, "orig", None) or error).splitlines()[0]
            raise TollgateError(f"The rules versions of the database {where} cannot be read ({reason}); "
                                "is it a tollgate database that a server or `tollgate rules activate` "
                                "has set up?") from None


def open_history(url: str) -> RulesHistory:
    """The versions of the database at `url`, for reading: a SQLite file that does not exist is
    refused (opening it would create an empty one), as is a URL SQLAlchemy cannot parse."""
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError:
        raise TollgateError(f"'{url}' is not a database URL; write it like sqlite:///tollgate.db or "
                            "postgresql://user@host/db.") from None
    file = parsed.database
    if parsed.get_backend_name() == "sqlite" and file and file != ":memory:" and not Path(file).is_file():
        raise TollgateError(f"There is no SQLite database file {file}; give the database the service "
                            "uses with --database or TOLLGATE_DATABASE_URL.")
    try:
        return RulesHistory(Database(url))
    except ValueError as error:  # a scheme other than sqlite:// or postgresql://
        raise TollgateError(str(error)) from None
