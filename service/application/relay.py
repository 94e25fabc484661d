"""The delivery relay: sends the outbox through the senders of its channels, at least once.

A notification is a row written in the transaction of the event that produced it, so a relay sees
it only once that transaction has committed (never before, and a rolled-back event leaves none).
Each pass of a relay (`Relay.run_once`):

1. **claims** up to `batch` due notifications in one short write transaction: pending or
   retrying, `next_attempt_at` NULL or past, of a channel this relay has a sender for — with
   `FOR UPDATE SKIP LOCKED` where the dialect has row locks (PostgreSQL: concurrent relays take
   disjoint rows), under SQLite's single writer (`BEGIN IMMEDIATE`) otherwise. The claim stamps
   a random token into `claim`, counts the attempt, and pushes `next_attempt_at` to the end of a
   lease, so no other relay takes the row while this one sends it;
2. **sends** each one outside any transaction (a slow receiver holds no lock);
3. **records** every attempt in `notification_attempts` and moves the row on, if it still holds
   this relay's token (a redelivery or a lapsed lease may have taken it): delivered; or retrying,
   its next attempt after an exponential back-off with jitter; or dead once the next attempt would
   fall outside the retry window, measured in real time from the first attempt.

A relay that dies after sending and before recording leaves the row claimed until its lease ends;
then another relay sends it again: at least once, with the same stable id (`ntf_<id>`, the
`Idempotency-Key` of webhooks), on which receivers de-duplicate.

Delivery runs on real time, whatever clock the notification's instance is on: a test clock's
month of invoices is delivered now, as fast as the relay goes (test clocks rehearse the whole
path, receivers included). `created_at` in a webhook is the instance's (test) time.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import aliased

from tollgate.service.application.times import rfc3339
from tollgate.service.delivery.channels import Delivery, Sender, SendResult
from tollgate.service.storage.db import Database, note
from tollgate.service.storage.tables import instances, notification_attempts, notifications
from tollgate.workflows.exceptions import NotFound

log = logging.getLogger("tollgate.relay")

STATES = ("pending", "retrying", "delivered", "dead")
DUE_STATES = ("pending", "retrying")
DETAIL_LIMIT = 300
#: The longest single pause between two attempts, whatever the back-off has grown to.
MAX_DELAY_SECONDS = 6 * 3600.0


def stable_id(notification_id: int) -> str:
    """The id a notification keeps on every attempt (webhooks' `Idempotency-Key`)."""
    return f"ntf_{notification_id}"


_USERINFO = re.compile(r"(//)[^/@\s]*@")


def redact_error(error: BaseException) -> str:
    """An exception as an attempt's detail: class and message, without URL credentials, short."""
    message = _USERINFO.sub(r"\1[redacted]@", str(error))
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text[:DETAIL_LIMIT]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with jitter: attempt n failed → the next one `delay(n)` seconds later.

    The first retry comes `base` seconds after the first failure; the n-th waits `base` plus a
    uniformly random share of `base * (2**(n-1) - 1)` ("full jitter" above a floor of `base`), so
    that notifications that failed together (a receiver down for a minute) do not come back
    together; no pause exceeds `MAX_DELAY_SECONDS`. Once the next attempt would fall after
    `window` seconds from the first attempt, the notification is dead.
    """

    base: float = 10.0
    window: float = 24 * 3600.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        spread = self.base * (2 ** min(attempt - 1, 30) - 1)
        return min(self.base + rng.uniform(0, spread), MAX_DELAY_SECONDS)


class Pass(NamedTuple):
    """What one relay pass did."""

    claimed: int
    delivered: int
    failed: int
    dead: int


class Claimed(NamedTuple):
    delivery: Delivery
    first_attempt_at: datetime


class Outbox:
    """The outbox's delivery bookkeeping over `db` (claims, attempts, redeliveries, views)."""

    def __init__(self, db: Database, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now

    # ── claiming ─────────────────────────────────────────────────────────────────────────────

    def _due(self, now: datetime, channels: tuple[str, ...]) -> Any:
        n = notifications.c
        return and_(n.delivery_state.in_(DUE_STATES), n.channel.in_(channels),
                    or_(n.next_attempt_at.is_(None), n.next_attempt_at <= now))

    def any_due(self, channels: tuple[str, ...]) -> bool:
        """Whether a notification of `channels` is due (a read: idle relays write nothing)."""
        with self.db.read() as conn:
            return conn.execute(select(notifications.c.id).where(self._due(self.now(), channels))
                                .limit(1)).first() is not None

    def claim(self, channels: tuple[str, ...], limit: int, lease: float) -> tuple[str, list[Claimed]]:
        """Claim up to `limit` due notifications of `channels` for `lease` seconds (oldest first):
        the claim's token and the notifications."""
        token = secrets.token_hex(8)
        if not channels or not self.any_due(channels):
            return token, []
        now = self.now()
        query = (select(notifications.c.id).where(self._due(now, channels))
                 .order_by(notifications.c.id).limit(limit))
        if self.db.dialect.row_locks:  # concurrent relays take disjoint rows instead of waiting
            query = query.with_for_update(skip_locked=True)
        with self.db.transaction() as conn:
            ids = [row.id for row in conn.execute(query)]
            if not ids:
                return token, []
            n = notifications.c
            conn.execute(update(notifications).where(n.id.in_(ids)).values(
                claim=token, attempts=n.attempts + 1, next_attempt_at=now + timedelta(seconds=lease),
                first_attempt_at=func.coalesce(n.first_attempt_at, now)))
            return token, self._load(conn, ids)

    def _load(self, conn: Connection, ids: list[int]) -> list[Claimed]:
        account = aliased(instances)
        i = instances.c
        query = (select(notifications, i.workflow, i.context, i.account, account.c.context.label("acct"))
                 .join(instances, i.id == notifications.c.instance)
                 .outerjoin(account, account.c.id == i.account)
                 .where(notifications.c.id.in_(ids)).order_by(notifications.c.id))
        out = []
        for row in conn.execute(query):
            account_context = row.context if row.workflow == "signup" else row.acct
            out.append(Claimed(Delivery(
                id=row.id, stable_id=stable_id(row.id), instance=row.instance, workflow=row.workflow,
                template=row.template, channel=row.channel, recipient=row.recipient, payload=row.payload,
                context=row.context, account=account_context, created_at=row.created_at,
                attempt=row.attempts), row.first_attempt_at))
        return out

    # ── recording ────────────────────────────────────────────────────────────────────────────

    def record(self, token: str, outcomes: list[tuple[Claimed, SendResult, datetime]],
               policy: RetryPolicy, rng: random.Random) -> Pass:
        """Log each attempt and move each notification this relay still holds (`token`) on."""
        n = notifications.c
        attempts: list[dict[str, Any]] = []
        delivered: dict[str | None, list[int]] = {}  # status → ids: one UPDATE per status
        moved: list[dict[str, Any]] = []  # the failed, one by one (each its own next attempt)
        dead = 0
        for claimed, result, at in outcomes:
            delivery = claimed.delivery
            detail = result.detail or ("Delivered." if result.delivered else "Not delivered.")
            attempts.append({"notification": delivery.id, "attempt": delivery.attempt, "at": at,
                             "result": "delivered" if result.delivered else "failed",
                             "status": result.status, "detail": detail[:DETAIL_LIMIT]})
            if result.delivered:
                delivered.setdefault(result.status, []).append(delivery.id)
                continue
            retry_at = at + timedelta(seconds=policy.delay(delivery.attempt, rng))
            if retry_at > claimed.first_attempt_at + timedelta(seconds=policy.window):
                dead += 1
                moved.append({"i": delivery.id, "s": "dead", "a": None, "st": result.status})
            else:
                moved.append({"i": delivery.id, "s": "retrying", "a": retry_at, "st": result.status})
        with self.db.transaction() as conn:
            conn.execute(notification_attempts.insert(), attempts)
            for claimed, result, _ in outcomes:  # /metrics: attempts by channel and result, once committed
                note(conn, "delivery", (claimed.delivery.channel, result.delivered))
            for status, ids in delivered.items():
                conn.execute(update(notifications).where(n.id.in_(ids), n.claim == token).values(
                    delivery_state="delivered", next_attempt_at=None, claim=None, last_status=status))
            if moved:
                conn.execute(update(notifications).where(n.id == bindparam("i"), n.claim == token).values(
                    delivery_state=bindparam("s"), next_attempt_at=bindparam("a"), claim=None,
                    last_status=bindparam("st")), moved)
        done = sum(len(ids) for ids in delivered.values())
        return Pass(len(outcomes), done, len(moved), dead)

    # ── operators ────────────────────────────────────────────────────────────────────────────

    def redeliver(self, notification_id: int) -> dict[str, Any]:
        """Send `notification_id` again: pending now, a fresh retry window; its attempts stay logged."""
        n = notifications.c
        with self.db.transaction() as conn:
            changed = conn.execute(update(notifications).where(n.id == notification_id).values(
                delivery_state="pending", next_attempt_at=None, claim=None, first_attempt_at=None))
            if changed.rowcount == 0:
                raise NotFound(f"There is no notification {notification_id}.")
            row = conn.execute(select(notifications).where(n.id == notification_id)).one()
        return {"id": row.id, "delivery": delivery_view(row)}

    def attempts(self, notification_id: int) -> list[dict[str, Any]]:
        """The attempt log of one notification, oldest first."""
        a = notification_attempts.c
        with self.db.read() as conn:
            known = select(notifications.c.id).where(notifications.c.id == notification_id)
            if conn.execute(known).first() is None:
                raise NotFound(f"There is no notification {notification_id}.")
            return [{"attempt": r.attempt, "at": rfc3339(r.at), "result": r.result, "status": r.status,
                     "detail": r.detail}
                    for r in conn.execute(select(notification_attempts)
                                          .where(a.notification == notification_id).order_by(a.id))]

    def backlog(self) -> dict[str, int]:
        """Notifications by delivery state."""
        n = notifications.c
        with self.db.read() as conn:
            rows = conn.execute(select(n.delivery_state, func.count()).group_by(n.delivery_state))
            counts: dict[str, int] = {state: int(count) for state, count in rows}
        return {state: int(counts.get(state, 0)) for state in STATES}


def delivery_view(row: Any) -> dict[str, Any]:
    """A notification row's `delivery` object as `GET /notifications` shows it."""
    return {"state": row.delivery_state, "attempts": row.attempts,
            "next_attempt_at": rfc3339(row.next_attempt_at), "last_status": row.last_status}


class Relay:
    """Sends due notifications through `senders` (channel → Sender), recording each attempt."""

    def __init__(self, outbox: Outbox, senders: Mapping[str, Sender], *, policy: RetryPolicy | None = None,
                 batch: int = 100, timeout: float = 10.0, concurrency: int = 8,
                 rng: random.Random | None = None) -> None:
        self.outbox = outbox
        self.senders = dict(senders)
        self.channels = tuple(sorted(self.senders))
        self.policy = policy or RetryPolicy()
        self.batch = batch
        #: Sends of a batch in flight at once (each on its own kept-alive connection): a receiver
        #: 50 ms away takes 20 sends a second one at a time.
        self.concurrency = max(1, concurrency)
        #: How long a claim holds: every round of sends may take the whole timeout twice (to
        #: connect, then to answer).
        self.lease = 2 * -(-batch // self.concurrency) * timeout + 5.0
        self.rng = rng or random.Random()
        self._pool: ThreadPoolExecutor | None = None

    def run_once(self) -> Pass:
        """Claim one batch, send it, record it."""
        token, claimed = self.outbox.claim(self.channels, self.batch, self.lease)
        if not claimed:
            return Pass(0, 0, 0, 0)
        if self.concurrency == 1 or len(claimed) == 1:
            outcomes = [self._send(item) for item in claimed]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="tollgate-send")
            outcomes = list(self._pool.map(self._send, claimed))
        done = self.outbox.record(token, outcomes, self.policy, self.rng)
        if done.failed:
            log.warning("relay: %d of %d notification(s) not delivered (%d dead).", done.failed,
                        done.claimed, done.dead)
        return done

    def _send(self, item: Claimed) -> tuple[Claimed, SendResult, datetime]:
        delivery = item.delivery
        try:
            result = self.senders[delivery.channel].send(delivery)
        except Exception as error:  # a failed attempt like any other: retried, logged redacted
            result = SendResult(False, None, redact_error(error))
        log.debug("relay: %s (%s to %s, attempt %d): %s %s", delivery.stable_id, delivery.template,
                  delivery.channel, delivery.attempt, "delivered" if result.delivered else "failed",
                  result.status)
        return item, result, self.outbox.now()

    def close(self) -> None:
        """Stop the sending threads and close the senders' connections."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for sender in self.senders.values():
            close = getattr(sender, "close", None)
            if close is not None:
                close()

    def run_until_idle(self, *, pause: float = 0.0, max_passes: int | None = None) -> Pass:
        """Passes until one claims nothing (retries not yet due are left); the totals."""
        totals = [0, 0, 0, 0]
        passes = 0
        while max_passes is None or passes < max_passes:
            done = self.run_once()
            passes += 1
            if not done.claimed:
                break
            totals = [a + b for a, b in zip(totals, done, strict=True)]
            if pause:
                time.sleep(pause)
        return Pass(*totals)
