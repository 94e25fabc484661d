"""Every setting by environment: parsed, validated with an error naming the variable, the command
line's options over it; JSON-lines request logs that hold no secret."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from flask import Flask

from tests.helpers.app import make_app
from tests.helpers.client import Client
from tests.helpers.paths import ROOT
from tollgate.service.logs import JsonLines
from tollgate.service.settings import ENVIRONMENT, Settings


def test_the_serve_settings_come_from_the_environment() -> None:
    settings = Settings.from_environment({
        "TOLLGATE_HOST": "0.0.0.0", "TOLLGATE_PORT": "9090", "TOLLGATE_WORKERS": "3",
        "TOLLGATE_THREADS": "16", "TOLLGATE_SCHEDULER_INTERVAL_SECONDS": "0.5",
        "TOLLGATE_SCHEDULER_BATCH": "250", "TOLLGATE_LOG_FORMAT": "JSON", "TOLLGATE_LOG_LEVEL": "debug",
        "TOLLGATE_MAX_BODY_BYTES": "2048"})
    assert (settings.host, settings.port, settings.workers, settings.threads) == ("0.0.0.0", 9090, 3, 16)
    assert (settings.scheduler_interval, settings.scheduler_batch) == (0.5, 250)
    assert (settings.log_format, settings.log_level, settings.max_body_bytes) == ("json", logging.DEBUG, 2048)
    defaults = Settings.from_environment({})
    assert (defaults.host, defaults.port, defaults.workers, defaults.threads) == ("127.0.0.1", 8080, None, 8)
    assert Settings.from_environment({"TOLLGATE_WORKERS": "auto"}).workers is None


def test_an_option_given_wins_over_the_environment() -> None:
    environ = {"TOLLGATE_HOST": "0.0.0.0", "TOLLGATE_PORT": "9090", "TOLLGATE_THREADS": "16"}
    settings = Settings.from_environment(environ, host="127.0.0.1", port=8181, threads=None)
    assert (settings.host, settings.port, settings.threads) == ("127.0.0.1", 8181, 16)


@pytest.mark.parametrize(("variable", "value"), [
    ("TOLLGATE_PORT", "http"), ("TOLLGATE_PORT", "0"), ("TOLLGATE_PORT", "70000"), ("TOLLGATE_PORT", "80.5"),
    ("TOLLGATE_WORKERS", "0"), ("TOLLGATE_WORKERS", "many"), ("TOLLGATE_THREADS", "-1"),
    ("TOLLGATE_THREADS", "1000"), ("TOLLGATE_HOST", ""), ("TOLLGATE_HOST", "http://x"),
    ("TOLLGATE_HOST", "a b"), ("TOLLGATE_SCHEDULER_INTERVAL_SECONDS", "soon"),
    ("TOLLGATE_SCHEDULER_INTERVAL_SECONDS", "0"), ("TOLLGATE_SCHEDULER_BATCH", "0"),
    ("TOLLGATE_LOG_FORMAT", "xml"), ("TOLLGATE_LOG_LEVEL", "loud"), ("TOLLGATE_MAX_BODY_BYTES", "1MB"),
    ("TOLLGATE_BATCH_WORKERS", "none"),
])
def test_a_bad_value_fails_naming_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        Settings.from_environment({variable: value})


def test_every_variable_is_in_the_readme_settings_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    for variable in ENVIRONMENT:
        assert f"`{variable}`" in table, f"{variable} is missing from README ## Settings"


def test_serve_refuses_a_bad_variable_before_starting(tmp_path: object) -> None:
    done = subprocess.run([sys.executable, "-m", "tollgate", "serve"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "TOLLGATE_PORT": "eighty",
                               "TOLLGATE_DATABASE_URL": "sqlite:///:memory:"})
    assert done.returncode == 2
    assert "TOLLGATE_PORT='eighty' is not a TCP port" in done.stderr


@pytest.fixture
def app(tmp_path: object) -> Flask:
    return make_app(f"sqlite:///{tmp_path}/t.db")


def test_json_request_lines_hold_no_secret(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tollgate")
    api = Client.wsgi(app.test_client())
    account = api.create("signup")["id"]
    api.fire(account, "select_type", {"country": "KR", "member_type": "business"})
    api.post(f"/instances/{account}/events?dry_run=true&note=q-secret",
             json={"event": "submit_email", "data": {"email": "body-secret@example.com"}})
    api.post("/events", json={"events": [{"instance": account, "event": "set_password",
                                          "data": {"password": "Hunter#2025", "password_confirm": "x"}}]})
    formatter = JsonLines()
    lines = [formatter.format(r) for r in caplog.records if r.name == "tollgate.api"]
    entries = [json.loads(line) for line in lines]
    assert len(entries) >= 4 and all("\n" not in line for line in lines)
    assert {"time", "level", "logger", "pid", "message", "method", "path", "status", "role",
            "duration_ms", "request_id"} <= set(entries[-1])
    assert entries[-1]["path"] == "/events" and entries[-1]["status"] == 200
    text = "\n".join(lines)
    for secret in ("body-secret", "q-secret", "tok-admin", "Hunter#2025", "Bearer"):
        assert secret not in text
    app.extensions["tollgate"].db.dispose()
