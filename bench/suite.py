"""`tollgate bench`: every benchmark figure of one run, as a table and a JSON list.

The suites run in order (core, http, billing, workers, replay, replay_1m, relay) with
progress on stderr; each returns its figures (`bench.report.Figure`s or their JSON objects). A suite whose
module is not there yet, or that cannot run here (no wrk, no PostgreSQL), gives one "not
available" row saying why instead of stopping the others. The JSON list has one object per
figure: `name, value, unit, baseline, ratio, goal, met` (bool) and extra keys (`direction`,
`note`, raw runs); a row not available has `value` null, `met` false and `available` false.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.report import Figure, print_table

__all__ = ["SUITES", "Outcome", "run", "run_suites"]

REPO = Path(__file__).resolve().parent.parent
Progress = Callable[[str], None]


Measure = Callable[[bool, Progress], list[Any]]


def _core(quick: bool, progress: Progress) -> list[Any]:
    from bench.core import core_figures
    from tollgate.bundled import default_rules_path
    from tollgate.service.application.policy_files import load_policy_file

    rules = default_rules_path()
    policy = load_policy_file(rules if Path(rules).exists() else REPO / "rules.yaml")
    return core_figures(policy, quick=quick, progress=progress)


def _http(quick: bool, progress: Progress) -> list[Any]:
    from bench.http import http_figures

    return http_figures(quick=quick, progress=progress)


def _here(measure: Measure) -> Callable[[], Measure]:
    return lambda: measure


def _lazy(module: str, function: str) -> Callable[[], Measure]:
    """A suite written elsewhere: `module.function(quick, progress)`, looked up when it runs
    (ImportError or AttributeError: not there yet)."""

    def load() -> Measure:
        measure: Measure = getattr(importlib.import_module(module), function)
        return measure

    return load


#: name → (what it measures, a loader of the function that measures it).
SUITES: Mapping[str, tuple[str, Callable[[], Measure]]] = {
    "core": ("one event in memory ÷ a bare transitions trigger", _here(_core)),
    "http": ("POST /instances/{id}/events on tollgate serve ÷ a Flask JSON echo, wrk", _here(_http)),
    "billing": ("the billing month on SQLite, N = 100,000 and 1,000,000",
                _lazy("bench.billing", "billing_figures")),
    "workers": ("the billing month on PostgreSQL with 1, 2 and 4 workers",
                _lazy("bench.workers", "worker_figures")),
    "replay": ("one attempt replayed by `rules impact` (self-check + candidate) ÷ one event in the core",
               _lazy("bench.replay", "replay_figures")),
    "replay_1m": ("`rules impact` over 100,000 and 1,000,000 recorded attempts: peak RSS, cost per attempt",
                  _lazy("bench.replay", "replay_memory_figures")),
    "relay": ("webhooks through the relay ÷ a bare send loop; a 10,000-invoice month delivered once",
              _lazy("bench.relay", "relay_figures")),
}


@dataclass(frozen=True)
class Outcome:
    """What one suite gave: its JSON objects, or why it is not available."""

    suite: str
    rows: list[dict[str, Any]]
    seconds: float
    error: str | None = None


def _row(figure: Any) -> dict[str, Any]:
    """A figure's JSON object (from a Figure or a dict in its shape), `met` always a bool."""
    row = dict(figure.as_dict() if isinstance(figure, Figure) else figure)
    missing = [key for key in ("name", "value", "unit", "baseline") if key not in row]
    if missing:
        raise ValueError(f"The figure {row.get('name', row)!r} has no {', '.join(missing)}.")
    value, baseline = float(row["value"]), float(row["baseline"])
    row.setdefault("ratio", round(value / baseline, 3) if baseline else None)
    row.setdefault("goal", None)
    if not isinstance(row.get("met"), bool):
        row["met_goal"] = row.get("met")  # None: an informational figure without a goal
        row["met"] = bool(row.get("met"))
    return row


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such numbers (a zero baseline) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _unavailable(suite: str, reason: str) -> dict[str, Any]:
    return {"name": suite, "value": None, "unit": None, "baseline": None, "ratio": None, "goal": None,
            "met": False, "available": False, "note": f"not available: {reason}"}


def _prefixed(name: str, progress: Progress) -> Progress:
    return lambda text: progress(text if text.startswith(name) else f"{name}: {text}")


def run_suites(names: Sequence[str], *, quick: bool, progress: Progress,
               after: Callable[[list[Outcome]], None] | None = None) -> list[Outcome]:
    """Run the named suites in order; a suite that fails becomes one "not available" row.

    `after` sees the outcomes so far after each suite (to keep a partial JSON file on a long run).
    """
    outcomes: list[Outcome] = []
    for name in names:
        _what, load = SUITES[name]
        started = time.perf_counter()
        progress(f"{name}: starting{' (quick)' if quick else ''}")
        rows: list[dict[str, Any]] = []
        error: str | None = None
        try:
            measure = load()
        except (ImportError, AttributeError) as missing:
            error = f"its entry point is not there yet ({missing})"
        else:
            try:
                rows = [_row(f) for f in measure(quick, _prefixed(name, progress))]
            except Exception as failure:  # one suite's failure must not lose the others' figures
                progress(f"{name}: failed:\n{traceback.format_exc().rstrip()}")
                error = f"{type(failure).__name__}: {failure}"
        if error is not None:
            rows = [_unavailable(name, error)]
        seconds = time.perf_counter() - started
        progress(f"{name}: {'not available' if error else 'done'} in {seconds:.1f} s")
        outcomes.append(Outcome(name, rows, seconds, error))
        if after is not None:
            after(outcomes)
    return outcomes


def run(names: Sequence[str] | None = None, *, quick: bool = False, json_path: str | Path | None = None,
        out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run the suites, print the table (and what is not available), write the JSON list (after
    each suite, so a long run that is stopped keeps the figures it has).

    Exit code 0 when every suite ran (goals met or not: see the `met` column), 1 when one could not.
    """
    stream, errors = out or sys.stdout, err or sys.stderr
    names = list(names or SUITES)
    started = time.perf_counter()

    def progress(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {text}", file=errors, flush=True)

    def write(outcomes: list[Outcome]) -> None:
        if json_path:
            rows = [row for outcome in outcomes for row in outcome.rows]
            text = json.dumps(_finite(rows), indent=2, ensure_ascii=False, allow_nan=False, default=str)
            Path(json_path).write_text(text + "\n", encoding="utf-8")

    outcomes = run_suites(names, quick=quick, progress=progress, after=write)
    rows = [row for outcome in outcomes for row in outcome.rows]
    print_table([Figure.from_dict(r) for r in rows if r.get("available", True)], stream)
    for outcome in outcomes:
        if outcome.error:
            print(f"{outcome.suite}: not available — {outcome.error}", file=stream)
    print(f"{len(rows)} rows in {time.perf_counter() - started:.0f} s"
          f"{' (--quick: small N, not the reported figures)' if quick else ''}", file=stream)
    return 1 if any(outcome.error for outcome in outcomes) else 0


def parse_only(text: str | None) -> list[str]:
    """`core,http` → ["core", "http"] (in the suites' order); an unknown name is a ValueError."""
    if not text:
        return list(SUITES)
    wanted = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in SUITES]
    if unknown or not wanted:
        raise ValueError(f"Unknown benchmark {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(SUITES)}, comma-separated.")
    return [name for name in SUITES if name in wanted]


if __name__ == "__main__":
    from tollgate.service.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
