"""A real webhook receiver process for the delivery tests (SMS, gateway), and its handle.

Run as a script (`python -m tests.helpers.receiver --secret S --log requests.jsonl`), it serves
HTTP/1.1 with keep-alive on a free loopback port (printed as `PORT <n>`), verifies every request's
`Tollgate-Signature` with `tollgate.service.delivery.signatures.verify` (the README's snippet),
and writes one JSON line per request: its Idempotency-Key, whether the signature held, the status
it answered, whether another request with the same key was in flight at that moment, the body.
On purpose, it answers 500 to the first `--fail-first` requests of each key and sleeps
`--hang-seconds` before answering the first `--hang-first` of each key (a timeout for the sender).

`Receiver` starts one as a subprocess and reads its log back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.helpers.paths import ROOT


def main(argv: list[str] | None = None) -> int:
    from tollgate.service.delivery.signatures import HEADER, SignatureError, verify

    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--hang-first", type=int, default=0)
    parser.add_argument("--hang-seconds", type=float, default=5.0)
    parser.add_argument("--status", type=int, default=202)
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds before every answer (a slow receiver)")
    args = parser.parse_args(argv)
    lock = threading.Lock()
    seen: Counter[str] = Counter()
    in_flight: Counter[str] = Counter()
    out = open(args.log, "a", encoding="utf-8")  # noqa: SIM115 (open for the process's life)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

        def log_message(self, format: str, *a: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            key = self.headers.get("Idempotency-Key") or ""
            try:
                verify(args.secret, body, self.headers.get(HEADER))
                verified, problem = True, None
            except SignatureError as error:
                verified, problem = False, str(error)
            with lock:
                seen[key] += 1
                nth = seen[key]
                concurrent = in_flight[key] > 0
                in_flight[key] += 1
            try:
                if args.delay:
                    time.sleep(args.delay)
                if not verified:
                    status = 400
                elif nth <= args.hang_first:
                    time.sleep(args.hang_seconds)
                    status = 503  # late: the sender has given up; not a delivery
                elif nth <= args.hang_first + args.fail_first:
                    status = 500
                else:
                    status = args.status
                with lock:
                    out.write(json.dumps({"key": key, "nth": nth, "verified": verified, "problem": problem,
                                          "status": status, "concurrent": concurrent, "at": time.time(),
                                          "body": json.loads(body) if verified else None}) + "\n")
                    out.flush()
                reply = json.dumps({"received": key}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            finally:
                with lock:
                    in_flight[key] -= 1

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # several relays' senders connect at once (the default is 5)

        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):  # a sender killed or timed out
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


class Receiver:
    """A receiver subprocess: `url`, `requests()` (its log), `stop()`."""

    def __init__(self, tmp: Path, secret: str, *, name: str = "receiver", **options: Any) -> None:
        self.log = tmp / f"{name}.jsonl"
        self.log.touch()
        command = [sys.executable, "-m", "tests.helpers.receiver", "--secret", secret, "--log", str(self.log)]
        for option, value in options.items():
            command += [f"--{option.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"The receiver did not start (it printed {line!r}).")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def requests(self) -> list[dict[str, Any]]:
        text = self.log.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def delivered_keys(self) -> Counter[str]:
        """How many 2xx answers each Idempotency-Key got."""
        return Counter(r["key"] for r in self.requests() if 200 <= r["status"] < 300)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
