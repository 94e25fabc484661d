"""The payment gateway's round trip, all real processes: `tollgate serve` issues an invoice on a test
clock, its relay posts the signed `charge_request` to the reference gateway
(examples/reference_gateway.py), which verifies it, charges once and reports `charge_succeeded`
back in one `POST /events` batch as the `gateway` role — and the invoice is paid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import database_url
from tests.helpers.kst import kst_instant
from tests.helpers.paths import ROOT
from tests.helpers.postgres import BACKENDS
from tests.helpers.server import TollgateServer, free_port, poll, role_tokens

pytestmark = pytest.mark.e2e

SECRET = "whsec_round_trip_" + "r" * 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_charge_request_out_signed_webhook_batch_report_back_invoice_paid(backend: str,
                                                                           tmp_path: Path) -> None:
    tokens = {**role_tokens(), "gateway": "gateway-round-trip-token"}
    port = free_port()
    with database_url(backend, tmp_path) as url:
        server = TollgateServer(url, tmp_path, tokens=tokens, env={
            "TOLLGATE_WEBHOOK_GATEWAY_URL": f"http://127.0.0.1:{port}/charges",
            "TOLLGATE_WEBHOOK_SECRET": SECRET, "TOLLGATE_RELAY_INTERVAL_SECONDS": "0.2"})
        server.start()
        log = (tmp_path / "gateway.log").open("w")
        gateway = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "reference_gateway.py"), "--port", str(port),
             "--secret", SECRET, "--tollgate", f"http://127.0.0.1:{server.port}",
             "--token", tokens["gateway"],
             "--decline-over", "1000000"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            api = server.client("operator")
            clock = api.clock(kst_instant(2026, 10, 5, 12))
            account = api.signup(clock=clock)
            api.register_card(account)
            paid = str(api.create("invoice", {"account": account, "usage_month": "2026-10"})["id"])
            api.fire(paid, "add_usage", {"amount": 52_000})
            declined = str(api.create("invoice", {"account": api.signup(clock=clock, email="big@example.com"),
                                                  "usage_month": "2026-10"})["id"])
            api.register_card(api.instance(declined)["context"]["account"])
            api.fire(declined, "add_usage", {"amount": 2_000_000})
            # the 10th of November: issued on the 3rd, the first autopay day asks the gateway to charge
            api.ok("POST", f"/clocks/{clock}/advance", json={"to": kst_instant(2026, 11, 10, 12).isoformat()})
            poll(lambda: api.instance(paid)["state"] == "paid", timeout=120,
                 what="the invoice paid by the gateway")
            poll(lambda: any(h["event"] == "charge_failed" for h in api.history(declined)), timeout=120,
                 what="the declined charge reported")
            history = api.history(paid)
            declined_state = api.instance(declined)["state"]
            requests = api.ok("GET", f"/notifications?instance={paid}&template=charge_request")["items"]
        finally:
            gateway.terminate()
            gateway.wait(20)
            log.close()
            server.stop()
    [charge] = [h for h in history if h["event"] == "charge_succeeded"]
    assert charge["actor"].startswith("gateway") and charge["outcome"] == "applied"
    assert [r["delivery"]["state"] for r in requests] == ["delivered"]
    assert declined_state != "paid"
    assert "POST /events 200 role=gateway" in server.output()  # reported in a batch, not one by one
