"""Slow and idle clients against `tollgate serve`: do other clients still get answers?

For each serving design ("front"), a real `tollgate serve` process on a fresh SQLite file, then:

1. quiet: `--seconds` of steady requests from `--clients` concurrent clients, alternating
   `GET /healthz` and an authenticated `GET /instances?limit=5`, each on a new connection with a
   5 s timeout (a timeout or a refused or reset connection is an error);
2. under attack: `--slow` slowloris sockets (a request head sent one byte a second, never ending)
   and `--idle` sockets that connect and send nothing are opened, and the same steady requests run
   for `--seconds` more; then the sockets the server still holds open are counted.

Fronts: `buffered` (tollgate's: gthread whose poller reads each whole request before a thread
takes it, service/buffering.py), `gthread` (gunicorn's threaded worker, as before), `gevent`
(gunicorn's gevent worker), `waitress` (waitress, which buffers requests on its own loop; its
`connection_limit` raised from 100 to 1000, or 250 sockets would shut everyone else out),
`proxy` (gthread behind nginx with request buffering, as gunicorn's "Deploying" page advises) and
`asgi` (gunicorn's asyncio worker buffering requests, the app on threads: bench/asgi_front.py).
Fronts whose package or program is missing are skipped with the reason.

Loopback only; bounded: at most (2 × --seconds + ~20 s) per front.
Run `python -m bench.slow_clients [--fronts buffered,gthread] [--slow 50] [--idle 200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.http import Server

FRONTS = ("buffered", "gthread", "gevent", "waitress", "proxy", "asgi")
TOKEN = "bench-operator-token"  # bench.http.Server starts servers with this operator token
TIMEOUT = 5.0  # seconds a measured request may take before it counts as an error
THREADS = 8  # `tollgate serve`'s default --threads
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  client_header_timeout 30s;
  client_body_timeout 30s;
  client_max_body_size 1m;
  keepalive_timeout 2s;
  upstream app {{ server 127.0.0.1:{upstream}; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_request_buffering on;
      proxy_buffering on;
      proxy_set_header Host $host;
    }}
  }}
}}
"""


# ── the servers ───────────────────────────────────────────────────────────────────────────────


def _missing(front: str) -> str | None:
    """Why `front` cannot run here, or None."""
    needs = {"gevent": "gevent", "waitress": "waitress"}
    if front in needs and importlib.util.find_spec(needs[front]) is None:
        return f"the {needs[front]} package is not installed (pip install {needs[front]})"
    if front == "proxy" and shutil.which("nginx") is None:
        return "nginx is not installed (apt-get install nginx-light)"
    return None


def _serve_waitress(host: str, port: int, *, workers: int = 1, threads: int = 8, scheduler: bool = True,
                    **_: Any) -> int:
    """`service.server.serve`'s stand-in for the waitress front: one process, `threads` threads."""
    import waitress

    from tollgate.service.app import create_app
    from tollgate.service.scheduler import Scheduler

    app = create_app()
    if scheduler:
        Scheduler(app.extensions["tollgate"]).start()
    waitress.serve(app, host=host, port=port, threads=threads, connection_limit=1000, channel_timeout=30,
                   max_request_body_size=app.config["MAX_CONTENT_LENGTH"])
    return 0


def _run_front(front: str, argv: list[str]) -> int:
    """The child process: `tollgate serve ARGV` with the serving design `front`."""
    from tollgate.service import cli, server

    if front == "waitress":
        server.serve = _serve_waitress  # type: ignore[assignment]
    else:
        if front == "asgi":
            from bench.asgi_front import install
            install()
        server.serve = functools.partial(server.serve, front=front)  # type: ignore[assignment]
    return cli.main(["serve", *argv])


@contextlib.contextmanager
def started(front: str, directory: Path) -> Any:
    """A `tollgate serve` of `front` (behind nginx for `proxy`); yields its port."""
    database = f"sqlite:///{directory / (front + '.db')}"
    design = "gthread" if front == "proxy" else front
    argv = [sys.executable, "-m", "bench.slow_clients", "--serve", design, "--database", database,
            "--threads", str(THREADS)]
    with Server(front, argv, directory) as app:
        if front != "proxy":
            yield app.port
            return
        port = _free_port()
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=directory, upstream=app.port, port=port), encoding="utf-8")
        log = (directory / "nginx.log").open("wb")
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(directory)], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            while not _answers(port):
                if nginx.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {(directory / 'nginx.log').read_text()}")
                time.sleep(0.1)
            yield port
        finally:
            nginx.terminate()
            nginx.wait(10)
            log.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return sock.recv(64).startswith(b"HTTP/1.1 200")
    return False


# ── the clients ───────────────────────────────────────────────────────────────────────────────

REQUESTS = (b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
            b"GET /instances?limit=5 HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nConnection: close\r\n\r\n")


@dataclass
class Stream:
    """What the steady clients saw in one phase."""

    latencies: list[float]
    errors: int

    @property
    def p99_ms(self) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.latencies) if self.latencies else float("nan")


