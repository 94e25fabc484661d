"""The delivery relay against real webhook receiver processes, on SQLite and PostgreSQL.

Notifications come from the real path (signups on a test clock: `submit_email` writes an
`email_verification` row in the event's transaction); a `WebhookSender` posts them to a receiver
subprocess (tests/helpers/receiver.py) that verifies each signature with the module the README
documents. The relay's clock is a hand-moved one, so retries fall due without waiting.
"""

from __future__ import annotations

import itertools
import random
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text

from tests.helpers.kst import kst_instant
from tests.helpers.paths import RULES_PATH
from tests.helpers.postgres import BACKENDS, fresh_postgres_database
from tests.helpers.receiver import Receiver
from tollgate.service.application.relay import Outbox, Relay, RetryPolicy
from tollgate.service.application.runtime import Runtime
from tollgate.service.delivery.webhooks import WebhookSender
from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import notifications
from tollgate.workflows.exceptions import NotFound

SECRET = "whsec_" + "t" * 32


class HandClock:
    """The relay's real time, moved by the test."""

    def __init__(self) -> None:
        self.at = datetime(2026, 12, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def runtime(database_url: str) -> Iterator[Runtime]:
    rt = Runtime(Database(database_url))
    rt.bootstrap(RULES_PATH)
    yield rt
    rt.close()


def signups(rt: Runtime, count: int) -> list[str]:
    """`count` signups on a test clock, each with one email_verification notification."""
    clock = rt.create_clock(kst_instant(2026, 9, 28, 10), f"c_{secrets.token_hex(3)}")["id"]
    ids = []
    for n in range(count):
        account = rt.create_instance("signup", {}, clock=clock, actor="test")["id"]
        rt.fire(account, "select_type", {"country": "KR", "member_type": "business"}, actor="test")
        rt.fire(account, "submit_email", {"email": f"m{n}@example.com"}, actor="test")
        ids.append(account)
    return ids


OPEN: list[Relay] = []


@pytest.fixture(autouse=True)
def close_relays() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def relay_for(rt: Runtime, url: str, clock: HandClock, *, secret: str = SECRET, timeout: float = 5.0,
              base: float = 10.0, window: float = 3600.0, batch: int = 50) -> Relay:
    sender = WebhookSender("email", url, secret, timeout=timeout)
    relay = Relay(Outbox(rt.db, clock), {"email": sender}, policy=RetryPolicy(base, window), batch=batch,
                  timeout=timeout, rng=random.Random(7))
    OPEN.append(relay)
    return relay


def deliveries(rt: Runtime) -> list[dict[str, Any]]:
    return [n["delivery"] for n in rt.notifications()]


def run_until_settled(relay: Relay, clock: HandClock, rt: Runtime, *, passes: int = 50) -> None:
    """Relay passes, moving the hand clock to each next attempt, until nothing is left to try."""
    for _ in range(passes):
        relay.run_once()
        waiting = [d for d in deliveries(rt) if d["state"] in ("pending", "retrying")]
        if not waiting:
            return
        due = [datetime.fromisoformat(d["next_attempt_at"]) for d in waiting if d["next_attempt_at"]]
        if due:
            clock.at = max(clock.at, min(due))
    raise AssertionError(f"still undelivered after {passes} passes: {deliveries(rt)}")


def test_signed_webhooks_are_delivered_once_each_with_a_stable_idempotency_key(
        runtime: Runtime, tmp_path: Path) -> None:
    signups(runtime, 5)
    clock = HandClock()
    with Receiver(tmp_path, SECRET) as receiver:
        done = relay_for(runtime, receiver.url, clock).run_once()
        requests = receiver.requests()
    assert done.claimed == done.delivered == 5
    ids = [n["id"] for n in runtime.notifications()]
    assert sorted(r["key"] for r in requests) == sorted(f"ntf_{i}" for i in ids)
    assert all(r["verified"] and not r["concurrent"] for r in requests)
    body = requests[0]["body"]
    assert body["template"] == "email_verification" and body["id"] == requests[0]["key"]
    assert body["payload"]["code"].isdigit()  # the receiver gets what it must send, unredacted
    assert {d["state"] for d in deliveries(runtime)} == {"delivered"}
    assert all(d["attempts"] == 1 and d["last_status"] == "202" for d in deliveries(runtime))


def test_failures_are_retried_with_backoff_until_the_receiver_accepts(
        runtime: Runtime, tmp_path: Path) -> None:
    signups(runtime, 2)
    clock = HandClock()
    start = clock.at
    with Receiver(tmp_path, SECRET, fail_first=2) as receiver:
        relay = relay_for(runtime, receiver.url, clock, base=10.0)
        first = relay.run_once()
        after_first = deliveries(runtime)
        assert first.failed == 2 and {d["state"] for d in after_first} == {"retrying"}
        # the first retry comes exactly `base` seconds after the failure, not earlier
        assert {d["next_attempt_at"] for d in after_first} == {(start + timedelta(seconds=10)).isoformat()}
        clock.at = start + timedelta(seconds=9)
        assert relay.run_once().claimed == 0
        run_until_settled(relay, clock, runtime)
        delivered = receiver.delivered_keys()
        statuses = [r["status"] for r in receiver.requests()]
    assert statuses.count(500) == 4 and statuses.count(202) == 2
    assert set(delivered.values()) == {1}
    note = runtime.notifications()[0]
    log = runtime.outbox.attempts(note["id"])
    assert [(a["attempt"], a["result"], a["status"]) for a in log] == [
        (1, "failed", "500"), (2, "failed", "500"), (3, "delivered", "202")]
    assert note["delivery"] == {"state": "delivered", "attempts": 3, "next_attempt_at": None,
                                "last_status": "202"}


def test_a_receiver_that_never_answers_2xx_makes_the_notification_dead_after_the_window(
        runtime: Runtime, tmp_path: Path) -> None:
    signups(runtime, 1)
    clock = HandClock()
    start = clock.at
    with Receiver(tmp_path, SECRET, status=503) as receiver:
        relay = relay_for(runtime, receiver.url, clock, base=10.0, window=120.0)
        run_until_settled(relay, clock, runtime)
        answered = len(receiver.requests())
    (delivery,) = deliveries(runtime)
    assert delivery["state"] == "dead" and delivery["last_status"] == "503"
    log = runtime.outbox.attempts(runtime.notifications()[0]["id"])
    assert len(log) == answered == delivery["attempts"] >= 3
    times = [datetime.fromisoformat(a["at"]) for a in log]
    assert times[-1] - start <= timedelta(seconds=120)  # none after the window
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= timedelta(seconds=10) for gap in gaps)


