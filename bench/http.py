"""HTTP benchmark: `POST /instances/{id}/events` on `tollgate serve` ÷ a trivial Flask JSON POST.

Both servers run as subprocesses on the same gunicorn config (`service.server.serve`: gthread,
the SQLite default of one worker, `serve`'s default threads) on 127.0.0.1, and `wrk` loads them
with the same Lua script, threads, connections and duration, interleaved round by round
(baseline, tollgate spread, tollgate hot, baseline, …) so that load from other processes hits
all alike; each figure is the median over the rounds.

* tollgate spread: `add_usage` on N invoices of one test clock (SQLite file, the default durable
  commit: WAL + `synchronous=FULL`), each wrk thread cycling through all of them;
* tollgate hot: the same event on a single invoice (every request waits for the same row);
* baseline: `POST /echo` of `bench/echo.py` with the same body and headers.

After each tollgate run the applied `add_usage` rows in the history are counted and checked
against the 200 responses wrk's Lua `response` callback counted (requests still in flight when
wrk stops may be applied without wrk seeing the answer: they are the only slack allowed).
Run `python -m bench.http [--quick] [--json FILE]`; `http_figures()` is what `tollgate bench` calls.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.report import Figure, print_table, write_json

__all__ = ["HttpFigure", "WrkResult", "http_figures", "main", "parse_wrk"]

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-operator-token"
#: `tollgate serve` on SQLite: one worker process (service/cli.py `_serve`), its default threads.
SQLITE_WORKERS = 1
THROUGHPUT_GOAL = 0.40  # ≥ 40 % of the baseline's requests/s
P99_GOAL = 4.0  # ≤ 4 × the baseline's p99
BODY = '{"event": "add_usage", "data": {"amount": 1}}'

#: The wrk script: POST with headers; the path is `args[1]` with `%d` cycling over 0..args[2]-1
#: (each thread starting at its own offset); statuses and requests sent are counted per thread
#: and summed in `done` on one line that `parse_wrk` reads.
LUA = r"""
local threads, next_id = {}, 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  template, count = args[1], tonumber(args[2])
  pos = (id * 7919) % count
  sent, ok, other = 0, 0, 0
  wrk.method = "POST"
  wrk.body = BODY
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer TOKEN"
end
function request()
  pos = (pos + 1) % count
  sent = sent + 1
  return wrk.format(nil, string.format(template, pos))
end
function response(status, headers, body)
  if status == 200 then ok = ok + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local s, o, x = 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent"); o = o + t:get("ok"); x = x + t:get("other")
  end
  io.write(string.format("LUA sent=%d ok=%d other=%d\n", s, o, x))
end
""".replace("BODY", repr(BODY)).replace("TOKEN", TOKEN)


# ── wrk's output ──────────────────────────────────────────────────────────────────────────────

_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m)\s*$", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in (\d+(?:\.\d+)?)(us|ms|s|m),", re.M)
_RPS = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)", re.M)
_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses: (\d+)", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_LUA = re.compile(r"^LUA sent=(\d+) ok=(\d+) other=(\d+)", re.M)


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reported: totals, the latency distribution (ms) and the Lua counters."""

    requests: int
    seconds: float
    rps: float
    percentiles: dict[float, float]
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    sent: int | None = None  # requests the Lua script built
    ok: int | None = None  # 200 responses the Lua script counted
    other: int | None = None  # any other status

    @property
    def p99(self) -> float:
        return self.percentiles[99.0]


def parse_wrk(text: str) -> WrkResult:
    """Parse the output of `wrk --latency` (and the `LUA …` line of the script's `done`)."""
    requests = _REQUESTS.search(text)
    rps = _RPS.search(text)
    percentiles = {float(p): float(v) * _TIME_UNITS[u] for p, v, u in _PERCENTILE.findall(text)}
    if requests is None or rps is None or 99.0 not in percentiles:
        raise ValueError("The wrk output has no request count, Requests/sec or 99% latency; was it run "
                         f"with --latency? It said:\n{text.strip()[-2000:]}")
    non_2xx = _NON_2XX.search(text)
    socket_errors = _SOCKET.search(text)
    lua = _LUA.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        seconds=float(requests.group(2)) * _TIME_UNITS[requests.group(3)] / 1000,
        rps=float(rps.group(1)),
        percentiles=percentiles,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"),
                               map(int, socket_errors.groups()), strict=True)) if socket_errors else {},
        sent=int(lua.group(1)) if lua else None,
        ok=int(lua.group(2)) if lua else None,
        other=int(lua.group(3)) if lua else None,
    )


