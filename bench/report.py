"""Benchmark figures: one shape for every measurement, a table printer and a JSON writer.

Every figure is a ratio against a baseline measured in the same run on the same machine, so a
`tollgate bench` run can collect figures from several suites and report them side by side.
"""

from __future__ import annotations

import json
import operator
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["Figure", "print_table", "write_json"]

#: How a goal compares the ratio with its bound: "<=" (cost) or ">=" (throughput).
_COMPARE: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Figure:
    """One measured figure: `value` and `baseline` in `unit`, `ratio` = value / baseline.

    `goal` is the bound on the ratio (e.g. 2.0) and `direction` says which side of it is good;
    `met` is None when the figure has no goal (informational).
    """

    name: str
    value: float
    unit: str
    baseline: float
    goal: float | None = None
    direction: str = "<="
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("inf")

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        return _COMPARE[self.direction](self.ratio, self.goal)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Figure:
        """The figure a JSON object (as `as_dict` or a suite's figure function writes it) describes."""
        return cls(row["name"], float(row["value"]), row["unit"], float(row["baseline"]), row.get("goal"),
                   row.get("direction", "<="), row.get("note", ""))

    def as_dict(self) -> dict[str, Any]:
        """The JSON object: name, value, unit, baseline, ratio, goal, direction, met (and note)."""
        out = asdict(self)
        note = out.pop("note")
        out.update(value=round(self.value, 3), baseline=round(self.baseline, 3),
                   ratio=round(self.ratio, 3), met=self.met)
        if note:
            out["note"] = note
        return out


def _goal_text(figure: Figure) -> str:
    return "" if figure.goal is None else f"{figure.direction} {figure.goal:g}x"


def _met_text(figure: Figure) -> str:
    return {True: "yes", False: "NO", None: "-"}[figure.met]


def print_table(figures: Iterable[Figure], out: IO[str] | None = None) -> None:
    """A fixed-width table: name, value, baseline, ratio, goal, met."""
    stream = out or sys.stdout
    rows = [("figure", "value", "baseline", "ratio", "goal", "met")]
    for f in figures:
        rows.append((f.name, f"{f.value:.2f} {f.unit}", f"{f.baseline:.2f} {f.unit}",
                     f"{f.ratio:.2f}x", _goal_text(f), _met_text(f)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                          strict=True)]
        print("  ".join(cells), file=stream)
        if index == 0:
            print("  ".join("-" * w for w in widths), file=stream)


def write_json(figures: Iterable[Figure], path: str | Path) -> None:
    """Write the figures as a JSON list of objects (one per figure)."""
    data = [f.as_dict() for f in figures]
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
