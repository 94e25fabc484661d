"""The wheel, installed with its runtime dependencies only (no test extras), checks event data formats.

The test extras pull in optional packages (e.g. `rfc3339-validator`, through schemathesis) that a
plain install lacks; a check that silently depends on one of them passes here and fails in
production. So this builds the wheel, installs it into a fresh virtualenv with `pip install`
(packages from the index configured on this machine) and runs a script through the app there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, RULES_PATH

STEP_TIMEOUT = 600  # seconds per pip or script step; the machine is shared

SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    from datetime import UTC, datetime

    assert importlib.util.find_spec("rfc3339_validator") is None, "not a plain install"
    from service.app import create_app

    app = create_app({"TESTING": True, "DATABASE_URL": sys.argv[1], "RULES": sys.argv[2],
                      "TOKENS": "admin=tok-admin", "BATCH_WORKERS": "1",
                      "NOW": lambda: datetime(2025, 3, 5, 3, tzinfo=UTC)})
    client = app.test_client()
    auth = {"Authorization": "Bearer tok-admin"}

    def call(path, body, status):
        response = client.post(path, json=body, headers=auth)
        assert response.status_code == status, (path, response.status_code, response.get_json())
        return response.get_json()

    account = call("/workflows/signup/instances", {"context": {}}, 201)["id"]
    invoice = call("/workflows/invoice/instances",
                   {"context": {"account": account, "usage_month": "2025-02"}}, 201)["id"]
    call(f"/instances/{invoice}/events", {"event": "add_usage", "data": {"amount": 5000}}, 200)
    call(f"/instances/{invoice}/events", {"event": "issue", "data": {}}, 200)
    refused = call(f"/instances/{invoice}/events",
                   {"event": "deposit", "data": {"amount": 1000, "deposited_at": "garbage"}}, 400)
    print(json.dumps(refused))
""")


def _run(*command: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd,
                          timeout=STEP_TIMEOUT)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_a_plain_install_answers_a_malformed_deposited_at_with_400(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "*.db*"))
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheels, source)
    (wheel,) = wheels.glob("tollgate-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", wheel)
    script = tmp_path / "check.py"
    script.write_text(SCRIPT, encoding="utf-8")
    # run outside the checkout, so that the installed package is imported, not the worktree
    output = _run(python, script, f"sqlite:///{tmp_path / 'plain.db'}", RULES_PATH, cwd=tmp_path)
    refused = json.loads(output.strip().splitlines()[-1])
    assert "deposited_at" in refused["detail"], refused
