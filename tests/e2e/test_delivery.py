"""Delivery end to end: real `tollgate serve` and `tollgate worker` processes relay the outbox to
real receiver processes (tests/helpers/receiver.py) that verify every signature.

- a month of invoices on a test clock: every SMS and charge request reaches its receiver once;
- two workers on PostgreSQL drain one outbox: no notification is sent twice, none twice at once;
- a worker killed with -9 in the middle of a batch loses nothing: another one sends the rest.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from bench.billing import CHARGED_AT, MONTH_END, seed_month
from bench.relay import seed_sms
from tests.e2e.conftest import database_url
from tests.helpers.paths import ROOT, RULES_PATH
from tests.helpers.postgres import BACKENDS
from tests.helpers.receiver import Receiver
from tests.helpers.server import TollgateServer, poll
from tollgate.service.storage.db import Database

pytestmark = pytest.mark.e2e

SECRET = "whsec_e2e_" + "k" * 24
WAIT = 180.0


def _tollgate() -> str:
    return str(Path(sys.executable).with_name("tollgate"))


def _webhook_env(sms: Receiver, gateway: Receiver | None = None, **more: str) -> dict[str, str]:
    env = {"TOLLGATE_WEBHOOK_SMS_URL": sms.url, "TOLLGATE_WEBHOOK_SECRET": SECRET,
           "TOLLGATE_RELAY_INTERVAL_SECONDS": "0.2", **more}
    if gateway is not None:
        env["TOLLGATE_WEBHOOK_GATEWAY_URL"] = gateway.url
    return env


def _states(url: str, channel: str) -> Counter[str]:
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT delivery_state, count(*) FROM notifications WHERE channel = :c "
                                     "GROUP BY delivery_state"), {"c": channel}).all()
    finally:
        db.dispose()
    return Counter({state: count for state, count in rows})


def _seed_sms(url: str, n: int) -> None:
    """`n` pending SMS notifications of one instance, written straight into the tables."""
    from tollgate.service.application.runtime import Runtime

    runtime = Runtime(Database(url))
    runtime.bootstrap(RULES_PATH)
    seed_sms(runtime, n)
    runtime.close()


def _worker(url: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    environment.update(env)
    with open(log, "ab") as out:
        return subprocess.Popen([_tollgate(), "worker", "--database", url, "--rules", str(RULES_PATH),
                                 "--interval", "0.2"], cwd=ROOT, env=environment, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_month_of_invoices_on_a_test_clock_delivers_every_notice_once(backend: str, tmp_path: Path) -> None:
    n = 40
    with database_url(backend, tmp_path) as url, Receiver(tmp_path, SECRET, name="sms") as sms, \
            Receiver(tmp_path, SECRET, name="gateway", fail_first=1) as gateway:
        seed_month(url, n)
        server = TollgateServer(url, tmp_path, env=_webhook_env(sms, gateway,
                                                                TOLLGATE_RELAY_RETRY_BASE_SECONDS="0.5"))
        server.start()
        try:
            api = server.client("operator")
            for moment in (CHARGED_AT, MONTH_END):
                api.ok("POST", "/clocks/billing/advance", json={"to": moment.isoformat()})

            def settled() -> bool:
                return all(set(_states(url, c)) == {"delivered"} for c in ("sms", "gateway"))

            poll(settled, timeout=WAIT, what="every SMS and charge request delivered")
        finally:
            server.stop()
        print(server.output()[-2000:])
        want = {c: sum(_states(url, c).values()) for c in ("sms", "gateway")}
        got_sms, got_gateway = sms.delivered_keys(), gateway.delivered_keys()
        requests = sms.requests() + gateway.requests()
    assert want["sms"] == n  # one invoice_issued SMS per invoice
    assert want["gateway"] > 0
    assert len(got_sms) == want["sms"] and set(got_sms.values()) == {1}
    assert len(got_gateway) == want["gateway"] and set(got_gateway.values()) == {1}
    assert all(r["verified"] for r in requests)
    bodies = [r["body"] for r in gateway.requests() if r["status"] == 202]
    assert {b["template"] for b in bodies} == {"charge_request"}
    assert {b["template"] for b in (r["body"] for r in sms.requests())} == {"invoice_issued"}


@pytest.mark.postgres
def test_two_workers_on_postgresql_never_send_one_notification_twice(tmp_path: Path) -> None:
    n = 300
    with database_url("postgresql", tmp_path) as url, Receiver(tmp_path, SECRET, name="sms",
                                                               delay=0.01) as sms:
        _seed_sms(url, n)
        env = _webhook_env(sms, TOLLGATE_RELAY_BATCH="10")
        workers = [_worker(url, env, tmp_path / f"worker{i}.log") for i in range(2)]
        try:
            poll(lambda: _states(url, "sms") == Counter({"delivered": n}), timeout=WAIT,
                 what="every notification delivered")
        finally:
            for worker in workers:
                _stop(worker)
        requests = sms.requests()
    keys = Counter(r["key"] for r in requests)
    assert len(keys) == n and set(keys.values()) == {1}  # no one sent twice, none lost
    assert not any(r["concurrent"] for r in requests)
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert all("Traceback" not in log for log in logs), logs


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_worker_killed_mid_batch_loses_no_notification(backend: str, tmp_path: Path) -> None:
    """One send at a time to a slow receiver, so a batch of 20 lasts ~4 s and the kill lands in it."""
    n = 60
    with database_url(backend, tmp_path) as url, Receiver(tmp_path, SECRET, name="sms", delay=0.2) as sms:
        _seed_sms(url, n)
        env = _webhook_env(sms, TOLLGATE_RELAY_BATCH="20", TOLLGATE_RELAY_CONCURRENCY="1",
                           TOLLGATE_WEBHOOK_TIMEOUT_SECONDS="0.5")
        first = _worker(url, env, tmp_path / "first.log")
        try:
            poll(lambda: len(sms.requests()) >= 3, timeout=WAIT, what="the first worker sending")
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)
            claimed = _claimed(url)  # what the killed worker took and never recorded
            assert claimed, "the kill landed between two batches"
            second = _worker(url, env, tmp_path / "second.log")
            try:
                poll(lambda: _states(url, "sms") == Counter({"delivered": n}), timeout=WAIT,
                     what="every notification delivered after the crash")
            finally:
                _stop(second)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        keys = Counter(r["key"] for r in sms.requests())
    assert len(keys) == n  # nothing lost
    twice = {key for key, count in keys.items() if count > 1}
    assert twice <= claimed  # only the killed worker's unrecorded batch is sent again


def _claimed(url: str) -> set[str]:
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT id FROM notifications WHERE claim IS NOT NULL")).all()
    finally:
        db.dispose()
    return {f"ntf_{row.id}" for row in rows}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_month_of_invoices_mails_every_email_notice_once_over_smtp(backend: str, tmp_path: Path) -> None:
    """`tollgate serve` with TOLLGATE_SMTP_URL: the relay mails the month's email notices through a
    real SMTP server process (aiosmtpd), each once, each with the Message-ID of its stable id."""
    from tests.helpers.smtp_server import SmtpServer

    n = 12
    smtp = SmtpServer.start(tmp_path / "smtp")
    try:
        with database_url(backend, tmp_path) as url:
            seed_month(url, n)
            server = TollgateServer(url, tmp_path, env={
                "TOLLGATE_SMTP_URL": f"smtp://127.0.0.1:{smtp.port}?timeout=20",
                "TOLLGATE_SMTP_FROM": "NAVER Cloud Billing <billing@example.com>",
                "TOLLGATE_RELAY_INTERVAL_SECONDS": "0.2"})
            server.start()
            try:
                api = server.client("operator")
                for moment in (CHARGED_AT, MONTH_END):
                    api.ok("POST", "/clocks/billing/advance", json={"to": moment.isoformat()})
                poll(lambda: set(_states(url, "email")) == {"delivered"}, timeout=WAIT,
                     what="every email notice delivered")
                want = sum(_states(url, "email").values())
            finally:
                server.stop()
        messages = smtp.messages()
    finally:
        smtp.stop()
    assert want >= n  # at least one invoice_issued mail per invoice
    ids = Counter(str(m["Message-ID"]) for m in messages)
    assert len(ids) == want and set(ids.values()) == {1}
    assert all(m["From"] == "NAVER Cloud Billing <billing@example.com>" for m in messages)
    issued = [m for m in messages if "2026" in str(m["Subject"])]
    assert issued, [str(m["Subject"]) for m in messages]
    kinds = {part.get_content_type() for m in messages for part in m.iter_parts()}
    assert kinds == {"text/plain", "text/html"}


def test_a_worker_serves_its_own_metrics_behind_the_tokens(tmp_path: Path) -> None:
    """`tollgate worker --metrics-port`: the deliveries it committed are on its own /metrics, for a
    role that may read metrics only (401 without a token, 403 for the gateway role)."""
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    n = 25
    tokens = "monitor=mon-token-e2e,gateway=gw-token-e2e"
    log = tmp_path / "worker.log"

    def scrape(token: str | None) -> tuple[int, str]:
        port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log.read_text())
        assert port, log.read_text()[-2000:]
        request = urllib.request.Request(f"http://127.0.0.1:{port.group(1)}/metrics")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""

    with database_url("sqlite", tmp_path) as url, Receiver(tmp_path, SECRET, name="sms") as sms:
        _seed_sms(url, n)
        env = _webhook_env(sms, TOLLGATE_TOKENS=tokens, TOLLGATE_WORKER_METRICS_PORT="0")  # any free port
        worker = _worker(url, env, log)
        try:
            poll(lambda: _states(url, "sms") == Counter({"delivered": n}), timeout=WAIT,
                 what="every notification delivered")
            poll(lambda: scrape("mon-token-e2e")[0] == 200, timeout=WAIT, what="the worker's /metrics")
            status, text_ = scrape("mon-token-e2e")
            assert status == 200
            refused = scrape(None)[0], scrape("gw-token-e2e")[0], scrape("not-a-token")[0]
        finally:
            _stop(worker)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text_) for s in family.samples}
    assert samples[("tollgate_delivery_attempts_total", (("channel", "sms"), ("result", "delivered")))] == n
    assert refused == (401, 403, 401)


def test_a_worker_refuses_a_metrics_port_without_tokens(tmp_path: Path) -> None:
    from tests.helpers.server import free_port

    with database_url("sqlite", tmp_path) as url:
        _seed_sms(url, 1)
        worker = _worker(url, {"TOLLGATE_WORKER_METRICS_PORT": str(free_port())}, tmp_path / "worker.log")
        assert worker.wait(WAIT) == 2
    assert "needs TOLLGATE_TOKENS" in (tmp_path / "worker.log").read_text()
