"""`kill -9` of the whole server mid-stream: every acknowledged event survives, nothing is half-applied.

Client threads stream events (usage on one invoice; signups that each write a notification and
a timer) and record what the server acknowledged with 200. The server's process group is killed
while requests are in flight, restarted on the same database, and the database is checked:
every acknowledged event is in the history, and for every instance the version, the history, the
timers and the outbox agree with each other.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.helpers.client import Client
from tests.helpers.server import StartServer, TollgateServer, poll
from tollgate.service.storage.db import normalise_url

pytestmark = pytest.mark.e2e

ROUNDS = 2  # kill, restart, stream again, kill again
ACKS_BEFORE_KILL = 40  # acknowledged events per round before the kill
STATE_TIMERS = {("signup", "login_info"): {"signup_abandoned"},
                ("signup", "email_verification"): {"signup_abandoned"},
                ("signup", "type_selection"): {"signup_abandoned"},
                ("invoice", "open"): {"invoice_issue"}}


@dataclass
class Ledger:
    """What the server acknowledged (HTTP 200), written by the client threads."""

    usage: list[int] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)  # signup ids whose submit_email was acknowledged
    cut: list[str] = field(default_factory=list)  # how each client thread's stream ended
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.usage) + len(self.emails)


CONNECTION_LOST = (OSError, http.client.HTTPException)


def stream_usage(client: Client, invoice: str, ledger: Ledger, stop: threading.Event, base: int) -> None:
    step = 0
    while not stop.is_set():
        step += 1
        amount = base + step
        try:
            response = client.post(f"/instances/{invoice}/events",
                                   json={"event": "add_usage", "data": {"amount": amount}})
        except CONNECTION_LOST as error:
            ledger.cut.append(type(error).__name__)
            return
        if response.status_code == 200:
            with ledger.lock:
                ledger.usage.append(amount)


def stream_signups(client: Client, clock: str, ledger: Ledger, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            created = client.post("/workflows/signup/instances", json={"context": {}, "clock": clock})
            if created.status_code != 201:
                continue
            account = created.get_json()["id"]
            client.post(f"/instances/{account}/events",
                        json={"event": "select_type", "data": {"country": "KR", "member_type": "business"}})
            sent = client.post(f"/instances/{account}/events",
                               json={"event": "submit_email", "data": {"email": f"{account}@example.com"}})
        except CONNECTION_LOST as error:
            ledger.cut.append(type(error).__name__)
            return
        if sent.status_code == 200:
            with ledger.lock:
                ledger.emails.append(account)


@dataclass
class Stream:
    threads: list[threading.Thread]
    stop: threading.Event

    def end(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), "a client thread hung after the kill"


def start_stream(server: TollgateServer, invoice: str, clock: str, ledger: Ledger, round_: int) -> Stream:
    client = server.client("operator", timeout=20.0)
    stop = threading.Event()
    targets: list[Any] = [(stream_usage, (client, invoice, ledger, stop, 1_000_000 * (round_ * 10 + n)))
                          for n in range(3)]
    targets.append((stream_signups, (client, clock, ledger, stop)))
    threads = [threading.Thread(target=t, args=a, daemon=True) for t, a in targets]
    for thread in threads:
        thread.start()
    return Stream(threads, stop)


@pytest.fixture
def sql(request: pytest.FixtureRequest) -> Iterator[Any]:
    engines: list[Any] = []

    def connect(url: str) -> Any:
        engine = create_engine(normalise_url(url))
        engines.append(engine)
        return engine

    yield connect
    for engine in engines:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_kill_9_mid_stream_keeps_every_acknowledged_event_and_nothing_half_applied(
        backend: str, start_server: StartServer, sql: Any) -> None:
    server = start_server(backend)
    op = server.client("operator")
    clock = op.clock("2026-10-15T10:00:00+09:00")  # never advanced: no timer fires meanwhile
    account = op.create("signup", clock=clock)["id"]
    invoice = op.create("invoice", {"account": account, "usage_month": "2026-10"})["id"]
    ledger = Ledger()

    for round_ in range(ROUNDS):
        target = ledger.count() + ACKS_BEFORE_KILL
        stream = start_stream(server, invoice, clock, ledger, round_)
        try:
            poll(lambda t=target: ledger.count() >= t, timeout=120, interval=0.01,
                 what=f"{ACKS_BEFORE_KILL} acknowledged events")
            server.kill()  # kill -9 of master and workers while requests are in flight
        finally:
            stream.end()
        assert len(ledger.cut) == 4 * (round_ + 1), "every client thread streams until the kill"
        server.start()  # same database, same port

    # every acknowledged event is there, and the applied ones add up
    rows = op.history(invoice)
    applied = [r["data"]["amount"] for r in rows if r["event"] == "add_usage" and r["outcome"] == "applied"]
    assert not Counter(ledger.usage) - Counter(applied), "an acknowledged add_usage was lost"
    assert len(applied) == len(set(applied)), "an add_usage was applied twice"
    after = op.instance(invoice)
    assert after["context"]["usage"] == sum(applied) >= sum(ledger.usage)
    assert after["version"] == 1 + len(applied)
    assert [t["name"] for t in after["timers"]] == ["invoice_issue"]
    assert op.notifications(invoice) == []
    for signup in ledger.emails:
        assert op.instance(signup)["state"] == "email_verification"
        assert [n["template"] for n in op.notifications(signup)] == ["email_verification"]

    check_every_instance(sql(server.database_url))
    print(f"acknowledged: {len(ledger.usage)} add_usage, {len(ledger.emails)} submit_email; "
          f"applied add_usage: {len(applied)}; streams cut by {Counter(ledger.cut)}")
    assert len(ledger.usage) >= ACKS_BEFORE_KILL // 2


def check_every_instance(engine: Any) -> None:
    """For every instance in the database: version, history, timers and outbox agree."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
        instances = conn.execute(
            text("SELECT id, workflow, state, version, history_seq FROM instances")).all()
        history = conn.execute(text("SELECT instance, seq, event, outcome FROM history")).all()
        timers = conn.execute(text("SELECT instance, name FROM timers")).all()
        outbox = conn.execute(text("SELECT instance, template FROM notifications")).all()
        conn.rollback()
    assert instances
    for row in instances:
        mine = [h for h in history if h.instance == row.id]
        seqs = sorted(h.seq for h in mine)
        assert seqs == list(range(1, len(mine) + 1)) and row.history_seq == len(mine), row
        assert row.version == sum(h.outcome == "applied" for h in mine), row
        names = {t.name for t in timers if t.instance == row.id}
        assert names == STATE_TIMERS.get((row.workflow, row.state), set()), (row, names)
        sent = [n.template for n in outbox if n.instance == row.id]
        emails = sum(h.event == "submit_email" and h.outcome == "applied" for h in mine)
        assert sent == ["email_verification"] * emails, (row, sent)