async def _one(port: int, request: bytes) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readline()
        await reader.read()  # to the end: Connection: close
        return head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def steady(port: int, clients: int, seconds: float) -> Stream:
    """`clients` loops of requests for `seconds`; a slow (> TIMEOUT), failed or non-200 one is an error."""
    stream = Stream([], 0)
    deadline = time.monotonic() + seconds

    async def client(n: int) -> None:
        while time.monotonic() < deadline:
            request = REQUESTS[n % 2]
            n += 1
            started = time.monotonic()
            try:
                ok = await asyncio.wait_for(_one(port, request), TIMEOUT)
            except (TimeoutError, OSError):
                ok = False
            if ok:
                stream.latencies.append(time.monotonic() - started)
            else:
                stream.errors += 1
                stream.latencies.append(max(time.monotonic() - started, TIMEOUT))
                await asyncio.sleep(0.05)

    await asyncio.gather(*(client(n) for n in range(clients)))
    return stream


async def _slowloris(port: int, stop: asyncio.Event, held: list[bool]) -> None:
    """A request head trickled one byte a second, never finished; `held` says if it is still open."""
    index = len(held)
    held.append(False)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    held[index] = True
    trickle = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: " + b"a" * 100_000
    try:
        for byte in trickle:
            if stop.is_set():
                return
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                    held[index] = False  # the server closed it
                    return
    except OSError:
        held[index] = False
    finally:
        writer.close()


async def _idle(port: int, stop: asyncio.Event, held: list[bool]) -> None:
    """A connection that sends nothing."""
    index = len(held)
    held.append(False)
    with contextlib.suppress(OSError):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        held[index] = True
        closed = asyncio.ensure_future(reader.read(1024))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        held[index] = not closed.done()
        closed.cancel()
        stopped.cancel()
        writer.close()


async def attack(port: int, *, slow: int, idle: int, clients: int, seconds: float) -> tuple[Stream, int, int]:
    """The steady stream with `slow` slowloris and `idle` idle sockets open; the stream and how many
    of each the server still held at the end."""
    stop = asyncio.Event()
    slow_held: list[bool] = []
    idle_held: list[bool] = []
    hostile = [asyncio.ensure_future(_slowloris(port, stop, slow_held)) for _ in range(slow)]
    hostile += [asyncio.ensure_future(_idle(port, stop, idle_held)) for _ in range(idle)]
    await asyncio.sleep(2.0)  # every socket connected and the slow ones started
    stream = await steady(port, clients, seconds)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*hostile, return_exceptions=True), 30)
    return stream, sum(slow_held), sum(idle_held)


# ── the run ───────────────────────────────────────────────────────────────────────────────────


@dataclass
class Row:
    front: str
    quiet: Stream
    loaded: Stream
    slow_held: int
    idle_held: int


def measure(front: str, directory: Path, args: argparse.Namespace) -> Row:
    with started(front, directory) as port:
        quiet = asyncio.run(steady(port, args.clients, args.seconds))
        loaded, slow_held, idle_held = asyncio.run(attack(port, slow=args.slow, idle=args.idle,
                                                          clients=args.clients, seconds=args.seconds))
        return Row(front, quiet, loaded, slow_held, idle_held)


def _print(rows: list[Row], args: argparse.Namespace) -> None:
    print(f"\n{args.clients} steady clients (GET /healthz and authenticated GET /instances, new connection "
          f"each, {TIMEOUT:.0f} s timeout), {args.seconds:.0f} s quiet then {args.seconds:.0f} s with "
          f"{args.slow} slowloris + {args.idle} idle sockets")
    print("| front | quiet: requests, errors, p50, p99 | attacked: requests, errors, p50, p99 "
          "| sockets held at the end (slow + idle) |")
    print("|---|---|---|---|")
    for row in rows:
        q, a = row.quiet, row.loaded
        print(f"| {row.front} | {len(q.latencies)}, {q.errors}, {q.median_ms:.0f} ms, {q.p99_ms:.0f} ms "
              f"| {len(a.latencies)}, {a.errors}, {a.median_ms:.0f} ms, {a.p99_ms:.0f} ms "
              f"| {row.slow_held} + {row.idle_held} |", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_clients", description=__doc__.split("\n")[0])
    parser.add_argument("--fronts", default=",".join(FRONTS), help=f"comma-separated, of {', '.join(FRONTS)}")
    parser.add_argument("--slow", type=int, default=50, help="slowloris sockets (default 50)")
    parser.add_argument("--idle", type=int, default=200, help="idle sockets (default 200)")
    parser.add_argument("--clients", type=int, default=4, help="steady concurrent clients (default 4)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per phase (default 15)")
    parser.add_argument("--serve", metavar="FRONT", help=argparse.SUPPRESS)  # the server child process
    args, rest = parser.parse_known_args(argv)
    if args.serve:
        return _run_front(args.serve, rest)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-slow-") as tmp:
        for front in args.fronts.split(","):
            reason = _missing(front)
            if reason:
                print(f"{front}: skipped, {reason}", flush=True)
                continue
            print(f"{front}: measuring", flush=True)
            directory = Path(tmp) / front
            directory.mkdir()
            try:
                rows.append(measure(front, directory, args))
            except Exception as error:  # one broken front must not hide the others' figures
                print(f"{front}: failed: {error}", flush=True)
            if rows and rows[-1].front == front:
                _print(rows[-1:], args)
    _print(rows, args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