def test_a_dead_receiver_port_and_a_hanging_receiver_are_failed_attempts(
        runtime: Runtime, tmp_path: Path) -> None:
    signups(runtime, 1)
    clock = HandClock()
    with Receiver(tmp_path, SECRET) as gone:
        url = gone.url
    relay = relay_for(runtime, url, clock, window=30.0)
    run_until_settled(relay, clock, runtime)
    note = runtime.notifications()[0]
    assert note["delivery"]["state"] == "dead" and note["delivery"]["last_status"] is None
    assert all("could not be reached" in a["detail"] for a in runtime.outbox.attempts(note["id"]))
    # an operator sends it again once the receiver is back; this one hangs on the first request
    assert runtime.redeliver(note["id"])["delivery"]["state"] == "pending"
    with Receiver(tmp_path, SECRET, name="hang", hang_first=1, hang_seconds=3) as hanging:
        relay = relay_for(runtime, hanging.url, clock, timeout=0.5)
        run_until_settled(relay, clock, runtime)
    log = runtime.outbox.attempts(note["id"])
    assert "No answer from the email webhook within 0.5 s." in log[-2]["detail"]
    assert log[-1]["result"] == "delivered"
    assert runtime.notifications()[0]["delivery"]["state"] == "delivered"


def test_redeliver_sends_a_delivered_notification_again_and_keeps_its_history(
        runtime: Runtime, tmp_path: Path) -> None:
    signups(runtime, 1)
    clock = HandClock()
    note_id = runtime.notifications()[0]["id"]
    with Receiver(tmp_path, SECRET) as receiver:
        relay = relay_for(runtime, receiver.url, clock)
        relay.run_once()
        runtime.redeliver(note_id)
        assert relay.run_once().delivered == 1
        assert receiver.delivered_keys() == {f"ntf_{note_id}": 2}  # same key: the receiver may de-duplicate
    assert [a["attempt"] for a in runtime.outbox.attempts(note_id)] == [1, 2]
    with pytest.raises(NotFound):
        runtime.redeliver(note_id + 1000)


def test_a_wrong_secret_is_refused_by_the_receiver_and_retried(runtime: Runtime, tmp_path: Path) -> None:
    signups(runtime, 1)
    with Receiver(tmp_path, SECRET) as receiver:
        relay_for(runtime, receiver.url, HandClock(), secret="whsec_wrong").run_once()
        (request,) = receiver.requests()
    assert not request["verified"] and "matches" in request["problem"]
    assert deliveries(runtime)[0]["state"] == "retrying" and deliveries(runtime)[0]["last_status"] == "400"


def test_a_notification_is_sent_only_after_its_event_commits(runtime: Runtime, tmp_path: Path) -> None:
    """The relay runs (in another thread, as in a server) while the event's transaction is open
    and its notification row written: it sends nothing; once committed, it sends it."""
    (account,) = signups(runtime, 1)
    clock = HandClock()
    db = runtime.db
    original = db.grouped  # how events commit (a group commit on SQLite)
    seen_inside: list[int] = []

    with Receiver(tmp_path, SECRET) as receiver:
        relay = relay_for(runtime, receiver.url, clock)
        relay.run_once()  # the first signup's code, already committed

        def probe(conn: Any) -> None:
            written = conn.execute(select(notifications.c.id)
                                   .where(notifications.c.delivery_state == "pending")).all()
            assert written, "the event's notification is written in its transaction"
            thread = threading.Thread(target=lambda: seen_inside.append(relay.run_once().claimed))
            thread.start()  # another thread, as the relay of a server or worker would be
            thread.join(timeout=30)
            seen_inside.append(len(receiver.requests()) - 1)

        def watched(work: Any) -> Any:
            def work_then_probe(conn: Any) -> Any:
                result = work(conn)
                probe(conn)
                return result
            return original(work_then_probe)

        db.grouped = watched  # type: ignore[method-assign]
        try:
            runtime.fire(account, "submit_email", {"email": "again@example.com"}, actor="test")
        finally:
            db.grouped = original  # type: ignore[method-assign]
        relay.run_until_idle()
        keys = receiver.delivered_keys()
    assert seen_inside == [0, 0]  # nothing claimed, nothing received while the transaction was open
    assert len(keys) == 2 and set(keys.values()) == {1}


