"""The real outbox, mailed: accounts sign up and leave an October invoice unpaid on a test clock
through the app, and every email notification the workflows write (verification code, invoice
issued, overdue, suspended) is turned into a Delivery, sent by SmtpSender to a real SMTP server
process and read back: the templates proven against the payloads and contexts the core writes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from flask import Flask

from tests.helpers.app import dispose_app, make_app
from tests.helpers.client import Client
from tests.helpers.smtp_server import StartSmtp
from tollgate.service.delivery.channels import Delivery
from tollgate.service.delivery.email import SmtpSender

OCTOBER_15 = "2026-10-15T12:00:00+09:00"
DECEMBER_1 = "2026-12-01T06:00:00+09:00"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Client]:
    app: Flask = make_app(f"sqlite:///{tmp_path / 'mail.db'}")
    yield Client.wsgi(app.test_client(), role="admin")
    dispose_app(app)


def deliveries(api: Client, *instances: str) -> list[Delivery]:
    """The email notifications of `instances` as the relay would hand them to the sender."""
    found = []
    for instance in instances:
        current = api.instance(instance)
        account_id = current["context"].get("account")
        account = api.instance(account_id)["context"] if account_id else None
        for n, row in enumerate(api.notifications(instance)):
            if row["channel"] != "email":
                continue
            found.append(Delivery(
                id=len(found) + 1, stable_id=f"{instance}.{n}", instance=instance,
                workflow=current["workflow"], template=row["template"], channel="email",
                recipient=row["recipient"], payload=row["payload"], context=current["context"],
                account=account, created_at=datetime.now(UTC), attempt=1))
    return found


def text_of(message: EmailMessage) -> str:
    part = next(p for p in message.iter_parts() if p.get_content_type() == "text/plain")
    return str(part.get_content())  # type: ignore[attr-defined]


def unpaid_october(api: Client, *, country: str, card: bool) -> tuple[str, str]:
    clock = api.clock(OCTOBER_15)
    account = api.signup(clock=clock, country=country)
    if card:
        api.register_card(account)
    invoice = api.create("invoice", {"account": account, "usage_month": "2026-10"})["id"]
    api.fire(invoice, "add_usage", {"amount": 1_234_500})
    api.ok("POST", f"/clocks/{clock}/advance", json={"to": DECEMBER_1})
    assert api.instance(invoice)["state"] == "suspended"
    return account, invoice


def send_all(start_smtp: StartSmtp, sent: list[Delivery]) -> list[tuple[str, str]]:
    server = start_smtp()
    with SmtpSender.from_url(f"smtp://127.0.0.1:{server.port}", "NAVER Cloud Billing <billing@example.com>",
                             ) as sender:
        results = [sender.send(d) for d in sent]
    assert all(r.delivered for r in results), results
    return [(str(m["Subject"]), text_of(m)) for m in server.messages()]


def test_a_korean_autopay_account_gets_four_korean_notices(api: Client, start_smtp: StartSmtp) -> None:
    account, invoice = unpaid_october(api, country="KR", card=True)
    sent = deliveries(api, account, invoice)
    assert [d.template for d in sent] == ["email_verification", "invoice_issued", "invoice_overdue",
                                          "service_suspended"]
    mails = send_all(start_smtp, sent)
    (code_subject, code), (issued_subject, issued), (overdue_subject, overdue), (_, suspended) = mails
    assert code_subject == "[NAVER Cloud] 회원 가입 이메일 인증 코드 안내"
    assert f"인증 코드        {sent[0].payload['code']}" in code
    assert issued_subject == "[NAVER Cloud] 2026년 10월 이용분 청구서 발행 안내 (납부하실 금액 1,234,500원)"
    assert "자동 결제일: 2026-11-10 (화) ~ 2026-11-14 (토)" in issued
    assert "2026-11-03 (화) 14:00 KST부터" in issued
    assert overdue_subject == "[NAVER Cloud] 미납 안내: 2026년 10월 이용분 요금 1,234,500원"
    # an autopay payer's grace ends with the billing month: 00:00 on 1 December, read as 23:59 on the 30th
    assert "유예기한         2026-11-30 (월) 23:59 KST" in overdue and "[즉시납부하기]" in overdue
    assert "유예기한 2026-11-30 (월) 23:59 KST까지 납부되지 않아" in suspended


def test_an_account_abroad_paying_by_virtual_account_gets_english_notices_with_the_22_00_deadline(
        api: Client, start_smtp: StartSmtp) -> None:
    account, invoice = unpaid_october(api, country="US", card=False)
    assert api.instance(invoice)["context"]["payer"] == "virtual_account"
    mails = send_all(start_smtp, deliveries(api, account, invoice))
    subjects = [subject for subject, _ in mails]
    assert subjects == ["[NAVER Cloud] Your email verification code",
                        "[NAVER Cloud] Your invoice for October 2026 usage: ₩1,234,500 due",
                        "[NAVER Cloud] Payment overdue: ₩1,234,500 for October 2026 usage",
                        "[NAVER Cloud] Services suspended: ₩1,234,500 unpaid for October 2026 usage"]
    issued, overdue = mails[1][1], mails[2][1]
    assert "Pay by: 2026-11-14 (Sat) 23:59 KST" in issued
    assert "2026-11-30 (Mon) 22:00 KST" in issued
    assert "Grace deadline   2026-11-30 (Mon) 22:00 KST" in overdue and "virtual account" in overdue


