"""SmtpSender end to end against a real SMTP server process (aiosmtpd, tests/helpers/smtp_server.py):
the received messages parsed with the standard library (headers, UTF-8 subject, text and HTML
parts, amounts and dates), STARTTLS, implicit TLS and AUTH, refusals with their status, a server
that is down, connection reuse and reconnection, and a password that never shows."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.helpers.smtp_server import SmtpServer, StartSmtp
from tollgate.service.delivery.email import SmtpSender
from tollgate.service.delivery.templates import SAMPLE_PAYLOAD, Templates, sample_delivery

SENDER = "NAVER Cloud 빌링 <billing@example.com>"
SENT_AT = datetime(2026, 11, 3, 0, 0, 5, tzinfo=UTC)
PASSWORD = "p@ss:w0rd/%"  # percent-encoded in the URL
PASSWORD_IN_URL = "p%40ss%3Aw0rd%2F%25"


def sender_for(url: str, **options: object) -> SmtpSender:
    return SmtpSender.from_url(url, SENDER, clock=lambda: SENT_AT, **options)  # type: ignore[arg-type]


def trusting(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def parts(message: EmailMessage) -> dict[str, str]:
    """The message's leaf parts by content type, decoded."""
    return {part.get_content_type(): part.get_content() for part in message.iter_parts()}  # type: ignore[misc]


# ── what arrives ─────────────────────────────────────────────────────────────────────────────

def test_an_invoice_notice_arrives_with_headers_utf8_subject_and_both_parts(start_smtp: StartSmtp) -> None:
    server = start_smtp()
    with sender_for(f"smtp://127.0.0.1:{server.port}") as sender:
        result = sender.send(sample_delivery("invoice_issued", stable_id="ntf_0001"))
    assert result.delivered and result.status == "250", result
    [record] = server.records()
    assert record["mail_from"] == "billing@example.com"
    assert record["rcpt_tos"] == ["customer@example.com"]
    raw = record["data"]
    assert "=?utf-8?" in raw  # the subject travels RFC 2047-encoded
    [message] = server.messages()
    assert message["From"] == SENDER
    assert message["To"] == "customer@example.com"
    assert message["Subject"] == ("[NAVER Cloud] 2026년 10월 이용분 청구서 발행 안내 "
                                  "(납부하실 금액 1,234,500원)")
    assert message["Message-ID"] == "<ntf_0001@example.com>"
    assert parsedate_to_datetime(message["Date"]) == SENT_AT
    assert message["Content-Language"] == "ko"
    assert message.get_content_type() == "multipart/alternative"
    body = parts(message)
    assert list(body) == ["text/plain", "text/html"]
    assert all(part.get_content_charset() == "utf-8" for part in message.iter_parts())
    for text in ("1,234,500원", "2026년 10월 이용분", "2026-11-10 (화) ~ 2026-11-14 (토)",
                 "2026-11-03 (화) 14:00 KST", "2026-11-30 (월) 23:59 KST"):
        assert text in body["text/plain"] and text in body["text/html"], text


def test_an_english_notice_for_an_account_outside_korea(start_smtp: StartSmtp) -> None:
    server = start_smtp()
    delivery = sample_delivery("invoice_overdue", account={"country": "US", "name": "Jane Doe"},
                               recipient="jane@example.com")
    with sender_for(f"smtp://127.0.0.1:{server.port}") as sender:
        assert sender.send(delivery).delivered
    [message] = server.messages()
    assert message["Subject"] == "[NAVER Cloud] Payment overdue: ₩1,234,500 for October 2026 usage"
    assert message["Content-Language"] == "en"
    text = parts(message)["text/plain"]
    assert "Dear Jane Doe," in text and "Grace deadline   2026-11-30 (Mon) 23:59 KST" in text


def test_a_resend_carries_the_same_message_id(start_smtp: StartSmtp) -> None:
    server = start_smtp()
    with sender_for(f"smtp://127.0.0.1:{server.port}") as sender:
        for attempt in (1, 2):
            delivery = sample_delivery("service_suspended", stable_id="ntf_42", attempt=attempt)
            assert sender.send(delivery).delivered
    assert [m["Message-ID"] for m in server.messages()] == ["<ntf_42@example.com>"] * 2


# ── TLS and AUTH ─────────────────────────────────────────────────────────────────────────────

