"""Impact replay: what judging a recorded attempt again costs, and that a big replay stays flat.

Two suites of `tollgate bench`:

* `replay` — for each event of bench/core.py's cases, the cost of one attempt in an impact report
  (`workflows.replay.judge_again` twice: under the version that judged it, the self-check, and
  under a candidate) ÷ the core's cost of judging the event (`Engine.decide`), timed side by side
  in alternating rounds like bench/core.py, every call at a new instant (no memo reused). Goal ≤ 3×.
* `replay_1m` — `tollgate rules impact` over a SQLite history of 100,000 and 1,000,000 attempts
  (payment-method choices around the restricted hours, spread over a year; a candidate that moves
  the hours), each report in a fresh subprocess: its peak RSS at 1,000,000 ÷ at 100,000 (goal ≤
  1.1×: flat, the history is read in keyset batches) and its cost per attempt end to end (read,
  decode, two replays; informational). The seed is written with sqlite3 and not measured.

Run `python -m bench.replay [--quick] [--only-memory] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.core import _INSTANTS, CASES, CoreCase, engine_call, measure_pair
from bench.report import Figure, print_table, write_json
from tollgate.service.application.passwords import new_engine
from tollgate.service.application.policy_files import load_policy
from tollgate.workflows.engine import Engine
from tollgate.workflows.replay import judge_again, record_inputs, replay_engine

ROOT = Path(__file__).resolve().parent.parent
GOAL = 3.0
FLAT = 1.1
_KST = ZoneInfo("Asia/Seoul")
Progress = Callable[[str], None]


def _rules() -> str:
    from tollgate.bundled import default_rules_path

    path = Path(default_rules_path())
    return (path if path.exists() else ROOT / "rules.yaml").read_text(encoding="utf-8")


def _candidate(text: str) -> str:
    return text.replace('      start: "23:00"', '      start: "22:00"', 1)


# ── replay ÷ core, per attempt ───────────────────────────────────────────────────────────────


def replay_call(judged: Engine, candidate: Engine, core: Engine, case: CoreCase) -> Callable[[], Any]:
    """One attempt of an impact report: the case's recorded inputs judged again under the version
    that judged it and under the candidate, each call at a new instant."""
    snapshot = case.snapshot()
    outcome = core.decide(snapshot, case.event, dict(case.data), case.now)
    inputs = json.loads(json.dumps(record_inputs(core, case.workflow, case.event, dict(case.context),
                                                 case.account, case.account is not None, dict(case.facts),
                                                 outcome.reasons)))
    data = json.loads(json.dumps(outcome.data))
    instants = itertools.cycle([case.now + timedelta(microseconds=i) for i in range(_INSTANTS)])
    workflow, event, state = case.workflow, case.event, case.state

    def call() -> Any:
        now = next(instants)
        judge_again(judged, "bench-1", workflow, event, state, data, inputs, now)
        return judge_again(candidate, "bench-1", workflow, event, state, data, inputs, now)

    return call


def replay_figures(quick: bool = False, progress: Progress | None = None) -> list[Figure]:
    text = _rules()
    policy = load_policy(text, "rules.yaml")
    core = new_engine(policy)
    judged, candidate = replay_engine(policy), replay_engine(load_policy(_candidate(text), "candidate.yaml"))
    repeat, seconds = (5, 0.02) if quick else (15, 0.1)
    figures = []
    for case in CASES:
        baseline, replay = engine_call(core, case), replay_call(judged, candidate, core, case)
        verdict = replay()
        if verdict.outcome != "applied":
            raise RuntimeError(f"The replay of {case.name} gave {verdict}; fix the case.")
        if progress:
            progress(f"replay.{case.workflow}.{case.event}: {repeat} rounds")
        core_us, replay_us = measure_pair(baseline, replay, repeat=repeat, seconds=seconds)
        figures.append(Figure(f"replay.{case.workflow}.{case.event}", replay_us, "us/attempt", core_us,
                              goal=GOAL, note="two replays (self-check + candidate) per attempt ÷ "
                              "Engine.decide of the same event"))
    return figures


# ── a million attempts, flat memory ──────────────────────────────────────────────────────────

_BASE = datetime(2025, 10, 1, 0, 0, tzinfo=_KST)
_CORPORATE = {"card_type": "corporate", "card_owner": "corporation"}
_ACCOUNT = {"partner": False, "country": "KR", "member_type": "business", "email": "biz@example.com",
            "id": "acct_bench", "state": "payment_method_required"}
_PER_INSTANCE = 10


def _restricted(moment: datetime) -> bool:
    """bundled restricted_hours: 23:00 to 09:00 KST (the seed's verdicts; the self-check checks them)."""
    clock = moment.astimezone(_KST).time()
    return clock.hour >= 23 or clock.hour < 9


def _rows(n: int) -> Iterator[tuple[Any, ...]]:
    inputs = json.dumps({"context": {"account": "acct_bench", "channel": "web"}, "account": _ACCOUNT})
    denied = json.dumps([{"rule": "restricted_hours", "ko": "", "en": "", "detail": None}])
    for i in range(n):
        method = "check_card" if i % 2 else "credit_card"
        at = _BASE + timedelta(seconds=37 * i)
        refused = method == "check_card" and _restricted(at)
        data = json.dumps({"method": method, **_CORPORATE})
        yield (f"pm_{i // _PER_INSTANCE:07d}", i % _PER_INSTANCE + 1, "select_method", "method_selection",
               "method_selection" if refused else "phone_verification", "denied" if refused else "applied",
               denied if refused else "[]", "[]", data,
               at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" "), 1, "bench", inputs)


