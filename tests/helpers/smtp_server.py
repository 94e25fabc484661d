"""A real SMTP server process (aiosmtpd) for the email tests, and the code that starts it.

Run as a script it listens on loopback, prints `READY <port>` and appends every message it
accepts to `<out>/messages.jsonl` (envelope, the authenticated login, whether the session was
TLS, and the raw message as text) until it is terminated. It refuses on purpose by recipient:
`rcpt-451@…` or `rcpt-550@…` is refused at RCPT TO with that code, `data-451@…` or `data-554@…`
at the end of DATA, so one server answers every case a test needs.

    python tests/helpers/smtp_server.py --out DIR [--starttls CERT KEY | --implicit-tls CERT KEY]
                                        [--auth USER:PASSWORD] [--idle-timeout S]

`--idle-timeout S` makes it hang up on a client idle for S seconds, as real servers do.

`SmtpServer.start(tmp_path, …)` runs it as a subprocess; `self_signed_certificate(folder)` makes
a certificate for 127.0.0.1 with the `openssl` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 60.0
_REFUSE = re.compile(r"^(rcpt|data)-([45]\d\d)$")


# ── the server (runs in the subprocess) ──────────────────────────────────────────────────────


class Recorder:
    """aiosmtpd handler: refuses the recipients named for it, records every accepted message."""

    def __init__(self, out: Path) -> None:
        self.journal = out / "messages.jsonl"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        refused = _REFUSE.match(address.partition("@")[0])
        if refused and refused.group(1) == "rcpt":
            code = refused.group(2)
            reply = "4.2.1 Mailbox busy, try again later" if code[0] == "4" else "5.1.1 No such user"
            return f"{code} {reply}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for address in envelope.rcpt_tos:
            refused = _REFUSE.match(address.partition("@")[0])
            if refused and refused.group(1) == "data":
                code = refused.group(2)
                return f"{code} {'4.3.0 Try again later' if code[0] == '4' else '5.7.1 Rejected by policy'}"
        login = session.auth_data.login.decode() if session.authenticated else None
        record = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos, "login": login,
                  "tls": server.transport.get_extra_info("ssl_object") is not None,
                  "peer": list(session.peer),
                  "data": envelope.original_content.decode("utf-8", "surrogateescape")}
        with self.journal.open("a", encoding="utf-8") as journal:
            journal.write(json.dumps(record) + "\n")
        return "250 Message accepted for delivery"


def _authenticator(user: str, password: str) -> Any:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = (isinstance(data, LoginPassword) and data.login.decode() == user
              and data.password.decode() == password)
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    return check


async def _serve(args: argparse.Namespace) -> None:
    from aiosmtpd.smtp import SMTP

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    handler = Recorder(out)
    context = None
    cert = args.starttls or args.implicit_tls
    if cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert[0], cert[1])
    options: dict[str, Any] = {"hostname": "mx.test", "ident": "tollgate-test-smtp",
                               "timeout": args.idle_timeout}
    if args.starttls:
        options.update(tls_context=context, require_starttls=True)
    if args.auth:
        user, _, password = args.auth.partition(":")
        options.update(authenticator=_authenticator(user, password), auth_required=True,
                       auth_require_tls=bool(cert))

    def factory() -> SMTP:
        return SMTP(handler, **options)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, LOOPBACK, 0, ssl=context if args.implicit_tls else None)
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"))
    tls.add_argument("--implicit-tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--auth", metavar="USER:PASSWORD")
    parser.add_argument("--idle-timeout", type=float, default=300.0,
                        help="seconds after which the server hangs up on an idle client")
    asyncio.run(_serve(parser.parse_args(argv)))


# ── the fixture side (runs in the test process) ──────────────────────────────────────────────


@dataclass
class SmtpServer:
    """A running server subprocess: its port and the messages it received so far."""

    process: subprocess.Popen[str]
    port: int
    out: Path
    log: Path

    @classmethod
    def start(cls, folder: Path, *, starttls: tuple[Path, Path] | None = None,
              implicit_tls: tuple[Path, Path] | None = None, auth: str | None = None,
              idle_timeout: float | None = None) -> SmtpServer:
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "received"
        log = folder / "smtp_server.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--out", str(out)]
        if starttls:
            command += ["--starttls", *map(str, starttls)]
        if implicit_tls:
            command += ["--implicit-tls", *map(str, implicit_tls)]
        if auth:
            command += ["--auth", auth]
        if idle_timeout:
            command += ["--idle-timeout", str(idle_timeout)]
        with log.open("w") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until READY or the process exits
        if not line.startswith("READY "):
            process.kill()
            process.wait(timeout=START_TIMEOUT)
            raise RuntimeError(f"The SMTP server did not start: {log.read_text()[-2000:]}")
        return cls(process, int(line.split()[1]), out, log)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        if self.process.stdout:
            self.process.stdout.close()

    def records(self) -> list[dict[str, Any]]:
        """Every message received so far, as written by the server (envelope and raw data)."""
        journal = self.out / "messages.jsonl"
        if not journal.exists():
            return []
        return [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]

    def messages(self) -> list[EmailMessage]:
        """Every message received so far, parsed with the standard library's email parser."""
        parser = BytesParser(policy=policy.default)
        return [parser.parsebytes(r["data"].encode("utf-8", "surrogateescape"))  # type: ignore[misc]
                for r in self.records()]


#: The `start_smtp` fixture of tests/delivery/conftest.py: `start_smtp(**options of SmtpServer.start)`.
StartSmtp = Callable[..., SmtpServer]


def self_signed_certificate(folder: Path) -> tuple[Path, Path] | None:
    """A certificate and key for 127.0.0.1 and localhost, made by `openssl`; None without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = folder / "cert.pem", folder / "key.pem"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(parents=True)
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


if __name__ == "__main__":
    main()
