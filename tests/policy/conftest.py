"""Collect the policy scenarios of this folder as pytest items, one per scenario.

Each `*.yaml` here is a scenario file (`schemas/scenario.schema.json`), the same files
`tollgate rules test` runs; an item fails with the runner's `file:line: expected …, got …` lines.
A scenario file with problems fails collection with each problem's file:line:column and path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.paths import RULES_PATH
from tollgate.service.application.scenarios import ScenarioFile, load_scenarios, run_scenario
from tollgate.workflows.exceptions import RulesError

HERE = Path(__file__).parent


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix == ".yaml" and file_path.parent == HERE:
        return ScenarioCollector.from_parent(parent, path=file_path)
    return None


class ScenarioFailed(Exception):
    """A scenario's failed expectations (the runner's report)."""


class ScenarioCollector(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        try:
            loaded = load_scenarios(self.path)
        except RulesError as error:
            raise self.CollectError("\n".join(str(p) for p in error.problems)) from None
        for index, scenario in enumerate(loaded.scenarios):
            yield ScenarioItem.from_parent(self, name=scenario["name"], loaded=loaded, index=index)


class ScenarioItem(pytest.Item):
    def __init__(self, *, loaded: ScenarioFile, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loaded, self.index = loaded, index

    def runtest(self) -> None:
        result = run_scenario(self.loaded, self.index, RULES_PATH)
        if result.failures:
            raise ScenarioFailed("\n".join(str(f) for f in result.failures))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.loaded.doc.where(("scenarios", self.index))[0]
        return self.path, (line - 1) if line else None, f"scenario: {self.name}"
