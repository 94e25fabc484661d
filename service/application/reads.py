"""Reading instances, their history, the outbox and parked timers (the API's GETs).

Every read is one read-only transaction; lists are paged by an opaque cursor (created_at, id).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, func, or_, select

from tollgate.service.application.policy_files import definitions
from tollgate.service.application.relay import delivery_view
from tollgate.service.application.times import rfc3339
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import failed_timers, history, instances, notifications, timers
from tollgate.service.storage.unit_of_work import UnitOfWork
from tollgate.workflows.exceptions import BadRequest, NotFound, Problem
from tollgate.workflows.secrets import redact_context, redact_payload


class Reads:
    """The read side over `db` (lock: whether `row(lock=True)` may use row locks)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def row(self, conn: Connection, instance_id: str, *, lock: bool = False) -> Row[Any]:
        query = select(instances).where(instances.c.id == instance_id)
        if lock and self.db.for_update():
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"There is no instance '{instance_id}'.")
        return row

    def _timers_of(self, conn: Connection, instance_id: str) -> list[dict[str, Any]]:
        """Armed timers, then parked ones (their event failed: `status`, `error`, `failed_at`)."""
        rows = conn.execute(select(timers).where(timers.c.instance == instance_id)
                            .order_by(timers.c.due_at, timers.c.name))
        armed = [{"name": t.name, "event": t.event, "at": rfc3339(t.due_at)} for t in rows]
        parked = conn.execute(select(failed_timers).where(failed_timers.c.instance == instance_id)
                              .order_by(failed_timers.c.id))
        return armed + [_parked(t.name, t.event, rfc3339(t.due_at), rfc3339(t.failed_at), t.error)
                        for t in parked]

    def instance_dict(self, conn: Connection, row: Row[Any]) -> dict[str, Any]:
        return {"id": row.id, "workflow": row.workflow, "state": row.state,
                "context": redact_context(row.workflow, row.context),
                "version": row.version, "clock": row.clock, "timers": self._timers_of(conn, row.id),
                "created_at": rfc3339(row.created_at), "updated_at": rfc3339(row.updated_at)}

    def record_dict(self, uow: UnitOfWork, record: Mapping[str, Any]) -> dict[str, Any]:
        """`_instance_dict` from a flushed record of the unit (no re-read of the instance row)."""
        reader = uow.reader
        rows = reader.fetch("SELECT name, event, due_at, NULL, NULL, 0, 0 FROM timers WHERE instance = ? "
                            "UNION ALL SELECT name, event, due_at, failed_at, error, 1, id "
                            "FROM failed_timers WHERE instance = ? ORDER BY 6, 7, 3, 1",
                            [record["id"], record["id"]])
        moment = reader.moment
        return {"id": record["id"], "workflow": record["workflow"], "state": record["state"],
                "context": redact_context(record["workflow"], record["context"]),
                "version": record["version"], "clock": record["clock"],
                "timers": [{"name": name, "event": event, "at": rfc3339(moment(due))} if not parked
                           else _parked(name, event, rfc3339(moment(due)), rfc3339(moment(failed)), error)
                           for name, event, due, failed, error, parked, _ in rows],
                "created_at": rfc3339(reader.moment(record["created_at"])),
                "updated_at": rfc3339(reader.moment(record["updated_at"]))}

    def get_instance(self, instance_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self.instance_dict(conn, self.row(conn, instance_id))

    def list_instances(self, *, workflow: str | None = None, state: str | None = None,
                       account: str | None = None, limit: int = 50,
                       cursor: str | None = None) -> dict[str, Any]:
        if workflow is not None and workflow not in definitions():
            raise BadRequest(f"There is no workflow '{workflow}'; workflows: {', '.join(definitions())}.")
        if not 1 <= limit <= 500:
            raise BadRequest(f"The limit must be between 1 and 500, not {limit}.")
        query = select(instances)
        if workflow:
            query = query.where(instances.c.workflow == workflow)
        if state:
            query = query.where(instances.c.state == state)
        if account:
            query = query.where(or_(instances.c.account == account, instances.c.id == account))
        if cursor:
            created, last_id = _decode_cursor(cursor)
            query = query.where(or_(instances.c.created_at > created,
                                    and_(instances.c.created_at == created, instances.c.id > last_id)))
        query = query.order_by(instances.c.created_at, instances.c.id).limit(limit + 1)
        with self.db.read() as conn:
            rows = list(conn.execute(query))
            items = [self.instance_dict(conn, r) for r in rows[:limit]]
        next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return {"items": items, "next_cursor": next_cursor}

    def history(self, instance_id: str) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            self.row(conn, instance_id)
            rows = conn.execute(select(history).where(history.c.instance == instance_id)
                                .order_by(history.c.seq))
            return [{"seq": h.seq, "event": h.event, "from": h.from_state, "to": h.to_state,
                     "outcome": h.outcome, "reasons": h.reasons, "notes": h.notes, "data": h.data,
                     "at": rfc3339(h.at), "rules_version": h.rules_version, "actor": h.actor}
                    for h in rows]

    def notifications(self, instance_id: str | None = None, *,
                      reveal: Callable[[str | None], bool] | None = None) -> list[dict[str, Any]]:
        """The outbox; `reveal(clock of the instance)` False: secret payload fields redacted."""
        query = (select(notifications, instances.c.clock)
                 .join(instances, instances.c.id == notifications.c.instance).order_by(notifications.c.id))
        if instance_id:
            query = query.where(notifications.c.instance == instance_id)
        with self.db.read() as conn:
            return [{"id": n.id, "instance": n.instance, "template": n.template, "channel": n.channel,
                     "recipient": n.recipient,
                     "payload": n.payload if reveal is None or reveal(n.clock) else
                     redact_payload(n.template, n.payload), "created_at": rfc3339(n.created_at),
                     "delivery": delivery_view(n)}
                    for n in conn.execute(query)]

    def notification_page(self, *, instance: str | None = None, account: str | None = None,
                          channel: str | None = None, template: str | None = None, state: str | None = None,
                          since: datetime | None = None, limit: int = 50, cursor: str | None = None,
                          reveal: Callable[[str | None], bool] | None = None) -> dict[str, Any]:
        """A page of the outbox, oldest (lowest id) first, after `cursor` (`next_cursor` of the
        page before; None on the last page). Filters: the instance; the account (its own
        notifications and those of the instances that reference it); channel; template; delivery
        `state` (`delivery_state_clause`); created at or after `since`. One indexed query a page.
        """
        if not 1 <= limit <= 500:
            raise BadRequest(f"The limit must be between 1 and 500, not {limit}.",
                             [Problem("limit", f"{limit} is not between 1 and 500", file="query")])
        query = (select(notifications, instances.c.clock)
                 .join(instances, instances.c.id == notifications.c.instance))
        if instance is not None:
            query = query.where(notifications.c.instance == instance)
        if account is not None:
            query = query.where(or_(instances.c.account == account, instances.c.id == account))
        if channel is not None:
            query = query.where(notifications.c.channel == channel)
        if template is not None:
            query = query.where(notifications.c.template == template)
        if state is not None:
            query = query.where(delivery_state_clause(state))
        if since is not None:
            query = query.where(notifications.c.created_at >= since)
        if cursor is not None:
            query = query.where(notifications.c.id > decode_id_cursor(cursor))
        query = query.order_by(notifications.c.id).limit(limit + 1)
        with self.db.read() as conn:
            rows = list(conn.execute(query))
        items = [{"id": n.id, "instance": n.instance, "template": n.template, "channel": n.channel,
                  "recipient": n.recipient,
                  "payload": n.payload if reveal is None or reveal(n.clock) else
                  redact_payload(n.template, n.payload), "created_at": rfc3339(n.created_at),
                  "delivery": delivery_view(n)}
                 for n in rows[:limit]]
        next_cursor = encode_id_cursor(rows[limit - 1].id) if len(rows) > limit else None
        return {"items": items, "next_cursor": next_cursor}

    def backlogs(self, now: datetime) -> dict[str, Any]:
        """For the metrics, at scrape time: real-time timers due by `now` and not yet fired (one
        range count on the `ix_timers_due` index), and the undelivered notifications by channel."""
        with self.db.read() as conn:
            due = conn.execute(select(func.count()).select_from(timers)
                               .where(timers.c.clock.is_(None), timers.c.due_at <= now)).scalar_one()
            outbox = conn.execute(select(notifications.c.channel, func.count()).where(undelivered_clause())
                                  .group_by(notifications.c.channel)).all()
        return {"due_timers": int(due), "outbox": {str(channel): int(n) for channel, n in outbox}}

    def failed_timers(self, *, instance_id: str | None = None,
                      clock_id: str | None = None) -> list[dict[str, Any]]:
        """Timers parked because the rules failed on their event (oldest failure first), for
        operators: each with its instance, workflow, due instant, clock, error and rules version."""
        query = (select(failed_timers, instances.c.workflow)
                 .join(instances, instances.c.id == failed_timers.c.instance).order_by(failed_timers.c.id))
        if instance_id is not None:
            query = query.where(failed_timers.c.instance == instance_id)
        if clock_id is not None:
            query = query.where(failed_timers.c.clock == clock_id)
        with self.db.read() as conn:
            return [{"id": t.id, "instance": t.instance, "workflow": t.workflow, "name": t.name,
                     "event": t.event, "at": rfc3339(t.due_at), "clock": t.clock,
                     "failed_at": rfc3339(t.failed_at), "error": t.error, "rules_version": t.rules_version}
                    for t in conn.execute(query)]


#: Delivery states of a notification (the relay's; see README "Delivery").
DELIVERY_STATES = ("pending", "delivered", "retrying", "dead")


def delivery_state_clause(state: str) -> Any:
    """The WHERE clause for notifications in the delivery `state` (migration 0011's column)."""
    if state not in DELIVERY_STATES:
        states = ", ".join(DELIVERY_STATES)
        raise BadRequest(f"The state '{state}' is not a delivery state; give one of {states}.",
                         [Problem("state", f"{state!r} is not one of {states}", file="query")])
    return notifications.c.delivery_state == state


def undelivered_clause() -> Any:
    """The WHERE clause for the outbox backlog: notifications not yet delivered and not dead
    (the relay's due index, which leads with the state, keeps counting it cheap)."""
    return notifications.c.delivery_state.in_(("pending", "retrying"))


def encode_id_cursor(last_id: int) -> str:
    """An opaque cursor after the row id `last_id` (outbox pages, fired timers)."""
    import base64
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_id_cursor(cursor: str) -> int:
    """The id an `encode_id_cursor` cursor holds; anything else is refused unparsed (400)."""
    import base64
    import binascii
    refused = BadRequest("The cursor is not one this server issued; send the next_cursor of the "
                         "previous page unchanged, or leave cursor out to start from the first page.",
                         [Problem("cursor", "not a cursor this server issued", file="query")])
    if len(cursor) > 40:
        raise refused
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, binascii.Error):
        raise refused from None
    match = re.fullmatch(r"id:(\d{1,18})", raw)
    if match is None:
        raise refused
    return int(match.group(1))


