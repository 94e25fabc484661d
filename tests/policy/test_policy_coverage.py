"""CI holds the bundled scenarios at 100% coverage of the bundled policy: every rule seen both
holding and failing on each event it is judged on, every transition taken, every timer fired.
A new rule, transition or timer without a scenario fails here, naming what is never exercised."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.paths import RULES_PATH
from tollgate.service.application.policy_files import load_policy_file
from tollgate.service.application.scenario_coverage import KINDS, measure
from tollgate.service.application.scenarios import load_scenarios, run_files

HERE = Path(__file__).parent


def test_the_bundled_scenarios_pass_and_cover_the_whole_bundled_policy() -> None:
    files = [load_scenarios(path) for path in sorted(HERE.glob("*.yaml"))]
    assert len(files) >= 4
    results = run_files(files, RULES_PATH)
    assert [str(f) for r in results for f in r.failures] == []
    coverage = measure(load_policy_file(str(RULES_PATH)), [r.seen for r in results])
    gaps = "\n".join(coverage.never_exercised())
    assert {kind: coverage.percent(kind) for kind in KINDS} == {kind: 100.0 for kind in KINDS}, \
        f"never exercised by tests/policy:\n{gaps}"
    assert coverage.counts("rules")[1] >= 35 and coverage.counts("transitions")[1] >= 66
