"""`tollgate serve` logs every request to stderr (through its gunicorn workers), request id included."""

from __future__ import annotations

import pytest

from tests.helpers.server import StartServer, poll

pytestmark = pytest.mark.e2e


def test_serve_logs_every_request_with_its_request_id(start_server: StartServer) -> None:
    server = start_server("sqlite")
    answered = server.client("operator").get("/rules", headers={"X-Request-Id": "edge-1f2e:7"})
    assert answered.status_code == 200 and answered.headers["x-request-id"] == "edge-1f2e:7"
    refused = server.client(None).get("/rules")
    assert refused.status_code == 401
    poll(lambda: "request_id=edge-1f2e:7" in server.output(), what="the request's log line")
    lines = server.output().splitlines()
    (line,) = [x for x in lines if "request_id=edge-1f2e:7" in x]
    assert "INFO tollgate.api" in line and "GET /rules 200 role=operator " in line
    assert any("GET /rules 401 role=- " in x and f"request_id={refused.headers['x-request-id']}" in x
               for x in lines)
    assert all(token not in server.output() for token in server.tokens.values())