def _parked(name: str, event: str, at: str | None, failed_at: str | None, error: str) -> dict[str, Any]:
    """A parked timer as `timers` lists it: its event failed, so it will not fire by itself."""
    return {"name": name, "event": event, "at": at, "status": "failed", "failed_at": failed_at,
            "error": error}


def _encode_cursor(row: Row[Any]) -> str:
    import base64
    raw = json.dumps([rfc3339(row.created_at), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: What `_encode_cursor` writes, base64-decoded: ["<created_at, RFC 3339 in UTC>", "<instance id>"].
_CURSOR = re.compile(r'\["(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?\+00:00)", '
                     r'("(?:[^"\\\x00-\x1f]|\\u[0-9a-fA-F]{4}|\\["\\/bfnrt]){1,256}")\]')


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor of `_encode_cursor` holds. A cursor is opaque: anything but that exact
    shape (another JSON value, a naive or impossible time, deep nesting) is refused unparsed."""
    import base64
    import binascii
    refused = BadRequest("The cursor is not one this server issued; send the next_cursor of the "
                         "previous page unchanged, or leave cursor out to start from the first page.",
                         [Problem("cursor", "not a cursor this server issued", file="query")])
    if len(cursor) > 400:
        raise refused
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        match = _CURSOR.fullmatch(raw)
        if match is None:
            raise refused
        created = datetime.fromisoformat(match.group(1))
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        raise refused from None
    return created, str(json.loads(match.group(2)))  # a flat JSON string: no nesting to recurse into


def count_instances(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(instances)).scalar_one())