def test_a_crash_after_sending_leaves_the_claim_to_lapse_and_the_notification_is_sent_again(
        runtime: Runtime, tmp_path: Path) -> None:
    signups(runtime, 3)
    clock = HandClock()
    with Receiver(tmp_path, SECRET) as receiver:
        relay = relay_for(runtime, receiver.url, clock, batch=10, timeout=1.0)
        token, claimed = relay.outbox.claim(relay.channels, relay.batch, relay.lease)
        for item in claimed:  # sent, then the process "dies" before recording
            relay.senders["email"].send(item.delivery)
        assert relay.run_once().claimed == 0  # claimed rows are not taken again while the lease holds
        clock.at += timedelta(seconds=relay.lease + 1)
        assert relay.run_once().delivered == 3
        keys = receiver.delivered_keys()
    assert set(keys.values()) == {2}  # at least once: twice, with one key each to de-duplicate on
    assert {d["state"] for d in deliveries(runtime)} == {"delivered"}
    assert token


def test_notifications_of_channels_without_a_sender_stay_pending(runtime: Runtime, tmp_path: Path) -> None:
    signups(runtime, 1)
    with Receiver(tmp_path, SECRET) as receiver:
        sender = WebhookSender("sms", receiver.url, SECRET)
        relay = Relay(Outbox(runtime.db, HandClock()), {"sms": sender})
        OPEN.append(relay)
        assert relay.run_once().claimed == 0
        assert receiver.requests() == []
    assert deliveries(runtime)[0] == {"state": "pending", "attempts": 0, "next_attempt_at": None,
                                      "last_status": None}


def test_relays_on_several_threads_never_send_one_notification_twice(
        runtime: Runtime, tmp_path: Path, database_url: str) -> None:
    """Four relays, each with its own database engine, drain one outbox together."""
    signups(runtime, 40)
    clock = HandClock()
    with Receiver(tmp_path, SECRET) as receiver:
        relays = []
        for _ in range(4):
            db = Database(database_url)
            relays.append(Relay(Outbox(db, clock), {"email": WebhookSender("email", receiver.url, SECRET)},
                                batch=5))
        OPEN.extend(relays)
        threads = [threading.Thread(target=r.run_until_idle) for r in relays]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for r in relays:
            r.outbox.db.dispose()
        requests = receiver.requests()
    assert len(requests) == 40 and not any(r["concurrent"] for r in requests)
    assert len({r["key"] for r in requests}) == 40
    assert {d["state"] for d in deliveries(runtime)} == {"delivered"}


@pytest.fixture(params=BACKENDS)
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all (a fresh PostgreSQL database of its own)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'blank.db'}"
        return
    with fresh_postgres_database(pytest.skip) as url:
        yield url


def test_migration_0011_marks_existing_notifications_delivered_and_new_ones_pending(blank_url: str) -> None:
    from tests.helpers.migrations import run_migration

    db = Database(blank_url)

    def run(action: str, revision: str) -> None:
        run_migration(db, action, revision)

    def insert(conn: Any, n: int) -> None:
        conn.execute(text("INSERT INTO notifications (instance, template, channel, recipient, payload, "
                          "created_at) VALUES ('a1', 'invoice_issued', 'sms', '010', '{}', :t)"),
                     {"t": datetime(2026, 11, n, tzinfo=UTC)})

    run("upgrade", "0008")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO instances (id, workflow, state, context, secrets, version, "
                          "history_seq, created_at, updated_at) "
                          "VALUES ('a1', 'signup', 'active', '{}', '{}', 1, 0, :t, :t)"),
                     {"t": datetime(2026, 11, 1, tzinfo=UTC)})
        insert(conn, 1)
    run("upgrade", "0011")
    with db.engine.begin() as conn:
        insert(conn, 2)
        rows = conn.execute(text("SELECT delivery_state, attempts, next_attempt_at FROM notifications "
                                 "ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("delivered", 0, None), ("pending", 0, None)]
    run("downgrade", "0008")
    schema = inspect(db.engine)
    columns = {c["name"] for c in schema.get_columns("notifications")}
    assert columns == {"id", "instance", "template", "channel", "recipient", "payload", "created_at"}
    assert "notification_attempts" not in schema.get_table_names()
    run("upgrade", "head")
    db.dispose()