def seed(path: Path, n: int, rules: str) -> None:
    """A migrated SQLite file with the bundled rules as version 1 and `n` recorded attempts."""
    from tollgate.service.storage.db import Database

    url = f"sqlite:///{path}"
    db = Database(url)
    db.migrate()
    db.dispose()
    policy = load_policy(rules, "rules.yaml")
    conn = sqlite3.connect(path)
    now = datetime(2026, 11, 30).isoformat(sep=" ")
    conn.execute("INSERT INTO rules_versions (sha256, yaml, source, activated_at, activated_by) "
                 "VALUES (?, ?, 'bench', ?, 'bench')", (policy.sha256, rules, now))
    context = json.dumps({"account": "acct_bench", "channel": "web"})
    conn.executemany("INSERT INTO instances (id, workflow, state, context, secrets, version, history_seq, "
                     "account, created_at, updated_at) VALUES (?, 'payment_method', 'method_selection', ?, "
                     "'{}', 1, ?, 'acct_bench', ?, ?)",
                     ((f"pm_{k:07d}", context, _PER_INSTANCE, now, now)
                      for k in range((n + _PER_INSTANCE - 1) // _PER_INSTANCE)))
    conn.executemany("INSERT INTO history (instance, seq, event, from_state, to_state, outcome, reasons, "
                     "notes, data, at, rules_version, actor, inputs) VALUES "
                     "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     _rows(n))
    conn.commit()
    conn.close()


def _child(path: str, candidate_path: str) -> int:
    """Run one impact report over the file; print its figures as one JSON line."""
    from tollgate.service.application.impact import Impact
    from tollgate.service.application.policy_files import load_policy_file
    from tollgate.service.application.rules_history import RulesHistory
    from tollgate.service.storage.db import Database

    candidate = load_policy_file(candidate_path)
    db = Database(f"sqlite:///{path}")
    started = time.perf_counter()
    report = Impact(db, RulesHistory(db)).report(candidate, None)
    seconds = time.perf_counter() - started
    db.dispose()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"attempts": report.attempts, "reproduced": report.reproduced,
                      "mismatched": report.mismatch_count, "changed": report.verdict_changes(),
                      "seconds": seconds, "peak_kib": peak_kib}))
    return 0


def _measure(n: int, rules: str, progress: Progress) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tollgate-replay-") as folder:
        path = Path(folder) / "history.db"
        started = time.perf_counter()
        seed(path, n, rules)
        progress(f"replay_1m: {n:,} attempts seeded in {time.perf_counter() - started:.0f} s")
        candidate = Path(folder) / "candidate.yaml"
        candidate.write_text(_candidate(rules), encoding="utf-8")
        answer = subprocess.run([sys.executable, "-m", "bench.replay", "--child", str(path), str(candidate)],
                                cwd=ROOT, capture_output=True, text=True, check=False,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        if answer.returncode != 0:
            raise RuntimeError(f"The replay of {n:,} attempts failed: {answer.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(answer.stdout.strip().splitlines()[-1])
    if result["mismatched"] or result["reproduced"] != n:
        raise RuntimeError(f"The self-check failed on the seeded history: {result}")
    progress(f"replay_1m: {n:,} attempts replayed in {result['seconds']:.0f} s, peak RSS "
             f"{result['peak_kib'] / 1024:.0f} MiB, {result['changed']:,} verdicts would change")
    return result


def replay_memory_figures(quick: bool = False, progress: Progress | None = None) -> list[Figure]:
    say = progress or (lambda _text: None)
    rules = _rules()
    small, big = (20_000, 200_000) if quick else (100_000, 1_000_000)
    first, last = _measure(small, rules, say), _measure(big, rules, say)
    core = new_engine(load_policy(rules, "rules.yaml"))
    case = next(c for c in CASES if c.event == "select_method")
    call = engine_call(core, case)
    core_us, _ = measure_pair(call, call, repeat=5, seconds=0.05)
    return [
        Figure(f"replay.sqlite.peak_rss.N={big}", last["peak_kib"] / 1024, "MiB", first["peak_kib"] / 1024,
               goal=FLAT, note=f"peak RSS of `rules impact` over {big:,} attempts ÷ over {small:,}"),
        Figure(f"replay.sqlite.per_attempt.N={big}", last["seconds"] / big * 1e6, "us/attempt", core_us,
               note="end to end (keyset batches read and decoded, two replays) ÷ Engine.decide of "
                    "select_method; informational"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only-memory", action="store_true", help="only the 100k / 1M replay")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--child", nargs=2, metavar=("DB", "CANDIDATE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(*args.child)

    def progress(text: str) -> None:
        print(f"… {text}", file=sys.stderr, flush=True)

    figures = [] if args.only_memory else replay_figures(args.quick, progress)
    figures += replay_memory_figures(args.quick, progress)
    print_table(figures)
    if args.json:
        write_json(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
