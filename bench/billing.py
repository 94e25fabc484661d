"""The billing month on SQLite: N invoices on one test clock, issue → autopay → paid or overdue →
grace → suspended, with a share paid by the gateway and by deposits.

Every N runs in a fresh subprocess on a fresh SQLite file (WAL, `synchronous=FULL`: every commit is
on disk before it returns). The seed (accounts, payment methods, open invoices and their issue
timers) is written with bulk inserts and not measured; then the month is driven and timed:

1. the clock moves to the 10th, 09:00 — every invoice is issued on the 3rd; on the 10th autopay
   starts for the 80 % of accounts with an active payment method (the others' attempt is denied
   and recorded: they pay by virtual account);
2. the gateway reports `charge_succeeded` for 7 in 8 of those (`Runtime.fire_many`, one
   transaction per 1,000 events);
3. the clock moves to the 20th: autopay retries each day to the 14th for the rest, then
   `mark_overdue` and `begin_grace` on the 15th; a quarter of the virtual-account payers deposit;
4. the clock moves to 23:30 on the 30th; another quarter's deposits, made at 21:00 (before the
   22:00 deadline), are reported late by the bank feed (the deposit lag);
5. the clock moves to 02:00 on the 1st: everyone still unpaid is suspended (autopay payers at
   00:00, virtual-account payers 3 h after the deadline).

The figure is applied transitions (history rows with outcome `applied`) per second over the
whole month. After each run, SQL checks that every invoice reached its expected state, that no
once-only event (issue, charge_succeeded, mark_overdue, begin_grace, suspend, deposit) applied
twice, that each autopay payer left unpaid was charged on each of the 5 autopay days, and that no
timer is left due. Run `python -m bench.billing [--quick] [--json FILE] [--n N ...]`;
`billing_figures(quick, progress)` is what `tollgate bench` calls.

The month runs as `Runtime(…, workers=WORKERS)` (2 here, one per core; `--workers K` or
$TOLLGATE_BENCH_WORKERS): the instants with thousands of timers and the gateway's reports are
judged by worker processes sharing the SQLite file (service/application/parallel.py), which start with the
runtime, before the month's timer starts (their start-up is reported apart). The first N is also
run in one process (`workers=1`), side by side, as `billing.sqlite.one_process.N=…` (the last N
with --quick: its first is too small for the workers).

The goal is an absolute rate, so each month also reports its cost per applied transition in
units of a bare `transitions` trigger (bench/core.py's baseline for pay_now), timed right before
and right after the month: a figure that says how fast this code is independently of how fast the
shared machine happens to be during the run (the trigger's cost has been seen to swing from 7 to
19 µs between runs here). With K workers the trigger is timed in K processes at once, so that it
is measured with as many cores busy as the month kept busy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from bench.report import Figure, print_table, write_json

__all__ = ["FULL_N", "QUICK_N", "billing_figures", "expected_state", "main", "seed_month"]

GOAL_RATE = 20_000.0
FULL_N = (100_000, 1_000_000)
QUICK_N = (2_000, 8_000)
CLOCK = "billing"
USAGE_MONTH = "2026-10"
KST = timezone(timedelta(hours=9))
START = datetime(2026, 11, 1, tzinfo=KST)
ISSUE_AT = datetime(2026, 11, 3, tzinfo=KST)
CHARGED_AT = datetime(2026, 11, 10, 9, tzinfo=KST)
EARLY_DEPOSITS_AT = datetime(2026, 11, 20, 12, tzinfo=KST)
LATE_FEED_AT = datetime(2026, 11, 30, 23, 30, tzinfo=KST)
MONTH_END = datetime(2026, 12, 1, 2, tzinfo=KST)
BATCH = int(os.environ.get("TOLLGATE_BENCH_BATCH", "1000"))
WORKERS = int(os.environ.get("TOLLGATE_BENCH_WORKERS", "2"))
ONCE = ("issue", "charge_succeeded", "mark_overdue", "begin_grace", "suspend", "deposit")
Progress = Callable[[str], None]
ROOT = Path(__file__).resolve().parent.parent


# ── the population ───────────────────────────────────────────────────────────────────────────

def payer_kind(i: int) -> str:
    """Account i's part in the month: charged, unpaid_autopay, early_deposit, late_deposit, unpaid_va."""
    if i % 5:
        return "unpaid_autopay" if i % 10 == 1 else "charged"
    return {0: "early_deposit", 5: "late_deposit"}.get(i % 20, "unpaid_va")


