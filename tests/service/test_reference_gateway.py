"""examples/reference_gateway.py: it verifies signed charge requests, charges each key once, and
reports the outcomes back in one `POST /events` batch (here to a stand-in for tollgate that
records the batch; the round trip through tollgate's batch endpoint is tested where that lives)."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import pytest

from tests.helpers.paths import ROOT
from tollgate.service.delivery.channels import Delivery
from tollgate.service.delivery.webhooks import WebhookSender

SECRET = "whsec_gateway_" + "g" * 20


def _module() -> ModuleType:
    path = ROOT / "examples" / "reference_gateway.py"
    spec = importlib.util.spec_from_file_location("reference_gateway", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tollgate_stub() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in for POST /events: records each batch, answers 200 for every event."""
    batches: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body["authorization"] = self.headers["Authorization"]
            batches.append(body)
            reply = json.dumps({"results": [{"index": i, "status": 200, "body": {}}
                                            for i in range(len(body["events"]))]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", batches
    httpd.shutdown()
    httpd.server_close()


def _charge(n: int, amount: int) -> Delivery:
    return Delivery(n, f"ntf_{n}", f"inv{n}", "invoice", "charge_request", "gateway", "payment_gateway",
                    {"invoice": f"inv{n}", "account": f"acct{n}", "amount": amount, "attempt": 1}, {}, None,
                    datetime(2026, 11, 10, tzinfo=UTC), 1)


def test_the_reference_gateway_charges_each_request_once_and_reports_in_one_batch(
        tollgate_stub: tuple[str, list[dict[str, Any]]]) -> None:
    url, batches = tollgate_stub
    module = _module()
    gateway = module.Gateway(url, "gw-token", decline_over=100_000)
    httpd = module.server(gateway, SECRET, 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    hook = f"http://127.0.0.1:{httpd.server_address[1]}/charges"
    sender = WebhookSender("gateway", hook, SECRET)
    forger = WebhookSender("gateway", hook, "whsec_not_the_secret")
    try:
        first = sender.send(_charge(1, 42_000))
        again = sender.send(_charge(1, 42_000))  # at least once: the same key a second time
        declined = sender.send(_charge(2, 500_000))
        forged = forger.send(_charge(3, 1_000))
        assert (first.status, again.status, declined.status, forged.status) == ("202", "200", "202", "400")
        assert gateway.report_once() == 2
    finally:
        sender.close()
        forger.close()
        httpd.shutdown()
        httpd.server_close()
    (batch,) = batches
    assert batch["authorization"] == "Bearer gw-token"
    assert batch["events"] == [
        {"instance": "inv1", "event": "charge_succeeded", "data": {"payment_ref": "ref-ntf_1"},
         "idempotency_key": "gw-ntf_1"},
        {"instance": "inv2", "event": "charge_failed", "data": {"reason": "card_declined"},
         "idempotency_key": "gw-ntf_2"}]
    assert gateway.queue == []
