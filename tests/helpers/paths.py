"""Where the checkout's files are, for every layer's tests: the root, the bundled rules, the YAML cases."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES_PATH = ROOT / "rules.yaml"
CASES = ROOT / "tests" / "cases"
