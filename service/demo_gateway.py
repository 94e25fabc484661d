"""The payment gateway of `tollgate demo`: the round trip a real one makes, on loopback.

A charge request leaves through the real relay and the real signed webhook (`WebhookSender`) to a
small HTTP receiver in this process that verifies `Tollgate-Signature` as a gateway must
(`delivery/signatures.verify`); the gateway then reports the outcomes back as one batch through
`Runtime.fire_batch` — what `POST /events` runs — as the `gateway` role, each with its own
idempotency key. `examples/reference_gateway.py` is the same gateway as a process of its own,
reporting over HTTP.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from tollgate.service.application.events import BatchItem
from tollgate.service.application.relay import Relay
from tollgate.service.application.runtime import Runtime
from tollgate.service.delivery.signatures import HEADER, SignatureError, verify
from tollgate.service.delivery.webhooks import WebhookSender


@dataclass
class DemoGateway:
    """Receives signed charge requests on loopback; `report` settles them in one batch."""

    secret: str = field(default_factory=lambda: "whsec_demo_" + secrets.token_hex(16))
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0

    def __post_init__(self) -> None:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet: the demo prints its own lines
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    verify(gateway.secret, raw, self.headers.get(HEADER))
                except SignatureError:
                    gateway.refused += 1
                    self.send_response(400)
                else:
                    body = json.loads(raw)
                    gateway.received.append({**body, "key": self.headers.get("Idempotency-Key")})
                    self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/charges"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def round_trip(runtime: Runtime, out: TextIO, payment_ref: str) -> None:
    """Relay the pending charge requests to the demo gateway, then report each one charged."""
    gateway = DemoGateway()
    relay = Relay(runtime.outbox, {"gateway": WebhookSender("gateway", gateway.url, gateway.secret,
                                                            timeout=5.0, name="demo gateway")}, batch=50)
    try:
        sent = relay.run_until_idle()
        requests = [r for r in gateway.received if r.get("template") == "charge_request"]
        out.write(f"gateway round trip: the relay posted {sent.delivered} signed charge request(s) to "
                  f"{gateway.url}; the gateway verified {len(requests)}, refused {gateway.refused}\n")
        items = []
        for r in requests:  # each with its own key, fingerprinted as POST /events does
            instance, data = r["payload"]["invoice"], {"payment_ref": payment_ref}
            fingerprint = runtime.fingerprint("POST", f"/instances/{instance}/events",
                                              {"event": "charge_succeeded", "data": data})
            items.append(BatchItem(instance, "charge_succeeded", data, f"settle-{r['key']}", fingerprint))
        results = runtime.fire_batch(items, actor="gateway", role="gateway")
        for item, result in zip(items, results, strict=True):
            state = result.body.get("state") if isinstance(result.body, dict) else None
            out.write(f"  POST /events (batch of {len(items)}): {item.instance} {item.event} → "
                      f"{result.status} {state or ''}\n")
    finally:
        relay.close()
        gateway.close()
