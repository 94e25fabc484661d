"""The delivery relay: webhooks per second through the relay vs a bare send loop, and a month of
invoices on a test clock delivered exactly once.

1. **Throughput.** N pending SMS notifications in a fresh database; one webhook receiver process
   (tests/helpers/receiver.py: HTTP/1.1 keep-alive, verifies every signature, logs every request).
   The baseline is a bare loop that signs and posts the same N bodies to the same receiver with
   the same `WebhookSender` (one kept-alive connection); then the relay delivers the N stored
   notifications (claim a batch, send, record each attempt). Both side by side in one run; the
   ratio is relay ÷ bare (1.0: the bookkeeping costs nothing next to the HTTP round trips).
2. **Email.** The same with N `invoice_issued` emails, rendered from the templates and sent by
   `SmtpSender` to a real SMTP server process (aiosmtpd, tests/helpers/smtp_server.py) that
   journals every message; each Message-ID is checked received once.
3. **A month.** bench/billing.py's month of N invoices (issue, autopay, gateway reports, overdue,
   grace, suspension) on a test clock, then the relay delivers every SMS and charge request to two
   receivers; the figure is the notices delivered, checked exactly once per Idempotency-Key at
   the receivers and `delivered` in the outbox (a duplicate or a loss raises).

Run `python -m bench.relay [--quick] [--n N] [--month N] [--database URL]`, or
`tollgate bench --only relay`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import Figure, print_table

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_bench_" + "b" * 24
QUICK = (2_000, 1_000)
FULL = (10_000, 10_000)
SMTP_N = 2_000  # emails for the SMTP figure (aiosmtpd takes ~100 a second here)


def _say(progress: Any, text: str) -> None:
    if progress:
        progress(text)


def _runtime(url: str) -> Any:
    from tollgate.service.application.runtime import Runtime
    from tollgate.service.storage.db import Database

    runtime = Runtime(Database(url))
    runtime.bootstrap(ROOT / "rules.yaml")
    return runtime


def seed_sms(runtime: Any, n: int) -> None:
    """`n` pending SMS notifications of one account, written straight into the tables (also the
    tests' seed)."""
    from sqlalchemy import text

    now = datetime(2026, 11, 3, tzinfo=UTC)
    with runtime.db.engine.begin() as conn:
        conn.execute(text("INSERT INTO instances (id, workflow, state, context, secrets, version, "
                          "history_seq, created_at, updated_at) "
                          "VALUES ('acct', 'signup', 'active', '{}', '{}', 1, 0, :t, :t)"), {"t": now})
        conn.execute(text("INSERT INTO notifications (instance, template, channel, recipient, payload, "
                          "created_at) VALUES ('acct', 'invoice_issued', 'sms', '+821000000000', "
                          "'{\"amount_due\": 134500, \"usage_month\": \"2026-10\"}', :t)"), [{"t": now}] * n)


def throughput(url: str, n: int, directory: Path, progress: Any = None) -> list[Figure]:
    from sqlalchemy import text

    from tests.helpers.receiver import Receiver
    from tollgate.service.application.relay import Relay
    from tollgate.service.delivery.channels import Delivery
    from tollgate.service.delivery.webhooks import WebhookSender

    runtime = _runtime(url)
    seed_sms(runtime, n)
    with Receiver(directory, SECRET, name="bare") as bare_receiver:
        sender = WebhookSender("sms", bare_receiver.url, SECRET)
        created = datetime(2026, 11, 3, tzinfo=UTC)
        deliveries = [Delivery(i, f"bare_{i}", "acct", "signup", "invoice_issued", "sms", "+821000000000",
                               {"amount_due": 134500, "usage_month": "2026-10"}, {}, None, created, 1)
                      for i in range(n)]
        start = time.perf_counter()
        ok = sum(sender.send(d).delivered for d in deliveries)
        bare = time.perf_counter() - start
        sender.close()
        assert ok == n, f"the bare loop delivered {ok} of {n}"
    _say(progress, f"bare loop: {n / bare:,.0f}/s")
    rates = {}
    for concurrency in (1, 8):
        with runtime.db.engine.begin() as conn:  # every notification pending again (a redelivery)
            conn.execute(text("UPDATE notifications SET delivery_state = 'pending', next_attempt_at = NULL, "
                              "claim = NULL, first_attempt_at = NULL"))
        with Receiver(directory, SECRET, name=f"relay{concurrency}") as receiver:
            relay = Relay(runtime.outbox, {"sms": WebhookSender("sms", receiver.url, SECRET)},
                          concurrency=concurrency)
            start = time.perf_counter()
            done = relay.run_until_idle()
            rates[concurrency] = n / (time.perf_counter() - start)
            relay.close()
            keys = receiver.delivered_keys()
        assert done.delivered == n and len(keys) == n and set(keys.values()) == {1}, (done, len(keys))
        _say(progress, f"relay, {concurrency} send(s) at once: {rates[concurrency]:,.0f}/s")
    backend = runtime.db.dialect.name
    runtime.close()
    note = "through the relay (claim, send, record each attempt) ÷ a bare WebhookSender loop, same receiver"
    return [Figure(f"relay.{backend}.webhooks_per_s.one_at_a_time.N={n}", rates[1], "notifications/s",
                   n / bare, note=note),
            Figure(f"relay.{backend}.webhooks_per_s.8_at_once.N={n}", rates[8], "notifications/s", n / bare,
                   note=note + " (TOLLGATE_RELAY_CONCURRENCY=8, the default)")]


_INVOICE = {"invoice": "inv_bench", "usage": 134500, "credit_applied": [], "amount_due": 134500,
            "usage_month": "2026-10", "payer": "autopay"}
_ACCOUNT = {"country": "KR", "email": "owner@example.co.kr", "member_type": "business"}


def _seed_email(runtime: Any, n: int) -> None:
    import json

    from sqlalchemy import text

    now = datetime(2026, 11, 3, tzinfo=UTC)
    with runtime.db.engine.begin() as conn:
        conn.execute(text("INSERT INTO instances (id, workflow, state, context, secrets, version, "
                          "history_seq, created_at, updated_at) "
                          "VALUES ('acct', 'signup', 'active', :c, '{}', 1, 0, :t, :t)"),
                     {"t": now, "c": json.dumps(_ACCOUNT)})
        conn.execute(text("INSERT INTO instances (id, workflow, state, context, secrets, version, "
                          "history_seq, account, created_at, updated_at) "
                          "VALUES ('inv_bench', 'invoice', 'issued', :c, '{}', 1, 0, 'acct', :t, :t)"),
                     {"t": now, "c": json.dumps({"account": "acct", "usage_month": "2026-10"})})
        conn.execute(text("INSERT INTO notifications (instance, template, channel, recipient, payload, "
                          "created_at) VALUES ('inv_bench', 'invoice_issued', 'email', "
                          "'owner@example.co.kr', :p, :t)"), [{"t": now, "p": json.dumps(_INVOICE)}] * n)


def smtp_throughput(url: str, n: int, directory: Path, progress: Any = None) -> list[Figure]:
    """Emails per second through the relay vs a bare SmtpSender loop, to one real SMTP server
    process (tests/helpers/smtp_server.py: aiosmtpd, writing every message to a journal)."""
    from sqlalchemy import text

    from tests.helpers.smtp_server import SmtpServer
    from tollgate.service.application.relay import Relay
    from tollgate.service.delivery.channels import Delivery
    from tollgate.service.delivery.email import SmtpSender

    sender_address = "NAVER Cloud Billing <billing@example.com>"
    runtime = _runtime(url)
    _seed_email(runtime, n)
    server = SmtpServer.start(directory / "smtp_bare")
    try:
        created = datetime(2026, 11, 3, tzinfo=UTC)
        context = {"account": "acct", "usage_month": "2026-10"}
        deliveries = [Delivery(i, f"bare_{i}", "inv_bench", "invoice", "invoice_issued", "email",
                               "owner@example.co.kr", _INVOICE, context, _ACCOUNT, created, 1)
                      for i in range(n)]
        sender = SmtpSender.from_url(f"smtp://127.0.0.1:{server.port}", sender_address)
        start = time.perf_counter()
        ok = sum(sender.send(d).delivered for d in deliveries)
        bare = time.perf_counter() - start
        sender.close()
        assert ok == n and len(server.records()) == n, f"the bare loop delivered {ok} of {n}"
    finally:
        server.stop()
    _say(progress, f"bare SMTP loop: {n / bare:,.0f}/s")
    rates = {}
    for concurrency in (1, 8):
        with runtime.db.engine.begin() as conn:  # every notification pending again (a redelivery)
            conn.execute(text("UPDATE notifications SET delivery_state = 'pending', next_attempt_at = NULL, "
                              "claim = NULL, first_attempt_at = NULL"))
        server = SmtpServer.start(directory / f"smtp_relay{concurrency}")
        try:
            relay = Relay(runtime.outbox, {"email": SmtpSender.from_url(f"smtp://127.0.0.1:{server.port}",
                                                                        sender_address)},
                          concurrency=concurrency)
            start = time.perf_counter()
            done = relay.run_until_idle()
            rates[concurrency] = n / (time.perf_counter() - start)
            relay.close()
            ids = Counter(r["data"].split("Message-ID: ", 1)[1].split("\n", 1)[0].strip()
                          for r in server.records())
        finally:
            server.stop()
        assert done.delivered == n and len(ids) == n and set(ids.values()) == {1}, (done, len(ids))
        _say(progress, f"relay over SMTP, {concurrency} send(s) at once: {rates[concurrency]:,.0f}/s")
    backend = runtime.db.dialect.name
    runtime.close()
    note = ("through the relay (claim, render, send, record) ÷ a bare SmtpSender loop (render, send), "
            "same kind of SMTP server")
    return [Figure(f"relay.{backend}.emails_per_s.one_at_a_time.N={n}", rates[1], "notifications/s",
                   n / bare, note=note + "; the sender shares one SMTP connection"),
            Figure(f"relay.{backend}.emails_per_s.8_at_once.N={n}", rates[8], "notifications/s", n / bare,
                   note=note + " (TOLLGATE_RELAY_CONCURRENCY=8; one SMTP connection, sends serialised)")]


def month(url: str, n: int, directory: Path, progress: Any = None) -> list[Figure]:
    from sqlalchemy import text

    from bench.billing import run_month, seed_month
    from tests.helpers.receiver import Receiver
    from tests.helpers.smtp_server import SmtpServer
    from tollgate.service.application.relay import Relay
    from tollgate.service.delivery.email import SmtpSender
    from tollgate.service.delivery.webhooks import WebhookSender

    seed_month(url, n)
    _say(progress, f"month N={n:,}: seeded")
    result = run_month(url, n, workers=1)
    _say(progress, f"month N={n:,}: {result['transitions']:,} transitions in {result['seconds']:.1f} s")
    runtime = _runtime(url)
    smtp = SmtpServer.start(directory / "month_smtp")
    with Receiver(directory, SECRET, name="month_sms") as sms, \
            Receiver(directory, SECRET, name="month_gateway", fail_first=1) as gateway:
        senders = {"sms": WebhookSender("sms", sms.url, SECRET),
                   "gateway": WebhookSender("gateway", gateway.url, SECRET),
                   "email": SmtpSender.from_url(f"smtp://127.0.0.1:{smtp.port}",
                                                "NAVER Cloud Billing <billing@example.com>")}
        relay = Relay(runtime.outbox, senders, batch=200)
        start = time.perf_counter()
        delivered = 0
        while True:  # the gateway fails every first attempt: retries fall due 10 s later
            delivered += relay.run_until_idle().delivered
            left = runtime.outbox.backlog()
            with runtime.db.engine.connect() as conn:
                waiting = conn.execute(text(
                    "SELECT count(*) FROM notifications WHERE delivery_state <> 'delivered'")).scalar_one()
            if not waiting:
                break
            _say(progress, f"month N={n:,}: {delivered:,} delivered, {waiting:,} waiting for a retry "
                           f"({left})")
            time.sleep(2)
        seconds = time.perf_counter() - start
        relay.close()
        got = sms.delivered_keys() + gateway.delivered_keys()
        requests = sms.requests() + gateway.requests()
    smtp.stop()
    mails = Counter(r["data"].split("Message-ID: ", 1)[1].split("\n", 1)[0].strip() for r in smtp.records())
    got.update(mails)
    with runtime.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT channel, count(*) FROM notifications GROUP BY channel")).all()
        wanted = {channel: int(count) for channel, count in rows}
    runtime.close()
    expected = sum(wanted.values())
    twice = sum(1 for count in got.values() if count > 1)
    assert len(got) == expected and twice == 0, f"{len(got)} of {expected} delivered, {twice} more than once"
    assert all(r["verified"] for r in requests)
    _say(progress, f"month N={n:,}: {expected:,} notices delivered exactly once in {seconds:.1f} s "
                   f"({dict(Counter(r['status'] for r in requests))} answers)")
    return [Figure(f"relay.month.notices_exactly_once.N={n}", float(len(got)), "notices", float(expected),
                   goal=1.0, direction=">=",
                   note=f"sms {wanted.get('sms', 0):,} + charge_request {wanted.get('gateway', 0):,} + "
                        f"email {wanted.get('email', 0):,} (a real SMTP server); "
                        f"0 duplicates; {seconds:.0f} s incl. one retry of every charge request")]


def relay_figures(quick: bool, progress: Any = None, *, n: int | None = None, month_n: int | None = None,
                  url: str | None = None) -> list[Figure]:
    sizes = QUICK if quick else FULL
    n, month_n = n or sizes[0], month_n or sizes[1]
    with tempfile.TemporaryDirectory(prefix="tollgate-relay-") as tmp:
        directory = Path(tmp)
        figures = throughput(url or f"sqlite:///{directory / 'throughput.db'}", n, directory, progress)
        figures += smtp_throughput(url or f"sqlite:///{directory / 'smtp.db'}", min(n, SMTP_N), directory,
                                   progress) if url is None else []
        if url is None:
            figures += month(f"sqlite:///{directory / 'month.db'}", month_n, directory, progress)
        return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, help="notifications for the throughput figure")
    parser.add_argument("--month", type=int, help="invoices of the month")
    parser.add_argument("--database", help="an empty PostgreSQL database for the throughput figure only")
    args = parser.parse_args(argv)
    figures = relay_figures(args.quick, lambda line: print(line, file=sys.stderr, flush=True),
                            n=args.n, month_n=args.month, url=args.database)
    print_table(figures)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