# ── the servers ───────────────────────────────────────────────────────────────────────────────


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def default_threads() -> int:
    """`tollgate serve`'s default --threads (TOLLGATE_THREADS, else the settings' default)."""
    from tollgate.service.settings import Settings

    return Settings.from_environment().threads


def _rules_path() -> str:
    from tollgate.bundled import default_rules_path

    path = default_rules_path()
    return path if Path(path).exists() else str(REPO / "rules.yaml")


class Server:
    """A server subprocess in its own process group, its output in a file; stopped on exit."""

    def __init__(self, name: str, argv: list[str], directory: Path) -> None:
        self.name, self.argv = name, argv
        self.port = _free_port()
        self.argv += ["--port", str(self.port)]
        self.log = directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {**os.environ, "TOLLGATE_TOKENS": f"operator={TOKEN}", "PYTHONUNBUFFERED": "1"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"The {self.name} server exited with {self.process.returncode}:\n"
                                   f"{self.output()[-3000:]}")
            with contextlib.suppress(OSError):
                if self.request("GET", "/healthz")[0] == 200:
                    return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"The {self.name} server did not answer /healthz within 60 s.")

    def __exit__(self, *_: Any) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, 15)  # the group this object started: gunicorn's arbiter and workers
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def request(self, method: str, path: str, body: Any = None,
                conn: http.client.HTTPConnection | None = None) -> tuple[int, Any]:
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            conn.request(method, path, None if body is None else json.dumps(body), headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else None
        finally:
            if own:
                conn.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def seed(server: Server, invoices: int) -> list[str]:
    """A test clock, then one account and one open invoice per account; the invoice ids."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def post(path: str, body: Any) -> None:
        status, answer = server.request("POST", path, body, conn)
        if status not in (200, 201):
            raise RuntimeError(f"Seeding the benchmark database: POST {path} answered {status}: {answer}")

    try:
        post("/clocks", {"id": "bench", "now": "2026-10-05T10:00:00+09:00"})
        ids = []
        for n in range(invoices):
            post("/workflows/signup/instances", {"id": f"bacct-{n}", "context": {}, "clock": "bench"})
            post("/workflows/invoice/instances", {"id": f"binv-{n}", "context": {
                "account": f"bacct-{n}", "usage_month": "2026-10"}})
            ids.append(f"binv-{n}")
        return ids
    finally:
        conn.close()


def applied_usage(database: Path) -> int:
    """Applied `add_usage` attempts in the history, once the server has finished writing."""
    last = -1
    while True:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as db:
            count: int = db.execute("SELECT count(*) FROM history WHERE event = 'add_usage' "
                                    "AND outcome = 'applied'").fetchone()[0]
        if count == last:
            return count
        last = count
        time.sleep(0.3)


# ── the load ──────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Load:
    threads: int = 2
    connections: int = 16
    seconds: int = 10


def run_wrk(url: str, script: Path, template: str, count: int, load: Load) -> WrkResult:
    """One wrk run with the script, `template` % i cycling over `count` paths."""
    argv = ["wrk", f"-t{load.threads}", f"-c{load.connections}", f"-d{load.seconds}s", "--latency",
            "--timeout", "10s", "-s", str(script), url, "--", template, str(count)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=load.seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout)


@dataclass(frozen=True)
class HttpFigure(Figure):
    """A figure with the raw runs and the history check in its JSON object."""

    details: dict[str, Any] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        out.pop("details", None)
        out.update(self.details)
        return out


def _check_applied(name: str, run: WrkResult, applied: int) -> dict[str, Any]:
    """Every applied event was answered 200 and vice versa, up to the requests cut off by wrk's stop."""
    if run.ok is None or run.sent is None or run.other is None:
        raise RuntimeError("The wrk script's status counters are missing from its output.")
    in_flight = run.sent - run.ok - run.other
    if run.other or run.non_2xx:
        raise RuntimeError(f"{name}: {run.other} responses were not 200 (wrk: {run.non_2xx} non-2xx).")
    if not run.ok <= applied <= run.ok + in_flight:
        raise RuntimeError(f"{name}: {applied} add_usage events applied, but wrk counted {run.ok} "
                           f"200 responses with {in_flight} requests cut off at the end.")
    return {"ok": run.ok, "applied": applied, "cut_off": in_flight}


def http_figures(*, quick: bool = False, progress: Callable[[str], None] | None = None,
                 invoices: int | None = None, load: Load | None = None,
                 rounds: int | None = None) -> list[Figure]:
    """Throughput and p99 of the events route (spread over many invoices, and one hot invoice)."""
    say = progress or (lambda _text: None)
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed; install it with apt-get install -y wrk.")
    invoices = invoices or (50 if quick else 200)
    load = load or (Load(seconds=1) if quick else Load())
    rounds = rounds or (2 if quick else 3)
    threads = default_threads()
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-http-") as tmp:
        directory = Path(tmp)
        database = directory / "bench.db"
        script = directory / "post.lua"
        script.write_text(LUA, encoding="utf-8")
        tollgate_argv = [sys.executable, "-m", "tollgate", "serve", "--database",
                         f"sqlite:///{database}", "--rules", _rules_path(),
                         "--workers", str(SQLITE_WORKERS), "--threads", str(threads)]
        echo_argv = [sys.executable, "-m", "bench.echo", "--workers", str(SQLITE_WORKERS),
                     "--threads", str(threads)]
        with Server("tollgate", tollgate_argv, directory) as tollgate, \
                Server("echo", echo_argv, directory) as echo:
            say(f"http: seeding {invoices} invoices on a test clock")
            ids = seed(tollgate, invoices)
            loads: dict[str, tuple[str, str, int]] = {
                "baseline": (echo.url, "/echo", 1),
                "spread": (tollgate.url, "/instances/binv-%d/events", len(ids)),
                "hot": (tollgate.url, "/instances/binv-0/events", 1),
            }
            say("http: warm-up")
            for url, template, count in loads.values():
                run_wrk(url, script, template, count, Load(load.threads, load.connections, 1))
            runs: dict[str, list[WrkResult]] = {kind: [] for kind in loads}
            checks: dict[str, list[dict[str, Any]]] = {"spread": [], "hot": []}
            applied = applied_usage(database)
            for index in range(rounds):
                for kind, (url, template, count) in loads.items():
                    say(f"http: round {index + 1}/{rounds}, {kind} ({load.seconds} s, "
                        f"{load.connections} connections)")
                    run = run_wrk(url, script, template, count, load)
                    runs[kind].append(run)
                    if kind in checks:
                        now_applied = applied_usage(database)
                        checks[kind].append(_check_applied(f"http {kind}", run, now_applied - applied))
                        applied = now_applied
    return _figures(runs, checks, load, invoices, threads)


def _figures(runs: dict[str, list[WrkResult]], checks: dict[str, list[dict[str, Any]]], load: Load,
             invoices: int, threads: int) -> list[Figure]:
    base = runs["baseline"]
    base_rps = statistics.median(r.rps for r in base)
    base_p99 = statistics.median(r.p99 for r in base)
    config = (f"gunicorn gthread {SQLITE_WORKERS} worker x {threads} threads; wrk -t{load.threads} "
              f"-c{load.connections} -d{load.seconds}s, {len(base)} interleaved rounds, medians")
    out: list[Figure] = []
    for kind, label, what in (("spread", "http.events", f"add_usage over {invoices} invoices"),
                              ("hot", "http.events_hot", "add_usage on one invoice")):
        cand = runs[kind]
        details = {"runs_rps": [round(r.rps, 1) for r in cand],
                   "baseline_runs_rps": [round(r.rps, 1) for r in base],
                   "runs_p99_ms": [round(r.p99, 2) for r in cand],
                   "baseline_runs_p99_ms": [round(r.p99, 2) for r in base], "history_check": checks[kind]}
        out.append(HttpFigure(f"{label}.throughput", statistics.median(r.rps for r in cand), "req/s",
                              base_rps, goal=THROUGHPUT_GOAL, direction=">=", details=details,
                              note=f"{what} (SQLite WAL, synchronous=FULL) ÷ Flask JSON echo; {config}"))
        out.append(HttpFigure(f"{label}.p99", statistics.median(r.p99 for r in cand), "ms", base_p99,
                              goal=P99_GOAL, direction="<=", details=details,
                              note=f"p99 latency, {what} ÷ Flask JSON echo; {config}"))
    return out


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: short runs, fewer invoices")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    def progress(text: str) -> None:
        print(f"… {text}", file=sys.stderr, flush=True)

    figures = http_figures(quick=args.quick, progress=progress)
    print_table(figures, out)
    if args.json:
        write_json(figures, args.json)
    return 0 if all(f.met is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
