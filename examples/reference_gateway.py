"""A reference payment gateway for tollgate: signed charge requests in, batched outcomes back.

    python examples/reference_gateway.py --port 9100 --secret "$TOLLGATE_WEBHOOK_SECRET" \\
        --tollgate http://127.0.0.1:8080 --token "$GATEWAY_TOKEN" [--decline-over 1000000]

tollgate's relay posts every `charge_request` notification here (TOLLGATE_WEBHOOK_GATEWAY_URL=
http://127.0.0.1:9100/charges). For each request this gateway:

1. verifies `Tollgate-Signature` over the raw body (`tollgate.service.delivery.signatures.verify`:
   HMAC-SHA256 of "t.body", compared in constant time, 5 minutes of tolerance) — 400 otherwise;
2. de-duplicates on `Idempotency-Key` (tollgate delivers at least once: a relay that crashed after
   sending sends again) — a repeat is answered 200 and not charged twice;
3. "charges" the card (here: declines amounts over --decline-over, accepts the rest), queues the
   outcome and answers 202 at once;
4. a reporter thread sends the queued outcomes back in batches, as a settlement file would go:
   one `POST /events` with `{"events": [{"instance", "event", "data", "idempotency_key"}]}` as the
   `gateway` role (which may only report charge_succeeded, charge_failed and deposit), and reads
   each one's result in `{"results": [{"index", "status", "body"}]}`. An outcome whose report
   failed as a whole (no answer, 5xx) is sent again with the same idempotency key; one refused by
   tollgate (4xx, e.g. the invoice was paid by other means meanwhile) is logged and dropped.

It uses only the standard library (and tollgate's signature module when tollgate is installed; the
verification is 15 lines to copy otherwise, see README "Delivery"). It is an example, not part of
the wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("reference_gateway")

try:
    from tollgate.service.delivery.signatures import HEADER, SignatureError, verify
except ImportError:  # without tollgate installed: the README's snippet
    HEADER = "Tollgate-Signature"

    class SignatureError(ValueError):  # type: ignore[no-redef]
        pass

    def verify(secret: str, body: bytes, header: str | None, *, tolerance: int = 300,  # type: ignore[misc]
               now: float | None = None) -> int:
        fields = [item.split("=", 1) for item in (header or "").split(",") if "=" in item]
        stamps = [v for k, v in fields if k.strip() == "t"]
        signatures = [v for k, v in fields if k.strip() == "v1"]
        if not stamps or not signatures or not stamps[0].isdigit():
            raise SignatureError("malformed signature header")
        t = int(stamps[0])
        if abs((time.time() if now is None else now) - t) > tolerance:
            raise SignatureError("timestamp outside the tolerance")
        expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        if not any(hmac.compare_digest(expected, s) for s in signatures):
            raise SignatureError("no matching signature")
        return t


class Gateway:
    """The gateway's state: keys seen, outcomes waiting to be reported, what tollgate answered."""

    def __init__(self, tollgate: str, token: str, *, decline_over: int, batch: int = 500,
                 interval: float = 0.5) -> None:
        self.tollgate = tollgate.rstrip("/")
        self.token = token
        self.decline_over = decline_over
        self.batch = batch
        self.interval = interval
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.queue: list[dict[str, Any]] = []
        self.reported: list[dict[str, Any]] = []  # (event, result) for the curious
        self.stop = threading.Event()

    def charge(self, key: str, request: dict[str, Any]) -> bool:
        """Queue the outcome of one charge request; False if this key was charged before."""
        with self.lock:
            if key in self.seen:
                return False
            self.seen.add(key)
        payload = request["payload"]
        if int(payload["amount"]) > self.decline_over:
            event = {"event": "charge_failed", "data": {"reason": "card_declined"}}
        else:
            event = {"event": "charge_succeeded", "data": {"payment_ref": f"ref-{key}"}}
        with self.lock:
            self.queue.append({"instance": payload["invoice"], **event, "idempotency_key": f"gw-{key}"})
        return True

    def report_once(self) -> int:
        """Send up to `batch` queued outcomes in one POST /events; how many were settled."""
        with self.lock:
            events = self.queue[:self.batch]
        if not events:
            return 0
        body = json.dumps({"events": events}).encode()
        request = urllib.request.Request(f"{self.tollgate}/events", data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code >= 500:
                log.warning("tollgate answered %d to a batch of %d; sending it again", error.code,
                            len(events))
                return 0
            log.error("tollgate refused the batch (%d): %s", error.code, error.read()[:500])
            answer = {"results": [{"index": i, "status": error.code, "body": None}
                                  for i in range(len(events))]}
        except OSError as error:
            log.warning("tollgate did not answer (%s); sending the batch again", error)
            return 0
        for result in answer["results"]:
            event = events[result["index"]]
            if result["status"] >= 400:
                log.warning("tollgate refused %s on %s: %s", event["event"], event["instance"],
                            result["body"])
            self.reported.append({"event": event, "status": result["status"]})
        with self.lock:
            del self.queue[:len(events)]
        return len(events)

    def run_reporter(self) -> None:
        while not self.stop.is_set():
            if not self.report_once():
                self.stop.wait(self.interval)


def server(gateway: Gateway, secret: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

        def answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                verify(secret, raw, self.headers.get(HEADER))
            except SignatureError as error:
                self.answer(400, {"error": str(error)})
                return
            request = json.loads(raw)
            key = self.headers.get("Idempotency-Key") or request["id"]
            if request.get("template") != "charge_request":
                self.answer(200, {"ignored": request.get("template")})
                return
            fresh = gateway.charge(key, request)
            self.answer(202 if fresh else 200, {"accepted": key, "duplicate": not fresh})

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # a relay sends several at once (the default backlog is 5)

    return Server(("127.0.0.1", port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--secret", required=True, help="TOLLGATE_WEBHOOK_SECRET")
    parser.add_argument("--tollgate", default="http://127.0.0.1:8080")
    parser.add_argument("--token", required=True, help="a bearer token of the gateway role")
    parser.add_argument("--decline-over", type=int, default=10**12, help="decline charges above this (KRW)")
    parser.add_argument("--batch", type=int, default=500, help="outcomes per POST /events")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s")
    gateway = Gateway(args.tollgate, args.token, decline_over=args.decline_over, batch=args.batch)
    httpd = server(gateway, args.secret, args.port)
    reporter = threading.Thread(target=gateway.run_reporter, daemon=True)
    reporter.start()
    print(f"reference gateway on http://127.0.0.1:{httpd.server_address[1]}/charges", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop.set()
        reporter.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