def test_starttls_and_auth_with_a_password_that_needs_percent_encoding(
        start_smtp: StartSmtp, certificate: tuple[Path, Path]) -> None:
    server = start_smtp(starttls=certificate, auth=f"billing:{PASSWORD}")
    url = f"smtp://billing:{PASSWORD_IN_URL}@127.0.0.1:{server.port}?starttls=1&timeout=20"
    with sender_for(url, ssl_context=trusting(certificate)) as sender:
        assert sender.send(sample_delivery("invoice_issued")).delivered
    [record] = server.records()
    assert record["tls"] is True and record["login"] == "billing"


def test_implicit_tls_with_smtps(start_smtp: StartSmtp, certificate: tuple[Path, Path]) -> None:
    server = start_smtp(implicit_tls=certificate)
    with sender_for(f"smtps://127.0.0.1:{server.port}", ssl_context=trusting(certificate)) as sender:
        assert sender.send(sample_delivery("email_verification")).delivered
    assert server.records()[0]["tls"] is True


def test_a_certificate_that_is_not_trusted_fails_without_an_exception(
        start_smtp: StartSmtp, certificate: tuple[Path, Path]) -> None:
    server = start_smtp(starttls=certificate)
    with sender_for(f"smtp://127.0.0.1:{server.port}?starttls=1") as sender:  # the system's CAs
        result = sender.send(sample_delivery("invoice_issued"))
    assert not result.delivered and result.status is None
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail
    assert server.records() == []


def test_a_server_requiring_starttls_refuses_a_plain_client(
        start_smtp: StartSmtp, certificate: tuple[Path, Path]) -> None:
    server = start_smtp(starttls=certificate)
    with sender_for(f"smtp://127.0.0.1:{server.port}") as sender:
        result = sender.send(sample_delivery("invoice_issued"))
    assert not result.delivered and result.status == "530", result
    assert server.records() == []


def test_a_wrong_password_is_a_535_and_the_password_shows_nowhere(
        start_smtp: StartSmtp, certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    server = start_smtp(starttls=certificate, auth="billing:right")
    url = f"smtp://billing:{PASSWORD_IN_URL}@127.0.0.1:{server.port}?starttls=1"
    caplog.set_level(logging.DEBUG)
    with sender_for(url, ssl_context=trusting(certificate)) as sender:
        result = sender.send(sample_delivery("invoice_issued"))
        shown = repr(sender)
    assert not result.delivered and result.status == "535"
    assert "refused the login as billing with 535 (permanent)" in result.detail
    for text in (result.detail, shown, caplog.text):
        assert PASSWORD not in text and PASSWORD_IN_URL not in text
    assert "535" in caplog.text  # the failure is logged, the password is not


# ── refusals and failures ────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize(("recipient", "status", "kind"), [
    ("rcpt-451@example.com", "451", "temporary"),
    ("rcpt-550@example.com", "550", "permanent"),
    ("data-451@example.com", "451", "temporary"),
    ("data-554@example.com", "554", "permanent"),
])
def test_a_refusal_is_not_delivered_with_its_status_and_the_connection_serves_on(
        start_smtp: StartSmtp, recipient: str, status: str, kind: str) -> None:
    server = start_smtp()
    with sender_for(f"smtp://127.0.0.1:{server.port}") as sender:
        refused = sender.send(sample_delivery("invoice_issued", recipient=recipient))
        after = sender.send(sample_delivery("invoice_issued"))
    assert not refused.delivered and refused.status == status
    assert f"with {status} ({kind})" in refused.detail and recipient in refused.detail
    assert after.delivered
    assert [r["rcpt_tos"] for r in server.records()] == [["customer@example.com"]]


def test_a_server_that_is_down_gives_a_failed_result_not_an_exception() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with sender_for(f"smtp://127.0.0.1:{port}?timeout=5") as sender:
        result = sender.send(sample_delivery("invoice_issued"))
    assert not result.delivered and result.status is None
    assert f"127.0.0.1:{port} failed (ConnectionRefusedError" in result.detail


def test_a_server_that_went_away_gives_a_failed_result(start_smtp: StartSmtp) -> None:
    server = start_smtp()
    with sender_for(f"smtp://127.0.0.1:{server.port}?timeout=5") as sender:
        assert sender.send(sample_delivery("invoice_issued")).delivered
        server.stop()
        result = sender.send(sample_delivery("invoice_issued"))
    assert not result.delivered and result.status is None


