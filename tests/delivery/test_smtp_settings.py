"""`TOLLGATE_SMTP_URL` parsed (schemes, default ports, starttls, timeout, credentials) and refused
with a sentence that shows the URL redacted; the settings block that reads it."""

from __future__ import annotations

import pytest

from tollgate.service.delivery.email import SmtpSender, SmtpSettings, redact
from tollgate.service.settings import Settings

SECRET = "hunter2-secret"


@pytest.mark.parametrize(("url", "host", "port", "security", "timeout"), [
    ("smtp://mail.example.com", "mail.example.com", 25, "none", 10.0),
    ("smtp://mail.example.com?starttls=1", "mail.example.com", 587, "starttls", 10.0),
    ("smtp://mail.example.com:2525?starttls=true&timeout=2.5", "mail.example.com", 2525, "starttls", 2.5),
    ("smtp://mail.example.com:25?starttls=0", "mail.example.com", 25, "none", 10.0),
    ("smtps://mail.example.com", "mail.example.com", 465, "tls", 10.0),
    ("smtps://127.0.0.1:4650?timeout=30", "127.0.0.1", 4650, "tls", 30.0),
])
def test_a_url_gives_host_port_security_and_timeout(
        url: str, host: str, port: int, security: str, timeout: float) -> None:
    settings = SmtpSettings.parse(url)
    got = (settings.host, settings.port, settings.security, settings.timeout)
    assert got == (host, port, security, timeout)
    assert settings.username is None and settings.password is None


def test_credentials_are_percent_decoded() -> None:
    settings = SmtpSettings.parse("smtp://billing%40example.com:p%40ss%3Aw%2Frd@mail.example.com:587?starttls=1")
    assert (settings.username, settings.password) == ("billing@example.com", "p@ss:w/rd")


@pytest.mark.parametrize(("url", "message"), [
    (f"http://user:{SECRET}@mail.example.com", "must start with smtp:// or smtps://"),
    (f"smtp://user:{SECRET}@", "names no host"),
    (f"smtp://user:{SECRET}@mail.example.com:99999", "is not a valid URL"),
    (f"smtp://user:{SECRET}@mail.example.com?tls=1", "unknown option(s) tls"),
    (f"smtp://user:{SECRET}@mail.example.com?starttls=maybe", "starttls=maybe"),
    (f"smtps://user:{SECRET}@mail.example.com?starttls=1", "STARTTLS on smtps://"),
    (f"smtp://user:{SECRET}@mail.example.com?timeout=0", "timeout=0"),
    (f"smtp://user:{SECRET}@mail.example.com?timeout=soon", "timeout=soon"),
    (f"smtp://user:{SECRET}%CE%A9@mail.example.com", "not ASCII"),
])
def test_a_bad_url_is_refused_with_the_password_redacted(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="The SMTP URL ") as refused:
        SmtpSettings.parse(url)
    assert message in str(refused.value)
    assert SECRET not in str(refused.value) and "user:***@" in str(refused.value)


@pytest.mark.parametrize(("url", "shown"), [
    (f"smtp://user:{SECRET}@mail.example.com:587?starttls=1", "smtp://user:***@mail.example.com:587?starttls=1"),
    ("smtp://user@mail.example.com", "smtp://user@mail.example.com"),
    ("smtp://mail.example.com", "smtp://mail.example.com"),
    (f"smtps://a:{SECRET}@b:{SECRET}@mail.example.com", "smtps://a:***@mail.example.com"),
])
def test_redact_hides_only_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_sender_without_an_address_is_refused() -> None:
    with pytest.raises(ValueError, match="has no email address"):
        SmtpSender.from_url("smtp://mail.example.com", "NAVER Cloud Billing")


def test_neither_the_sender_nor_its_settings_show_the_password() -> None:
    sender = SmtpSender.from_url(f"smtp://billing:{SECRET}@mail.example.com?starttls=1",
                                 "Billing <billing@example.com>")
    assert SECRET not in repr(sender) and SECRET not in repr(sender.settings)
    assert "billing@mail.example.com:587" in repr(sender)


# ── the settings block ───────────────────────────────────────────────────────────────────────

def test_settings_read_the_smtp_url_sender_and_templates_dir() -> None:
    settings = Settings.from_environment({
        "TOLLGATE_SMTP_URL": f"smtp://billing:{SECRET}@mail.example.com?starttls=1",
        "TOLLGATE_SMTP_FROM": "NAVER Cloud Billing <billing@example.com>",
        "TOLLGATE_TEMPLATES_DIR": "/etc/tollgate/templates"})
    assert settings.smtp_url == f"smtp://billing:{SECRET}@mail.example.com?starttls=1"
    assert settings.smtp_from == "NAVER Cloud Billing <billing@example.com>"
    assert settings.templates_dir == "/etc/tollgate/templates"
    assert SECRET not in repr(settings)


def test_no_smtp_url_means_no_email() -> None:
    settings = Settings.from_environment({"TOLLGATE_SMTP_URL": ""})
    assert settings.smtp_url is None and settings.smtp_from is None


def test_settings_refuse_a_bad_smtp_url_without_showing_the_password() -> None:
    with pytest.raises(ValueError, match=r"smtp://billing:\*\*\*@mail.example.com") as refused:
        Settings.from_environment({"TOLLGATE_SMTP_URL": f"smtp://billing:{SECRET}@mail.example.com?tls=1",
                                   "TOLLGATE_SMTP_FROM": "billing@example.com"})
    assert SECRET not in str(refused.value)


def test_settings_refuse_an_smtp_url_without_a_sender() -> None:
    with pytest.raises(ValueError, match="TOLLGATE_SMTP_FROM must name the sender's address"):
        Settings.from_environment({"TOLLGATE_SMTP_URL": "smtp://mail.example.com"})
