"""Instructions per applied transition of the billing month, counted by cachegrind.

On this shared machine the same month's wall-clock rate moves by a third between runs; the
number of instructions it executes hardly moves (two runs of one build: 446,582 and 445,894 per
transition, 0.15% apart, each on freshly seeded files). This tool
seeds a month at two sizes, runs each under `valgrind --tool=cachegrind --cache-sim=no` (the
two sizes side by side, one per core) and reports

    (instructions at N2 − instructions at N1) / (applied transitions at N2 − at N1)

so start-up (imports, migrations, building the engine) cancels out. Only user-space
instructions are counted: time spent in the kernel (system calls, page faults) is not, so a
change to I/O still needs /proc/self/io or a wall-clock A/B. `--top K` lists the K functions
whose per-transition count is largest (SQLite's and orjson's static functions show as ???).

Run `python -m bench.instructions [--n 1000 2000] [--top 30]` (needs valgrind; a couple of
minutes). bench/NOTES.md records the counts of each change.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["Profile", "main", "per_transition", "read_cachegrind"]


class Profile:
    """One cachegrind output: total instructions and instructions per (file, function)."""

    def __init__(self, total: int, functions: Counter[tuple[str, str]]) -> None:
        self.total = total
        self.functions = functions


def read_cachegrind(text: str) -> Profile:
    """Parse a `cachegrind.out` file recorded with the single event Ir (`--cache-sim=no`)."""
    functions: Counter[tuple[str, str]] = Counter()
    file = function = "???"
    total: int | None = None
    for line in text.splitlines():
        if line.startswith("fl="):
            file = line[3:].rsplit("/", 1)[-1]
        elif line.startswith("fn="):
            function = line[3:]
        elif line.startswith("summary:"):
            total = int(line.split()[1])
        elif line[:1].isdigit():
            parts = line.split()
            if len(parts) >= 2:
                functions[(file, function)] += int(parts[1])
    if total is None:
        raise ValueError("The cachegrind output has no 'summary:' line; did valgrind finish?")
    return Profile(total, functions)


def per_transition(small: Profile, large: Profile, transitions: int) -> tuple[float, list[tuple[str, float]]]:
    """Instructions per transition in all and per function (largest first) between two runs."""
    if transitions <= 0:
        raise ValueError("The larger month must apply more transitions than the smaller one.")
    each = {f"{file}:{function}": (count - small.functions.get((file, function), 0)) / transitions
            for (file, function), count in large.functions.items()}
    ranked = sorted(each.items(), key=lambda item: -item[1])
    return (large.total - small.total) / transitions, ranked


def _month(n: int, folder: Path) -> tuple[Profile, int]:
    """Seed a month of n invoices (not counted), then run it under cachegrind."""
    url = f"sqlite:///{folder / f'month{n}.db'}"
    python = [sys.executable, "-m", "bench.billing"]
    subprocess.run([*python, "--child", "seed", "--url", url, "--n", str(n)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    out = folder / f"cachegrind.{n}.out"
    env = {**os.environ, "TOLLGATE_BENCH_CALIBRATE": "0", "PYTHONHASHSEED": "0"}
    done = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
                           *python, "--child", "run", "--url", url, "--n", str(n)],
                          cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return read_cachegrind(out.read_text()), int(result["transitions"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs=2, default=[1_000, 2_000], metavar=("N1", "N2"),
                        help="the two month sizes (default: 1000 2000)")
    parser.add_argument("--top", type=int, default=0, metavar="K", help="also list the K largest functions")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
        return 1
    n1, n2 = sorted(args.n)
    folder = Path(tempfile.mkdtemp(prefix="tollgate-instructions-"))
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            (small, t1), (large, t2) = pool.map(lambda n: _month(n, folder), (n1, n2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    each, ranked = per_transition(small, large, t2 - t1)
    print(f"N={n1:,}: {small.total:,} instructions, {t1:,} transitions")
    print(f"N={n2:,}: {large.total:,} instructions, {t2:,} transitions")
    print(f"instructions per applied transition: {each:,.0f}")
    for name, count in ranked[:args.top]:
        print(f"{count:10,.0f}  {100 * count / each:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
