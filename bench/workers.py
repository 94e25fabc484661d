"""The billing month on PostgreSQL, fired by 1, 2 and 4 `tollgate worker` processes.

Each run gets a fresh database (CREATE DATABASE with a random name, dropped after). The seed is
N accounts (80 % with an active card) and N open invoices of a past usage month (2026-09) with
their issue timers already due, on real time (clock NULL) — so the workers fire them under the
wall clock: every invoice is issued; a fifth had no usage and is paid at issue; the others'
autopay attempt is denied and recorded (the autopay window of October has closed, and the wall
clock cannot be moved), then `mark_overdue`, `begin_grace` (armed at the instant it fires) and
`suspend` fire, all already due. That is 4 applied transitions and 1 denied attempt per unpaid
invoice, 1 per paid one.

`k` processes `tollgate worker --until-idle --batch 1000` are started at once; each claims
timers with `FOR UPDATE SKIP LOCKED` and exits after two sweeps 0.5 s apart find nothing due.
Throughput is the applied transitions ÷ the span between the first and the last history row (the
workers' own clock; process start-up and the final idle check are not counted), and the wall
time including them is reported too. After every run, SQL counts and asserts: every invoice is
in its expected state, no timed event (issue, start_autopay, mark_overdue, begin_grace, suspend)
is in any invoice's history twice — none fired twice —, the applied and denied totals are
exact, and no timer is left — none was missed. PostgreSQL runs with its defaults
(`synchronous_commit=on`: a commit is flushed to the WAL before it returns).
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

from bench.billing import KST, ROOT, Progress, seed_month, verify_month
from bench.report import Figure, print_table, write_json

__all__ = ["POSTGRES_URL", "main", "worker_figures"]

POSTGRES_URL = os.environ.get("TOLLGATE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
FULL_N = 100_000  # the SQLite month's first N
QUICK_N = 1_000
WORKERS = (1, 2, 4)
GOAL = 1.5
TIMED = ("issue", "start_autopay", "mark_overdue", "begin_grace", "suspend")


def _paid_at_issue(i: int) -> bool:
    return i % 5 == 3


def _expected(i: int) -> str:
    return "paid" if _paid_at_issue(i) else "suspended"


def _applied(i: int) -> int:
    return 1 if _paid_at_issue(i) else 4


def _denied(i: int) -> int:
    return 0 if _paid_at_issue(i) else 1


def _usage(i: int) -> int:
    return 0 if _paid_at_issue(i) else 1_000 + (i % 997) * 10


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _database(admin_url: str) -> tuple[str, str]:
    from sqlalchemy.engine import make_url

    name = f"tollgate_bench_{secrets.token_hex(6)}"
    return name, make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def run_workers(n: int, workers: int, progress: Progress, *, admin_url: str = POSTGRES_URL) -> dict[str, Any]:
    """Seed a fresh database, run `workers` worker processes to idle, verify, drop the database."""
    import psycopg
    from sqlalchemy import text

    from tollgate.service.application.runtime import Runtime
    from tollgate.service.storage.db import Database

    name, url = _database(admin_url)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        progress(f"workers: seeding N={n:,} in {name}")
        seed_month(url, n, clock=None, usage_month="2026-09", issue_at=datetime(2026, 10, 3, tzinfo=KST),
                   usage_of=_usage)
        progress(f"workers: {workers} × tollgate worker --until-idle")
        command = [sys.executable, "-m", "tollgate", "worker", "--until-idle", "--batch", "1000",
                   "--interval", "0.5", "--database", url, "--rules", str(ROOT / "rules.yaml")]
        start, children = time.perf_counter(), _children_cpu()
        processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
                     for _ in range(workers)]
        outputs = [p.communicate()[0].strip() for p in processes]
        wall, worker_cpu = time.perf_counter() - start, _children_cpu() - children
        if any(p.returncode for p in processes):
            raise RuntimeError(f"a worker failed: {outputs}")
        runtime = Runtime(Database(url))
        applied = verify_month(runtime, n, clock=None, expected=_expected, applied=_applied, denied=_denied,
                               once=TIMED)
        with runtime.db.engine.connect() as conn:
            first, last = conn.execute(text("SELECT min(at), max(at) FROM history")).one()
            timed = ", ".join(f"'{e}'" for e in TIMED)
            fired = conn.execute(text(f"SELECT count(*) FROM history WHERE event IN ({timed})")).scalar_one()
        runtime.db.dispose()
        span = (last - first).total_seconds()
        result = {"n": n, "workers": workers, "transitions": applied, "timers_fired": fired, "span": span,
                  "wall": wall, "rate": applied / span, "worker_cpu": worker_cpu,
                  "per_worker": [o.splitlines()[-1] for o in outputs]}
        progress(f"workers={workers}: {applied:,} transitions ({fired:,} timers, each once) in {span:.1f} s "
                 f"= {applied / span:,.0f}/s (wall {wall:.1f} s with start-up); "
                 f"workers' CPU {worker_cpu:.1f} s (load average {os.getloadavg()[0]:.1f}); "
                 f"{result['per_worker']}")
        return result
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _figures(results: list[dict[str, Any]]) -> list[Figure]:
    one = results[0]
    durability = "PostgreSQL synchronous_commit=on"
    cores = os.cpu_count() or 1
    figures = []
    for r in results:
        note = (f"N={r['n']:,}: {r['transitions']:,} transitions, {r['timers_fired']:,} timers each fired "
                f"once, none left, in {r['span']:.1f} s (wall {r['wall']:.1f} s with process start-up, "
                f"workers' CPU {r['worker_cpu']:.1f} s); "
                f"{durability}; baseline = 1 worker; the machine has {cores} cores")
        if r["workers"] > cores:
            note += f"; {r['workers']} workers on {cores} cores cannot beat {cores}"
        figures.append(Figure(f"workers.postgres.{r['workers']}", r["rate"], "transitions/s", one["rate"],
                              GOAL if r["workers"] == 2 else None, ">=", note))
    return figures


def worker_figures(quick: bool = False, progress: Progress | None = None,
                   n: int | None = None) -> list[dict[str, Any]]:
    """The PostgreSQL worker figures as dicts in bench/report.py's shape."""
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    size = n or (QUICK_N if quick else FULL_N)
    return [f.as_dict() for f in _figures([run_workers(size, k, say) for k in WORKERS])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"N = {QUICK_N:,}")
    parser.add_argument("--n", type=int, help=f"invoices (default {FULL_N:,})")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args(argv)
    figures = [Figure.from_dict(d) for d in worker_figures(args.quick, n=args.n)]
    print_table(figures)
    if args.json:
        write_json(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