def test_one_connection_serves_many_sends(start_smtp: StartSmtp) -> None:
    server = start_smtp()
    with sender_for(f"smtp://127.0.0.1:{server.port}") as sender:
        for n in range(5):
            assert sender.send(sample_delivery("invoice_issued", stable_id=f"ntf_{n}")).delivered
    peers = {tuple(r["peer"]) for r in server.records()}
    assert len(server.records()) == 5 and len(peers) == 1


def test_a_connection_the_server_closed_while_idle_is_reopened(start_smtp: StartSmtp) -> None:
    server = start_smtp(idle_timeout=0.3)
    with sender_for(f"smtp://127.0.0.1:{server.port}") as sender:
        assert sender.send(sample_delivery("invoice_issued", stable_id="ntf_a")).delivered
        time.sleep(1.0)  # the server hangs up on the idle connection
        assert sender.send(sample_delivery("invoice_issued", stable_id="ntf_b")).delivered
    records = server.records()
    assert len(records) == 2 and records[0]["peer"] != records[1]["peer"]


def test_threads_share_one_sender_safely(start_smtp: StartSmtp) -> None:
    server = start_smtp()
    results = []
    with sender_for(f"smtp://127.0.0.1:{server.port}") as sender:
        def send_some(first: int) -> None:
            results.extend(sender.send(sample_delivery("invoice_issued", stable_id=f"ntf_{first + n}"))
                           for n in range(5))

        threads = [threading.Thread(target=send_some, args=(10 * t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == 20 and all(r.delivered for r in results)
    ids = sorted(m["Message-ID"] for m in server.messages())
    assert ids == sorted(f"<ntf_{10 * t + n}@example.com>" for t in range(4) for n in range(5))


# ── nothing to send: no connection at all ────────────────────────────────────────────────────

@pytest.mark.parametrize(("delivery", "why"), [
    (sample_delivery("charge_request"), "no email template 'charge_request'"),
    (sample_delivery("invoice_issued", recipient="acct_0001"), "'acct_0001' is not an email address"),
    (sample_delivery("invoice_issued", recipient="a@example.com\r\nBcc: evil@example.com"),
     "is not an email address"),
    (sample_delivery("invoice_issued", payload={**SAMPLE_PAYLOAD, "amount_due": "lots"}), "ValueError"),
])
def test_a_mail_that_cannot_be_built_is_not_delivered_and_nothing_is_sent(
        start_smtp: StartSmtp, delivery: object, why: str) -> None:
    server: SmtpServer = start_smtp()
    with sender_for(f"smtp://127.0.0.1:{server.port}") as sender:
        result = sender.send(delivery)  # type: ignore[arg-type]
        assert sender._connection is None
    assert not result.delivered and result.status is None and why in result.detail
    assert server.records() == []


# ── the subject on the wire ──────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("subject", [
    "[NAVER Cloud] 회원 가입 이메일 인증 코드 안내",
    "[NAVER Cloud] 서비스 이용 중지 안내: 2026년 10월 이용분 요금 미납 1,234,500원 " * 3,
    "가 " * 80 + "끝",
    "Payment overdue: ₩1,234,500 for October 2026 usage",
    "A plain ASCII subject stays as it is",
])
def test_a_subject_survives_the_wire_with_every_space_and_short_encoded_words(
        tmp_path: Path, subject: str) -> None:
    """Regression: EmailMessage's default folding dropped the space between two encoded words
    ("인증 코드" arrived as "인증코드")."""
    folder = tmp_path / "email"
    folder.mkdir()
    (folder / "invoice_issued.ko.subject.j2").write_text(subject, encoding="utf-8")
    sender = SmtpSender.from_url("smtp://127.0.0.1:1", SENDER, templates=Templates(tmp_path))
    raw = sender.build(sample_delivery("invoice_issued")).as_bytes()
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert parsed["Subject"] == " ".join(subject.split())
    assert parsed["From"] == SENDER
    words = re.findall(rb"=\?utf-8\?[bq]\?[^?]*\?=", raw)
    assert all(len(word) <= 75 for word in words), words
    if subject.isascii():
        assert f"Subject: {subject}".encode() in raw
    else:
        assert b"Subject: =?utf-8?" in raw
