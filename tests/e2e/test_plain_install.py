"""The wheel, installed with its runtime dependencies only (no test extras), runs from an empty directory.

The test extras pull in optional packages (e.g. `rfc3339-validator`, through schemathesis) that a
plain install lacks; a check that silently depends on one of them passes here and fails in
production. A checkout also hides files the wheel forgets (the bundled rules.yaml once). So this
builds the wheel once, installs it into a fresh virtualenv with `pip install` (packages from the
index configured on this machine), and runs the `tollgate` command and the app there, in an empty
directory, where only the installed package can be imported.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT, RULES_PATH

pytestmark = pytest.mark.e2e

STEP_TIMEOUT = 600  # seconds per pip or script step; the machine is shared

SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    from datetime import UTC, datetime

    assert importlib.util.find_spec("rfc3339_validator") is None, "not a plain install"
    from tollgate.service.app import create_app

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


def _run(*command: str | Path, cwd: Path | None = None, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd,
                          timeout=STEP_TIMEOUT, env=env)
    if check:
        assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done


@dataclass(frozen=True)
class Installed:
    """A virtualenv holding only the wheel and its runtime dependencies, and an empty directory."""

    venv: Path
    empty: Path
    env: dict[str, str]

    @property
    def tollgate(self) -> Path:
        return self.venv / "bin" / "tollgate"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(self.tollgate, *args, cwd=self.empty, check=check, env=self.env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("plain")
    source = base / "source"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "*.db*"))
    wheels = base / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheels, source)
    (wheel,) = wheels.glob("tollgate_workflows-*.whl")
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
    empty = base / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_") and k != "PYTHONPATH"}
    return Installed(venv, empty, env)


@pytest.mark.slow
def test_a_plain_install_answers_a_malformed_deposited_at_with_400(
        installed: Installed, tmp_path: Path) -> None:
    script = tmp_path / "check.py"
    script.write_text(SCRIPT, encoding="utf-8")
    # run outside the checkout, so that the installed package is imported, not the worktree
    output = _run(installed.python, script, f"sqlite:///{tmp_path / 'plain.db'}", RULES_PATH,
                  cwd=tmp_path, env=installed.env).stdout
    refused = json.loads(output.strip().splitlines()[-1])
    assert "deposited_at" in refused["detail"], refused


@pytest.mark.slow
def test_the_wheel_installs_one_import_package_and_no_generic_top_level_names(installed: Installed) -> None:
    site = Path(_run(installed.python, "-c", "import tollgate, pathlib; print(pathlib.Path("
                     "tollgate.__file__).parent.parent)", cwd=installed.empty, env=installed.env
                     ).stdout.strip())
    for generic in ("workflows", "service", "schemas", "bench", "tests"):
        assert not (site / generic).exists(), f"the wheel installs a top-level package {generic!r}"
    assert (site / "tollgate" / "rules.yaml").is_file()
    assert not (site / "tollgate" / "rules.yaml").is_symlink()


@pytest.mark.slow
def test_version_names_the_installed_distribution(installed: Installed) -> None:
    out = installed.run("--version").stdout
    assert out.startswith("tollgate ") and out.split()[1][0].isdigit(), out


@pytest.mark.slow
def test_rules_check_diagram_and_demo_run_on_the_bundled_rules_from_an_empty_directory(
        installed: Installed) -> None:
    check = installed.run("rules", "check").stdout
    assert "OK" in check and "site-packages" in check, check
    diagram = installed.run("diagram", "invoice").stdout
    assert "stateDiagram" in diagram and "suspended" in diagram
    demo = installed.run("demo").stdout
    assert "paid" in demo
    assert list(installed.empty.iterdir()) == [], "a read-only command left files behind"


@pytest.mark.slow
def test_templates_check_renders_the_email_templates_the_wheel_ships(installed: Installed) -> None:
    check = installed.run("templates", "check").stdout
    assert "the bundled templates: OK — 4 emails" in check, check
    site = Path(_run(installed.python, "-c", "import tollgate.bundled as b; print(b.templates_path())",
                     cwd=installed.empty, env=installed.env).stdout.strip())
    assert "site-packages" in str(site) and not site.is_symlink()
    assert (site / "email" / "invoice_issued.ko.html.j2").is_file()
    assert (site / "email" / "_layout.html.j2").is_file()


@pytest.mark.slow
def test_rules_init_writes_an_editable_copy_whose_schema_resolves_outside_a_checkout(
        installed: Installed, tmp_path: Path) -> None:
    target = tmp_path / "policy" / "rules.yaml"
    target.parent.mkdir()
    installed.run("rules", "init", target)
    first = target.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=file://"), first
    schema = Path(urllib.request.url2pathname(first.split("$schema=file://", 1)[1]))
    assert schema.is_file() and "site-packages" in str(schema)
    assert json.loads(schema.read_text(encoding="utf-8"))["title"]
    assert "OK" in installed.run("rules", "check", target).stdout
    again = installed.run("rules", "init", target, check=False)
    assert again.returncode == 1 and "--force" in again.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serve_starts_on_the_bundled_rules_and_keeps_state_in_the_working_directory(
        installed: Installed) -> None:
    port = _free_port()
    server = subprocess.Popen([installed.tollgate, "serve", "--port", str(port)], cwd=installed.empty,
                              env=installed.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    health = json.loads(response.read())
                break
            except OSError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "tollgate serve did not answer /healthz in 60 s"
                time.sleep(0.3)
        assert health["status"] == "ok"
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert (installed.empty / "tollgate.db").is_file(), output
    assert "site-packages" in output and "tollgate/rules.yaml" in output, output
