"""A real `tollgate serve` subprocess for end-to-end tests; `server.client(role)` talks to it.

`TollgateServer` starts the server in its own session (so its gunicorn master and workers form
one process group that can be stopped — or `kill -9`ed — together), on a free loopback port,
with a token for every role, its output captured to files, and waits for `/healthz`.

The client is the one the API tests use too (tests/helpers/client.py), over a loopback socket.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.client import LOOPBACK, Client, SocketTransport
from tests.helpers.paths import ROOT, RULES_PATH

ROLES = ("viewer", "operator", "policy_editor", "admin", "monitor")
START_TIMEOUT = 90.0  # seconds; generous, the machine is shared
STOP_TIMEOUT = 20.0


#: The `start_server` fixture of tests/e2e/conftest.py: `start_server(backend, **options)`.
StartServer = Callable[..., "TollgateServer"]


class ServerFailed(RuntimeError):
    """The server did not start, or died; the message carries the tail of its output."""


# ── waiting ──────────────────────────────────────────────────────────────────────────────────


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
    """A fresh random token for each of these roles."""
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

    def client(self, role: str | None = "admin", *, timeout: float = 60.0) -> Client:
        """The shared test client (tests/helpers/client.py) over a socket to this server."""
        return Client(SocketTransport(self.port, LOOPBACK, timeout), self.tokens, role)

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
                if self.client(None).get("/healthz").status_code == 200:
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
