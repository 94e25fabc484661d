"""The HTTP baseline: a trivial Flask JSON POST endpoint on tollgate's own server config.

`POST /echo` parses the JSON body and answers a small JSON echo; `GET /healthz` says it is up.
`python -m bench.echo --port P` serves it through `service.server.serve` itself (worker class,
workers, threads, timeouts, access log to stdout), with only the WSGI app swapped, so the
baseline cannot drift from the production config when that changes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from flask import Flask, jsonify, request

__all__ = ["app", "main"]

app = Flask(__name__, static_folder=None)
app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024  # tollgate's default body limit (service/app.py)


@app.post("/echo")
def echo() -> Any:
    body = request.get_json()
    return jsonify(ok=True, event=body.get("event") if isinstance(body, dict) else None)


@app.get("/healthz")
def healthz() -> Any:
    return jsonify(status="ok")


def main(argv: Sequence[str] | None = None) -> int:
    from tollgate.service import server

    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)

    class EchoServer(server.TollgateServer):
        def load(self) -> Any:
            return app

    server.TollgateServer = EchoServer  # type: ignore[misc]  # serve() builds its options, then runs this
    return server.serve(args.host, args.port, workers=args.workers, threads=args.threads, scheduler=False)


if __name__ == "__main__":
    sys.exit(main())
