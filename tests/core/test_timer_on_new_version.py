"""`on_new_version` of a timer (rules.yaml): what a new rules version taking effect does to the
timer where it is already armed. The loader reads it (default `replan`), the schema refuses
anything but `replan` or `keep` at its path, and every bundled timer declares it explicitly."""

from __future__ import annotations

import yaml

from tests.helpers.paths import RULES_PATH
from tollgate.service.application.policy_files import check, load_policy


def test_every_bundled_timer_declares_it() -> None:
    raw = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    declared = {name: spec.get("on_new_version") for name, spec in raw["timers"].items()}
    assert None not in declared.values(), declared
    policy = load_policy(RULES_PATH.read_text(encoding="utf-8"))
    assert {name: timer.on_new_version for name, timer in policy.timers.items()} == declared
    assert declared["signup_abandoned"] == "replan" and declared["grace_deadline"] == "keep"


def test_it_defaults_to_replan() -> None:
    original = RULES_PATH.read_text(encoding="utf-8")
    assert original.endswith("    on_new_version: keep\n")  # grace_deadline's, the last timer
    text = original.removesuffix("    on_new_version: keep\n")
    assert load_policy(text).timers["grace_deadline"].on_new_version == "replan"


def test_another_value_is_refused_at_its_path() -> None:
    original = RULES_PATH.read_text(encoding="utf-8")
    text = original.removesuffix("    on_new_version: keep\n") + "    on_new_version: later\n"
    problems = check(text, "rules.yaml")
    assert [p.path for p in problems] == ["$.timers.grace_deadline.on_new_version"]
    line = text[:text.index("on_new_version: later")].count("\n") + 1
    assert problems[0].line == line
