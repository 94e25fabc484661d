"""Every request is logged (method, path, status, role, duration, request id) and answered with
its `X-Request-Id`; the `tollgate.*` loggers reach stderr once `configure_logging` ran."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import pytest

from tests.helpers.client import Client
from tests.helpers.paths import ROOT


def _request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tollgate.api" and "request_id=" in r.getMessage()]


def test_every_request_is_logged_with_its_request_id(api: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tollgate")
    given = api.get("/rules", headers={"X-Request-Id": "lb-7f3a:42"})
    assert given.headers["X-Request-Id"] == "lb-7f3a:42"
    made = api.post("/workflows/signup/instances", json={"context": {}}, role="operator")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-Id"])
    refused = api.get("/rules", role=None, headers={"X-Request-Id": "not ok\u2028" + "x" * 200})
    assert refused.status_code == 401 and re.fullmatch(r"[0-9a-f]{32}", refused.headers["X-Request-Id"])

    lines = [r.getMessage() for r in _request_lines(caplog)]
    assert len(lines) == 3, lines
    assert re.fullmatch(r"GET /rules 200 role=admin [0-9.]+ms request_id=lb-7f3a:42", lines[0])
    assert lines[1].startswith("POST /workflows/signup/instances 201 role=operator ")
    assert lines[1].endswith(f"request_id={made.headers['X-Request-Id']}")
    assert lines[2].startswith("GET /rules 401 role=- ")
    fields = _request_lines(caplog)[0].fields  # type: ignore[attr-defined]
    assert {k: fields[k] for k in ("method", "path", "status", "role", "request_id")} == {
        "method": "GET", "path": "/rules", "status": 200, "role": "admin", "request_id": "lb-7f3a:42"}


def test_a_request_log_line_holds_no_body_query_or_token(api: Client,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tollgate")
    account = api.create("signup")["id"]
    api.fire(account, "select_type", {"country": "KR", "member_type": "individual",
                                      "birth_date": "1990-01-01"})
    api.post(f"/instances/{account}/events?dry_run=true&note=q-secret",
             json={"event": "submit_email", "data": {"email": "body-secret@example.com"}})
    text = "\n".join(r.getMessage() for r in _request_lines(caplog))
    assert "body-secret" not in text and "q-secret" not in text and "tok-admin" not in text


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=120)


LOG_EVERY_LEVEL = """
import logging
from tollgate.service.logs import configure_logging
configure_logging()
configure_logging()  # a gunicorn worker after `serve`: still one handler
logging.getLogger("tollgate.timers").error("timer grace_deadline on inv_1 failed: %s", "boom")
logging.getLogger("tollgate.rules").info("rules.yaml imported as version 2")
logging.getLogger("tollgate.scheduler").debug("a debug line")
"""


def test_tollgate_loggers_reach_stderr_at_the_configured_level() -> None:
    default = _python(LOG_EVERY_LEVEL)
    assert default.returncode == 0, default.stderr
    lines = default.stderr.splitlines()
    assert len(lines) == 2, lines
    assert "ERROR tollgate.timers" in lines[0] and "timer grace_deadline on inv_1 failed: boom" in lines[0]
    assert "INFO tollgate.rules" in lines[1]
    quiet = _python(LOG_EVERY_LEVEL, TOLLGATE_LOG_LEVEL="warning", TOLLGATE_LOG_FORMAT="json")
    (line,) = quiet.stderr.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "ERROR", "tollgate.timers", "timer grace_deadline on inv_1 failed: boom")


def test_a_bad_log_level_fails_at_start() -> None:
    bad = _python(LOG_EVERY_LEVEL, TOLLGATE_LOG_LEVEL="loud")
    assert bad.returncode != 0 and "TOLLGATE_LOG_LEVEL='LOUD' is not a log level" in bad.stderr