def expected_state(i: int) -> str:
    return "suspended" if payer_kind(i) in ("unpaid_autopay", "unpaid_va") else "paid"


#: Applied transitions per invoice of each kind (issue, autopay days, payments, overdue, grace, suspend).
APPLIED = {"charged": 3, "unpaid_autopay": 9, "early_deposit": 4, "late_deposit": 4, "unpaid_va": 4}
#: Denied attempts: autopay's first day for accounts without a payable method (dropped timer).
DENIED = {"charged": 0, "unpaid_autopay": 0, "early_deposit": 1, "late_deposit": 1, "unpaid_va": 1}


def usage(i: int) -> int:
    return 1_000 + (i % 997) * 10


def seed_month(url: str, n: int, *, clock: str | None = CLOCK, usage_month: str = USAGE_MONTH,
               issue_at: datetime = ISSUE_AT, usage_of: Callable[[int], int] = usage, chunk: int = 20_000,
               progress: Progress | None = None) -> None:
    """Migrate, activate rules.yaml and write n accounts (80 % with an active card), n open invoices
    and their issue timers with bulk inserts (not through the runtime: this is the seed)."""
    from tollgate.service.application.runtime import Runtime
    from tollgate.service.storage.bulk import BulkWriter
    from tollgate.service.storage.db import Database
    from tollgate.service.storage.unit_of_work import INSTANCE_COLUMNS

    runtime = Runtime(Database(url))
    runtime.bootstrap(ROOT / "rules.yaml")
    if clock is not None:
        runtime.create_clock(START, clock)
    for lo in range(0, n, chunk):
        with runtime.db.transaction() as conn:
            bulk = BulkWriter(conn)
            ts, js = bulk.ts, bulk.js
            t0 = ts(START)
            accounts, methods, invoices, timers = [], [], [], []
            for i in range(lo, min(n, lo + chunk)):
                account = f"acct{i}"
                email = f"user{i}@example.com"
                accounts.append((account, "signup", "active",
                                 js({"country": "KR", "member_type": "business", "email": email,
                                     "phone": "+821000000000"}),
                                 js({}), 5, 0, clock, None, t0, t0))
                if payer_kind(i) in ("charged", "unpaid_autopay"):
                    methods.append((f"pm{i}", "payment_method", "active",
                                    js({"account": account, "channel": "web", "method": "credit_card"}),
                                    js({}), 4, 0, clock, account, t0, t0))
                invoices.append((f"inv{i}", "invoice", "open",
                                 js({"account": account, "usage_month": usage_month, "usage": usage_of(i)}),
                                 js({}), 1, 0, clock, account, t0, t0))
                timers.append((f"inv{i}", "invoice_issue", "issue", ts(issue_at), clock))
            for rows in (accounts, methods, invoices):
                bulk.insert("instances", INSTANCE_COLUMNS, rows)
            bulk.insert("timers", ("instance", "name", "event", "due_at", "clock"), timers)
        if progress and (lo // chunk) % 10 == 9:
            progress(f"seeded {lo + chunk:,} of {n:,}")
    runtime.db.dispose()


# ── the month ────────────────────────────────────────────────────────────────────────────────

def _gateway(n: int, kind: str, event: str,
             data: Callable[[int], dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    return ((f"inv{i}", event, data(i)) for i in range(n) if payer_kind(i) == kind)


def bare_trigger_us(seconds: float = 0.5, rounds: int = 5, processes: int = 1) -> float:
    """Median µs of bench/core.py's bare `transitions` trigger (pay_now's machine shape), now.

    With `processes` > 1 the trigger is timed in that many spawned processes at once (they start
    timing together at a barrier), and their medians are averaged: a month run by K workers keeps
    K cores busy, and the trigger is timed under the same load, not on one core while the others
    idle. 0.0 when TOLLGATE_BENCH_CALIBRATE=0 (bench/instructions.py: under cachegrind, a loop
    timed by the clock would run a different number of times in each run)."""
    if os.environ.get("TOLLGATE_BENCH_CALIBRATE", "1") == "0":
        return 0.0
    if processes <= 1:
        return _time_trigger(seconds, rounds)
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes, timeout=120), context.SimpleQueue()
    timers = [context.Process(target=_time_trigger_together, args=(barrier, results, seconds, rounds))
              for _ in range(processes)]
    for timer in timers:
        timer.start()
    for timer in timers:
        timer.join()
        if timer.exitcode != 0:
            raise RuntimeError(f"A calibration process ended with exit code {timer.exitcode}.")
    return sum(results.get() for _ in timers) / processes


def _time_trigger(seconds: float, rounds: int, ready: Callable[[], object] = lambda: None) -> float:
    import timeit
    from statistics import median

    from bench.core import CASES, bare_trigger
    from tollgate.service.application.policy_files import load_policy_file

    case = next(c for c in CASES if c.event == "pay_now")
    call = bare_trigger(load_policy_file(ROOT / "rules.yaml").definitions[case.workflow], case)
    timer = timeit.Timer(call)
    timer.timeit(1000)  # warm-up
    number = max(1, int(1000 * (seconds / rounds) / max(timer.timeit(1000), 1e-9)))
    ready()
    return median(timer.timeit(number) / number * 1e6 for _ in range(rounds))


def _time_trigger_together(barrier: Any, results: Any, seconds: float, rounds: int) -> None:
    results.put(_time_trigger(seconds, rounds, ready=barrier.wait))


def run_month(url: str, n: int, *, progress: Progress | None = None, workers: int = 1) -> dict[str, Any]:
    """Drive the seeded month to its end; return seconds, applied transitions, peak RSS and the
    bare trigger's cost before and after the month (µs)."""
    from tollgate.service.application.runtime import Runtime
    from tollgate.service.storage.db import Database

    say = progress or (lambda _: None)
    runtime = Runtime(Database(url, synchronous=os.environ.get("TOLLGATE_BENCH_SYNCHRONOUS", "FULL")),
                      workers=workers)
    runtime.bootstrap(ROOT / "rules.yaml")
    started = time.perf_counter()
    runtime.start_workers()  # like a server's workers, started with the service, not timed with the month
    workers_start = time.perf_counter() - started
    trigger_before = bare_trigger_us(processes=workers)
    late = (datetime(2026, 11, 30, 21, tzinfo=KST)).isoformat()
    early = (datetime(2026, 11, 20, 10, tzinfo=KST)).isoformat()
    start, cpu = time.perf_counter(), time.process_time()
    runtime.advance_clock(CLOCK, CHARGED_AT, batch=BATCH, collect=False)
    say(f"N={n:,}: issued, autopay started ({time.perf_counter() - start:.1f} s)")
    runtime.fire_many(_gateway(n, "charged", "charge_succeeded", lambda i: {"payment_ref": f"pg{i}"}),
                      actor="gateway", batch=BATCH)
    runtime.advance_clock(CLOCK, EARLY_DEPOSITS_AT, batch=BATCH, collect=False)
    say(f"N={n:,}: charged, overdue, grace ({time.perf_counter() - start:.1f} s)")
    runtime.fire_many(_gateway(n, "early_deposit", "deposit",
                               lambda i: {"amount": usage(i), "deposited_at": early}),
                      actor="bank_feed", batch=BATCH)
    runtime.advance_clock(CLOCK, LATE_FEED_AT, batch=BATCH, collect=False)
    runtime.fire_many(_gateway(n, "late_deposit", "deposit",
                               lambda i: {"amount": usage(i), "deposited_at": late}),
                      actor="bank_feed", batch=BATCH)
    runtime.advance_clock(CLOCK, MONTH_END, batch=BATCH, collect=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    pool = runtime.parallel.pool
    optimistic = dict(runtime.sweeps.optimistic_counts + (pool.counts if pool else Counter()))
    runtime.close()  # the worker processes end here, so their peak RSS is counted below
    peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    trigger_after = bare_trigger_us(processes=workers)
    say(f"N={n:,}: month done in {seconds:.1f} s; checking")
    applied = verify_month(runtime, n)
    runtime.db.dispose()
    return {"n": n, "seconds": seconds, "cpu_seconds": cpu, "transitions": applied, "rate": applied / seconds,
            "workers": workers, "workers_start_seconds": workers_start, "optimistic_batches": optimistic,
            "peak_rss_mib": peak_kib / 1024, "trigger_us": (trigger_before + trigger_after) / 2,
            "trigger_us_before_after": [trigger_before, trigger_after]}


def verify_month(runtime: Any, n: int, *, clock: str | None = CLOCK,
                 expected: Callable[[int], str] = expected_state,
                 applied: Callable[[int], int] = lambda i: APPLIED[payer_kind(i)],
                 denied: Callable[[int], int] = lambda i: DENIED[payer_kind(i)],
                 once: tuple[str, ...] = ONCE) -> int:
    """Check the month with SQL (raises AssertionError); return the applied transitions.

    Every invoice is in `expected(i)`; `applied(i)` and `denied(i)` attempts in all; no event of
    `once` in the history twice for one invoice (applied or denied); no timer left.
    """
    from sqlalchemy import bindparam, text

    clock_sql = "clock IS NULL" if clock is None else "clock = :clock"
    with runtime.db.engine.connect() as conn:
        states = conn.execute(text("SELECT id, state FROM instances WHERE workflow = 'invoice'"))
        wrong = seen = 0
        for instance_id, state in states:
            seen += 1
            if state != expected(int(instance_id[3:])):
                wrong += 1
        assert seen == n, f"{seen} invoices, expected {n}"
        assert wrong == 0, f"{wrong} invoices did not reach their expected state"
        query = text("SELECT count(*) FROM (SELECT instance, event FROM history WHERE event IN :once "
                     "GROUP BY instance, event HAVING count(*) > 1) AS t")
        twice = conn.execute(query.bindparams(bindparam("once", expanding=True)),
                             {"once": list(once)}).scalar_one()
        assert twice == 0, f"{twice} once-only events in the history more than once for one invoice"
        left = conn.execute(text(f"SELECT count(*) FROM timers WHERE {clock_sql}"),
                            {"clock": clock}).scalar_one()
        assert left == 0, f"{left} timers left"
        counts = dict(conn.execute(text("SELECT outcome, count(*) FROM history GROUP BY outcome")).all())
        want_applied = sum(applied(i) for i in range(n))
        want_denied = sum(denied(i) for i in range(n))
        assert counts.get("applied", 0) == want_applied, f"{counts} attempts, expected {want_applied} applied"
        assert counts.get("denied", 0) == want_denied, f"{counts} attempts, expected {want_denied} denied"
    return want_applied


# ── subprocesses and figures ─────────────────────────────────────────────────────────────────

def _child(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print("progress: " + line, flush=True)

    if args.child == "seed":
        seed_month(args.url, args.n[0], progress=say)
        print(json.dumps({"seeded": args.n[0]}), flush=True)
    else:
        print(json.dumps(run_month(args.url, args.n[0], progress=say, workers=args.workers or WORKERS)),
              flush=True)
    return 0


def _spawn(mode: str, url: str, n: int, progress: Progress,
           env: dict[str, str] | None = None) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.billing", "--child", mode, "--url", url, "--n", str(n)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    assert process.stdout is not None
    last = ""
    for line in process.stdout:
        if line.startswith("progress: "):
            progress(line[len("progress: "):].rstrip())
        elif line.strip():
            last = line
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}")
    return orjson.loads(last)


def measure(n: int, progress: Progress, *, synchronous: str = "FULL",
            workers: int | None = None) -> dict[str, Any]:
    """Seed and run one month of n invoices in fresh subprocesses on a fresh SQLite file."""
    workers = WORKERS if workers is None else workers
    folder = Path(tempfile.mkdtemp(prefix="tollgate-billing-"))
    url = f"sqlite:///{folder / 'billing.db'}"
    try:
        progress(f"billing month: seeding N={n:,}")
        _spawn("seed", url, n, progress)
        progress(f"billing month: running N={n:,} (synchronous={synchronous}, workers={workers})")
        result = _spawn("run", url, n, progress, {"TOLLGATE_BENCH_SYNCHRONOUS": synchronous,
                                                   "TOLLGATE_BENCH_WORKERS": str(workers)})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    before, after = result["trigger_us_before_after"]
    progress(f"billing month N={n:,} (synchronous={synchronous}, workers={workers}): "
             f"{result['transitions']:,} transitions in {result['seconds']:.1f} s = {result['rate']:,.0f}/s, "
             f"peak RSS {result['peak_rss_mib']:.0f} MiB; workers started in "
             f"{result['workers_start_seconds']:.1f} s; batches {result['optimistic_batches']}; "
             f"bare trigger {before:.2f} µs before, {after:.2f} µs after")
    return result


def _figures(results: list[dict[str, Any]], normal: dict[str, Any] | None,
             alone: dict[str, Any] | None = None) -> list[Figure]:
    small, big = results[0], results[-1]
    durability = "SQLite file, WAL, synchronous=FULL (a commit survives power loss)"
    figures = [Figure(f"billing.sqlite.N={r['n']:,}", r["rate"], "transitions/s", GOAL_RATE, 1.0, ">=",
                      f"{r['transitions']:,} applied transitions in {r['seconds']:.1f} s with "
                      f"{r['workers']} worker process(es); {durability}; baseline = the goal rate")
               for r in results]
    if alone is not None:
        paired = next(r for r in results if r["n"] == alone["n"])
        figures.append(Figure(f"billing.sqlite.one_process.N={alone['n']:,}", alone["rate"], "transitions/s",
                              paired["rate"], None, ">=",
                              f"the same month in one process (workers=1) ÷ with {paired['workers']} "
                              "workers, side by side"))
    figures += [Figure(f"billing.sqlite.N={r['n']:,}.cost_in_bare_triggers", 1e6 / r["rate"], "us/transition",
                       r["trigger_us"], None, "<=",
                       "wall time per applied transition ÷ a bare transitions trigger timed before and "
                       f"after the month in {r['workers']} process(es) at once, one per core the month "
                       f"kept busy (machine-speed calibration; the goal's {GOAL_RATE:,.0f}/s is "
                       f"{1e6 / GOAL_RATE:.0f} µs)")
                for r in results]
    figures.append(Figure("billing.sqlite.rate_at_large_n", big["rate"], "transitions/s", small["rate"],
                          0.9, ">=",
                          f"rate at N={big['n']:,} ÷ rate at N={small['n']:,} (no super-linear step)"))
    figures.append(Figure("billing.sqlite.peak_rss_at_large_n", big["peak_rss_mib"], "MiB",
                          small["peak_rss_mib"], 1.25, "<=",
                          f"peak RSS of the month at N={big['n']:,} ÷ at N={small['n']:,}"))
    if normal is not None:
        figures.append(Figure(f"billing.sqlite.synchronous_normal.N={normal['n']:,}", normal["rate"],
                              "transitions/s", small["rate"], None, ">=",
                              "synchronous=NORMAL in WAL mode ÷ FULL at the same N: still never corrupt, but "
                              "a power loss (not a process crash) can lose the last commits"))
    return figures


def billing_figures(quick: bool = False, progress: Progress | None = None,
                    sizes: tuple[int, ...] | None = None, workers: int | None = None) -> list[dict[str, Any]]:
    """The billing-month figures as dicts in bench/report.py's shape."""
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    workers = workers or WORKERS
    results = [measure(n, say, workers=workers) for n in (sizes or (QUICK_N if quick else FULL_N))]
    # side by side at the first N (at --quick's sizes only the last has instants big enough for the workers)
    alone = measure(results[-1 if quick else 0]["n"], say, workers=1) if workers > 1 else None
    normal = None if quick else measure(results[0]["n"], say, synchronous="NORMAL", workers=workers)
    return [f.as_dict() for f in _figures(results, normal, alone)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.billing", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"N = {', '.join(map(str, QUICK_N))}")
    parser.add_argument("--n", type=int, nargs="+", help="invoice counts (default: 100,000 and 1,000,000)")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--workers", type=int, metavar="K",
                        help=f"worker processes of the month's runtime (default {WORKERS}, "
                        "$TOLLGATE_BENCH_WORKERS)")
    parser.add_argument("--child", choices=("seed", "run"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    sizes = tuple(args.n) if args.n else None
    figures = [Figure.from_dict(d) for d in billing_figures(args.quick, sizes=sizes, workers=args.workers)]
    print_table(figures)
    if args.json:
        write_json(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
