"""`tollgate serve`: the Flask app on gunicorn with the timer scheduler.

Each gunicorn worker reads every request whole in its poller before one of its `threads` threads
runs the app (`service/buffering.py`: slow and idle clients hold no thread). Each worker runs one
scheduler thread; claiming a timer deletes it in the transaction that fires it, so several
schedulers never fire one twice.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: How the workers meet clients. "buffered" is tollgate's (service/buffering.py); the others are
#: gunicorn's own worker classes, kept for `python -m bench.slow_clients`, which measures them all.
FRONTS = {"buffered": "tollgate.service.buffering.Worker", "gthread": "gthread", "gevent": "gevent"}


class TollgateServer(BaseApplication):
    def __init__(self, options: dict[str, Any], *, scheduler: bool = True) -> None:
        self.options = options
        self.scheduler = scheduler
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)
        if self.scheduler:
            self.cfg.set("post_worker_init", _start_scheduler)

    def load(self) -> Any:
        from tollgate.service.app import create_app
        from tollgate.service.logs import configure_logging
        from tollgate.service.settings import Settings

        settings = Settings.from_environment()  # as `tollgate serve` left it for its workers
        configure_logging(settings)  # each worker process; a no-op after the fork from `serve`
        return create_app(settings=settings)


def _start_scheduler(worker: Any) -> None:
    from tollgate.service.bootstrap import build_relay
    from tollgate.service.scheduler import Scheduler
    from tollgate.service.settings import Settings

    runtime = worker.wsgi.extensions["tollgate"]
    settings = Settings.from_environment()
    scheduler = Scheduler(runtime, relay=build_relay(settings, runtime),
                          relay_interval=settings.relay_interval)
    scheduler.start()
    worker.tollgate_scheduler = scheduler


def serve(host: str, port: int, *, workers: int = 2, threads: int = 8, scheduler: bool = True,
          access_log: bool = False, front: str = "buffered") -> int:
    """Run the API; without TOLLGATE_TOKENS, make an admin token and listen on loopback only.

    gunicorn's own access log is off by default: the app logs every request itself (`tollgate.api`,
    with its role and request id), and a second line per request would double the log volume."""
    if not os.environ.get("TOLLGATE_TOKENS"):
        token = secrets.token_urlsafe(24)
        os.environ["TOLLGATE_TOKENS"] = f"admin={token}"
        if host not in LOOPBACK:
            print(f"No TOLLGATE_TOKENS set, so tollgate listens on 127.0.0.1 only (not {host}).",
                  file=sys.stderr)
        host = "127.0.0.1"
        print(f"No TOLLGATE_TOKENS set: generated an admin token for this run (shown once):\n"
              f"  Authorization: Bearer {token}", flush=True)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options = {"bind": bind, "workers": workers, "worker_class": FRONTS[front],
               "threads": threads if front in ("buffered", "gthread") else None,
               "timeout": 60, "graceful_timeout": 10, "accesslog": "-" if access_log else None,
               "preload_app": False,
               # gunicorn's runtime control socket is one fixed path per user; several servers
               # (tests, scale-out on one host) would fight over it, and tollgate does not use it.
               "control_socket_disable": True}
    TollgateServer(options, scheduler=scheduler).run()
    return 0
