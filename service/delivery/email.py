"""Email over SMTP: one rendered notice per delivery, through one reused connection.

`SmtpSender.from_url("smtp://user:pass@host:587?starttls=1", "Billing <billing@example.com>")`;
`smtps://` is implicit TLS (port 465 by default); `?timeout=` seconds (default 10). The password
never appears in a result, an exception or a log line: `redact(url)` is the only way the URL is
shown.

What a result means (the relay decides what to do with it, see README "Delivery: email"):
  delivered=True,  status "250"         the server accepted the message for the recipient
  delivered=False, status "4xx"         a temporary refusal (greylisting, mailbox busy): retry
  delivered=False, status "5xx"         a permanent refusal (unknown mailbox, policy): reported as
                                        not delivered with the status like any other failure, so
                                        the relay's retry window runs out and marks it dead; the
                                        status and detail say why for the operator
  delivered=False, status None          no answer (connection refused, timeout, TLS failure) or
                                        nothing to send (no template, not an email address)
A failure never raises: every SMTP or network error becomes a result.
"""

from __future__ import annotations

import contextlib
import email.policy
import logging
import re
import smtplib
import ssl
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tollgate.service.delivery.channels import Delivery, SendResult
from tollgate.service.delivery.templates import Templates

__all__ = ["SmtpSender", "SmtpSettings", "redact"]

log = logging.getLogger("tollgate.delivery.email")

SCHEMES = {"smtp": 25, "smtps": 465}
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
#: The legacy policy `Header` needs, folding at 76 so no encoded word passes RFC 2047's 75.
_WIRE = email.policy.compat32.clone(max_line_length=76)
_MESSAGE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]")


