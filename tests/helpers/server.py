"""A real `tollgate serve` subprocess for end-to-end tests, and a small HTTP client for it.

`TollgateServer` starts the server in its own session (so its gunicorn master and workers form
one process group that can be stopped — or `kill -9`ed — together), on a free loopback port,
with a token for every role, its output captured to files, and waits for `/healthz`.

Only the standard library talks HTTP here (`http.client`), one connection per request, always
closed, so tests stay clean under `filterwarnings = error`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.paths import ROOT, RULES_PATH

LOOPBACK = "127.0.0.1"
ROLES = ("viewer", "operator", "policy_editor", "admin")
START_TIMEOUT = 90.0  # seconds; generous, the machine is shared
STOP_TIMEOUT = 20.0


#: The `start_server` fixture of tests/e2e/conftest.py: `start_server(backend, **options)`.
StartServer = Callable[..., "TollgateServer"]


class ServerFailed(RuntimeError):
    """The server did not start, or died; the message carries the tail of its output."""


# ── HTTP ─────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def __repr__(self) -> str:  # what a failed assertion shows
        return f"<Response {self.status} {self.body[:500]!r}>"


@dataclass
class Client:
    """Requests to one server, with the bearer token of a role (default `admin`)."""

    port: int
    tokens: Mapping[str, str]
    role: str | None = "admin"
    timeout: float = 60.0

    def as_role(self, role: str | None) -> Client:
        return Client(self.port, self.tokens, role, self.timeout)

    def call(self, method: str, path: str, *, json_body: Any = None, body: bytes | str | None = None,
             headers: Mapping[str, str] | None = None, content_type: str | None = None) -> Response:
        sent: dict[str, str] = {}
        if self.role is not None:
            sent["Authorization"] = f"Bearer {self.tokens[self.role]}"
        if json_body is not None:
            body = json.dumps(json_body)
            content_type = content_type or "application/json"
        if content_type:
            sent["Content-Type"] = content_type
        sent.update(headers or {})
        payload = body.encode("utf-8") if isinstance(body, str) else body
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
        try:
            connection.request(method, path, body=payload, headers=sent)
            answer = connection.getresponse()
            data = answer.read()
            return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)
        finally:
            connection.close()

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, json_body: Any = None, **kwargs: Any) -> Response:
        return self.call("POST", path, json_body=json_body, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Response:
        return self.call("PUT", path, **kwargs)

    # shortcuts that assert the expected status and return the JSON body

    def ok(self, method: str, path: str, *, status: int = 200, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        assert response.status == status, f"{method} {path}: expected {status}, got {response!r}"
        return response.json()

    def create(self, workflow: str, context: Mapping[str, Any] | None = None,
               **fields: Any) -> dict[str, Any]:
        body = {"context": dict(context or {}), **fields}
        created: dict[str, Any] = self.ok("POST", f"/workflows/{workflow}/instances", status=201,
                                          json_body=body)
        return created

    def fire(self, instance: str, event: str, data: Mapping[str, Any] | None = None, *,
             status: int = 200, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = self.ok("POST", f"/instances/{instance}/events", status=status,
                                       json_body={"event": event, "data": dict(data or {})},
                                       headers=headers)
        return body

    def instance(self, instance: str) -> dict[str, Any]:
        found: dict[str, Any] = self.ok("GET", f"/instances/{instance}")
        return found

    def history(self, instance: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.ok("GET", f"/instances/{instance}/history")["items"]
        return items

    def notifications(self, instance: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.ok("GET", f"/notifications?instance={instance}")["items"]
        return items

    def clock(self, now: str) -> str:
        return str(self.ok("POST", "/clocks", status=201, json_body={"now": now})["id"])

    def signup(self, *, clock: str | None = None, member_type: str = "business", country: str = "KR",
               password: str = "Cloud#2026ok", email: str | None = None) -> str:
        """A signup driven to `payment_method_required` (the email code read from the outbox)."""
        account = str(self.create("signup", **({"clock": clock} if clock else {}))["id"])
        self.fire(account, "select_type", {"country": country, "member_type": member_type,
                                           "birth_date": "1990-01-01"})
        self.fire(account, "submit_email", {"email": email or f"{account}@example.com"})
        code = self.notifications(account)[-1]["payload"]["code"]
        self.fire(account, "verify_email", {"code": code})
        self.fire(account, "set_password", {"password": password, "password_confirm": password})
        return account

    def register_card(self, account: str, channel: str = "web") -> str:
        """A personal credit card registered for `account`; returns the payment_method id."""
        pm = str(self.create("payment_method", {"account": account, "channel": channel})["id"])
        self.fire(pm, "select_method", {"method": "credit_card", "card_type": "personal",
                                        "card_owner": "person"})
        self.fire(pm, "verify_phone", {"owner_match": True})
        self.fire(pm, "register", {"agree_payment_info": True, "agree_recurring": True})
        return pm


def poll(predicate: Any, *, timeout: float = 60.0, interval: float = 0.2, what: str = "the condition") -> Any:
    """Call `predicate()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:.0f} s (last value {value!r})")
        time.sleep(interval)


# ── the server process ───────────────────────────────────────────────────────────────────────


def free_port() -> int:
    """A TCP port free on loopback right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def role_tokens() -> dict[str, str]:
    """A fresh random token for each of the four roles."""
    return {role: f"{role}-{secrets.token_urlsafe(12)}" for role in ROLES}


@dataclass
class TollgateServer:
    """One `tollgate serve` subprocess; `start()` returns when `/healthz` answers 200.

    `stop()` always ends the whole process group: SIGTERM, then SIGKILL after STOP_TIMEOUT.
    `kill()` is `kill -9` of the group (the crash test). Both may be called more than once, and
    `start()` again afterwards runs a new process on the same database and port.
    """

    database_url: str
    directory: Path
    rules: Path = RULES_PATH
    tokens: dict[str, str] = field(default_factory=role_tokens)  # empty: serve generates an admin token
    host: str = LOOPBACK
    workers: int = 2
    threads: int = 8
    scheduler: bool = True
    extra_args: tuple[str, ...] = ()  # more `tollgate serve` options
    env: dict[str, str] = field(default_factory=dict)  # more environment variables (TOLLGATE_… too)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self, role: str | None = "admin") -> Client:
        return Client(self.port, self.tokens, role)

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "tollgate", "serve", "--host", self.host, "--port", str(self.port),
                "--database", self.database_url, "--rules", str(self.rules),
                "--workers", str(self.workers), "--threads", str(self.threads), *self.extra_args]
        return argv if self.scheduler else [*argv, "--no-scheduler"]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
        if self.tokens:
            env["TOLLGATE_TOKENS"] = ",".join(f"{role}={token}" for role, token in self.tokens.items())
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        return env

    def start(self) -> TollgateServer:
        """Start (or restart) the server; retries on a new port if the chosen one was taken."""
        assert self.process is None, "the server is running; stop() or kill() it first"
        keep_port = self.port != 0  # a restart keeps its port so clients keep working
        for attempt in range(3):
            if not keep_port:
                self.port = free_port()
            try:
                self._launch()
                return self
            except ServerFailed:
                self.stop()
                if keep_port or attempt == 2 or "address already in use" not in self.output().lower():
                    raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self.starts += 1
        log = self.directory / f"server-{self.starts}.log"
        self.logs.append(log)
        with log.open("wb") as handle:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.command(), cwd=ROOT, env=self.environment(), stdin=subprocess.DEVNULL,
                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"tollgate serve exited with {self.process.returncode}:\n"
                                   f"{self.output()[-3000:]}")
            with contextlib.suppress(OSError):
                if self.client(None).get("/healthz").status == 200:
                    return
            time.sleep(0.1)
        raise ServerFailed(f"tollgate serve did not answer /healthz in {START_TIMEOUT:.0f} s:\n"
                           f"{self.output()[-3000:]}")

    def output(self) -> str:
        """Everything every run of this server wrote to stdout and stderr."""
        return "".join(p.read_text(encoding="utf-8", errors="replace") for p in self.logs if p.exists())

    def _signal_group(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def _group_alive(self) -> bool:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _reap(self, timeout: float) -> bool:
        """Wait for the master and then the rest of the group; True when all are gone."""
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        deadline = time.monotonic() + timeout
        while self._group_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the group), then SIGKILL if it does not end in time."""
        if self.process is None:
            return
        try:
            self._signal_group(signal.SIGTERM)
            if not self._reap(STOP_TIMEOUT):
                self._signal_group(signal.SIGKILL)
                self._reap(STOP_TIMEOUT)
        finally:
            if self.process.poll() is None:  # never leave a child behind
                self.process.kill()
                self.process.wait()
            self.process = None

    def kill(self) -> None:
        """`kill -9` the whole process group (master and workers) at once, and reap it."""
        if self.process is None:
            return
        try:
            self._signal_group(signal.SIGKILL)
            self._reap(STOP_TIMEOUT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process = None