def redact(url: str) -> str:
    """The SMTP URL with its password replaced by `***` (user, host, port and options kept)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return "<an unparsable SMTP URL>"
    if "@" not in netloc:
        return url
    userinfo, _, host = netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    shown = f"{user}:***" if has_password else user
    return parts._replace(netloc=f"{shown}@{host}").geturl()


class SmtpSettings:
    """The parsed `TOLLGATE_SMTP_URL`: where and how to connect."""

    def __init__(self, host: str, port: int, *, username: str | None = None, password: str | None = None,
                 security: str = "none", timeout: float = 10.0) -> None:
        if security not in ("none", "starttls", "tls"):
            raise ValueError(f"The SMTP security '{security}' is not one of none, starttls, tls.")
        self.host, self.port, self.security, self.timeout = host, port, security, timeout
        self.username, self.password = username, password

    @classmethod
    def parse(cls, url: str) -> SmtpSettings:
        """Parse `smtp[s]://[user[:password]@]host[:port][?starttls=1&timeout=10]`; errors name the
        redacted URL."""
        shown = redact(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise ValueError(f"The SMTP URL {shown} is not a valid URL ({error}).") from None
        if parts.scheme not in SCHEMES:
            raise ValueError(f"The SMTP URL {shown} must start with smtp:// or smtps://.")
        if not parts.hostname:
            raise ValueError(f"The SMTP URL {shown} names no host; write smtp://host:587.")
        query = parse_qs(parts.query, keep_blank_values=True)
        options = {key: values[-1] for key, values in query.items()}
        unknown = sorted(set(options) - {"starttls", "timeout"})
        if unknown:
            raise ValueError(f"The SMTP URL {shown} has the unknown option(s) {', '.join(unknown)}; "
                             "it takes starttls and timeout.")
        starttls = options.get("starttls", "0").lower()
        if starttls not in TRUE | FALSE:
            raise ValueError(f"The SMTP URL {shown} has starttls={starttls}; write starttls=1 or 0.")
        if parts.scheme == "smtps" and starttls in TRUE:
            raise ValueError(f"The SMTP URL {shown} asks for STARTTLS on smtps://, which is TLS already.")
        try:
            timeout = float(options.get("timeout", "10"))
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 600:
            raise ValueError(f"The SMTP URL {shown} has timeout={options['timeout']}; give seconds "
                             "between 0 and 600.")
        security = "tls" if parts.scheme == "smtps" else "starttls" if starttls in TRUE else "none"
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if not (username or "").isascii() or not (password or "").isascii():
            raise ValueError(f"The SMTP URL {shown} has a user name or password that is not ASCII; "
                             "SMTP AUTH (smtplib) sends only ASCII credentials.")
        return cls(parts.hostname, port or (587 if security == "starttls" else SCHEMES[parts.scheme]),
                   username=username, password=password, security=security, timeout=timeout)

    def __repr__(self) -> str:  # never the password
        user = f"{self.username}@" if self.username else ""
        return (f"SmtpSettings({user}{self.host}:{self.port}, security={self.security}, "
                f"timeout={self.timeout})")


class SmtpSender:
    """Sends email notifications over SMTP (the relay's `Sender` for channel "email").

    Thread-safe: one connection, reused across sends under a lock, reopened when the server has
    closed it. `sender` is the From header, e.g. `NAVER Cloud Billing <billing@example.com>`."""

    channel = "email"

    def __init__(self, settings: SmtpSettings, sender: str, *, templates: Templates | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        name, address = parseaddr(sender)
        if "@" not in address:
            raise ValueError(f"The sender '{sender}' has no email address; write it like "
                             "'NAVER Cloud Billing <billing@example.com>'.")
        self.settings = settings
        self.sender = sender
        self.sender_name = name
        self.envelope_from = address
        self.domain = address.rpartition("@")[2]
        self.templates = templates or Templates()
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.clock = clock
        self._connection: smtplib.SMTP | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, sender: str, **options: Any) -> SmtpSender:
        """A sender for `TOLLGATE_SMTP_URL` and `TOLLGATE_SMTP_FROM` (options as for the constructor)."""
        return cls(SmtpSettings.parse(url), sender, **options)

    # ── the message ────────────────────────────────────────────────────────────────────────

    def message_id(self, delivery: Delivery) -> str:
        """`<stable_id@sender-domain>`: the same on every attempt, so a resend is recognisable."""
        return f"<{_MESSAGE_ID_UNSAFE.sub('.', delivery.stable_id)}@{self.domain}>"

    def build(self, delivery: Delivery) -> Message:
        """The MIME message for a delivery: multipart/alternative, text then HTML, UTF-8.

        Built with the `email.mime` classes and `Header` on purpose: `EmailMessage`'s default policy
        folds a long non-ASCII subject into encoded words with the space between them outside,
        and readers drop it ("인증 코드" arrives as "인증코드"); `Header` keeps spaces inside
        the encoded words and every word at most 75 characters (RFC 2047)."""
        recipient = delivery.recipient
        if "@" not in recipient or any(c.isspace() for c in recipient):
            raise ValueError(f"the recipient '{recipient}' is not an email address")
        rendered = self.templates.render(delivery)
        message = MIMEMultipart("alternative", policy=_WIRE)
        message["From"] = formataddr((self.sender_name, self.envelope_from), charset="utf-8")
        message["To"] = recipient
        message["Subject"] = _header(rendered.subject, "Subject")  # type: ignore[assignment]
        message["Date"] = format_datetime(self.clock().astimezone(UTC))
        message["Message-ID"] = self.message_id(delivery)
        message["Content-Language"] = rendered.language
        message["X-Tollgate-Notification"] = delivery.stable_id
        message["X-Tollgate-Template"] = delivery.template
        message.attach(MIMEText(rendered.text, "plain", "utf-8"))
        message.attach(MIMEText(rendered.html, "html", "utf-8"))
        return message

    # ── sending ────────────────────────────────────────────────────────────────────────────

    def send(self, delivery: Delivery) -> SendResult:
        try:
            message = self.build(delivery)
        except Exception as error:  # no template, a template error, a recipient that is no address
            return self._failed(delivery, None, f"The email '{delivery.template}' to {delivery.recipient} "
                                                f"cannot be built: {type(error).__name__}: {error}")
        with self._lock:
            try:
                return self._send_locked(delivery, message)
            except Exception as error:  # a surprise from smtplib or ssl: still a result, never a raise
                self._close()
                return self._failed(delivery, None, f"Sending to {self._server()} failed "
                                                    f"({type(error).__name__}: {self._scrub(str(error))}).")

    def _send_locked(self, delivery: Delivery, message: Message) -> SendResult:
        for attempt in (1, 2):
            reused = self._connection is not None
            try:
                connection = self._connect()
                connection.send_message(message, from_addr=self.envelope_from, to_addrs=[delivery.recipient])
                return SendResult(True, "250", f"Accepted by {self._server()} for {delivery.recipient}.")
            except smtplib.SMTPRecipientsRefused as error:
                code, text = next(iter(error.recipients.values()))
                return self._refused(delivery, code, text, f"refused the recipient {delivery.recipient}")
            except smtplib.SMTPSenderRefused as error:
                return self._refused(delivery, error.smtp_code, error.smtp_error,
                                     f"refused the sender {self.envelope_from}")
            except smtplib.SMTPDataError as error:
                return self._refused(delivery, error.smtp_code, error.smtp_error,
                                     f"refused the message to {delivery.recipient}")
            except smtplib.SMTPAuthenticationError as error:
                self._close()
                return self._refused(delivery, error.smtp_code, error.smtp_error,
                                     f"refused the login as {self.settings.username}")
            except smtplib.SMTPResponseException as error:  # HELO, STARTTLS, MAIL … refused
                self._close()
                return self._refused(delivery, error.smtp_code, error.smtp_error, "answered")
            except (smtplib.SMTPException, OSError) as error:  # disconnected, refused, timeout, TLS
                self._close()
                if reused and attempt == 1:  # the server closed our idle connection: open a new one
                    continue
                return self._failed(delivery, None, f"The conversation with {self._server()} failed "
                                                    f"({type(error).__name__}: {self._scrub(str(error))}).")
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> smtplib.SMTP:
        if self._connection is not None:
            return self._connection
        s = self.settings
        connection: smtplib.SMTP
        if s.security == "tls":
            connection = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self.ssl_context)
        else:
            connection = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        try:
            connection.ehlo()
            if s.security == "starttls":
                connection.starttls(context=self.ssl_context)
                connection.ehlo()
            if s.username:
                connection.login(s.username, s.password or "")
        except BaseException:
            _quietly_close(connection)
            raise
        self._connection = connection
        return connection

    def close(self) -> None:
        """Say QUIT and drop the connection (the next send opens a new one)."""
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    self._connection.quit()
            self._close()

    def _close(self) -> None:
        if self._connection is not None:
            _quietly_close(self._connection)
        self._connection = None

    def __enter__(self) -> SmtpSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ── results ────────────────────────────────────────────────────────────────────────────

    def _server(self, capital: bool = False) -> str:
        return f"{'The' if capital else 'the'} SMTP server {self.settings.host}:{self.settings.port}"

    def _scrub(self, text: str) -> str:
        """`text` with the password removed, should a server or library ever echo it."""
        password = self.settings.password
        if not password:
            return text
        return text.replace(password, "***").replace(quote(password, safe=""), "***")

    def _refused(self, delivery: Delivery, code: int, text: bytes | str, what: str) -> SendResult:
        reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        kind = "temporary" if 400 <= code < 500 else "permanent" if code >= 500 else "unexpected"
        detail = f"{self._server(capital=True)} {what} with {code} ({kind}): {self._scrub(reply)}"
        return self._failed(delivery, str(code), detail)

    def _failed(self, delivery: Delivery, status: str | None, detail: str) -> SendResult:
        log.warning("email %s (%s) not delivered: %s", delivery.stable_id, delivery.template, detail)
        return SendResult(False, status, detail)

    def __repr__(self) -> str:
        return f"SmtpSender({self.settings!r}, sender={self.sender!r})"


def _header(text: str, name: str) -> str | Header:
    """A header value: as it is when ASCII, else RFC 2047 encoded words (UTF-8)."""
    return text if text.isascii() else Header(text, "utf-8", header_name=name)


def _quietly_close(connection: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        connection.close()
