"""`tollgate serve`: the Flask app on gunicorn with the timer scheduler.

Each gunicorn worker reads every request whole in its poller before one of its `threads` threads
runs the app (`service/buffering.py`: slow and idle clients hold no thread). Each worker runs one
scheduler thread; claiming a timer deletes it in the transaction that fires it, so several
schedulers never fire one twice.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
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
        self.cfg.set("child_exit", _worker_exited)

    def load(self) -> Any:
        from tollgate.service.app import create_app
        from tollgate.service.logs import configure_logging
        from tollgate.service.settings import Settings

        settings = Settings.from_environment()  # as `tollgate serve` left it for its workers
        configure_logging(settings)  # each worker process; a no-op after the fork from `serve`
        return create_app(settings=settings)


METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(environ: Any = os.environ) -> tuple[str, bool]:
    """Before anything imports prometheus_client (it picks its storage on import) and before
    gunicorn forks: point PROMETHEUS_MULTIPROC_DIR at an empty directory, so that every worker
    writes its metrics there and a scrape on any worker sums them (`service/metrics.py`). The
    directory given is emptied of the last run's files (a start counts from zero); without one, a
    temporary directory is made (and removed at exit). Returns (path, whether it was made here)."""
    given = environ.get(METRICS_DIR_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return str(path), False
    made = tempfile.mkdtemp(prefix="tollgate-metrics-")
    environ[METRICS_DIR_ENV] = made
    return made, True


def _worker_exited(server: Any, worker: Any) -> None:
    """gunicorn's child_exit, in the master: the dead worker's live gauges stop counting (its
    counters stay in the sum). prometheus_client's own function only: the master creates no metric."""
    if os.environ.get(METRICS_DIR_ENV):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)


def _start_scheduler(worker: Any) -> None:
    from tollgate.service.bootstrap import build_relay
    from tollgate.service.scheduler import Scheduler

    runtime = worker.wsgi.extensions["tollgate"]
    settings = worker.wsgi.extensions["tollgate.settings"]
    scheduler = Scheduler(runtime, interval=settings.scheduler_interval, batch=settings.scheduler_batch,
                          relay=build_relay(settings, runtime), relay_interval=settings.relay_interval)
    scheduler.start()
    worker.tollgate_scheduler = scheduler


def serve(host: str, port: int, *, workers: int = 2, threads: int = 8, scheduler: bool = True,
          access_log: bool = False, front: str = "buffered",
          prepared_metrics_dir: tuple[str, bool] | None = None) -> int:
    """Run the API; without TOLLGATE_TOKENS, make an admin token and listen on loopback only.

    gunicorn's own access log is off by default: the app logs every request itself (`tollgate.api`,
    with its role and request id), and a second line per request would double the log volume.
    `prepared_metrics_dir`: what `prepare_metrics_dir` returned, if the caller ran it first."""
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
    metrics_dir, made = prepared_metrics_dir or prepare_metrics_dir()
    master = os.getpid()
    try:
        TollgateServer(options, scheduler=scheduler).run()
    finally:
        # A forked worker leaves through this frame too (its SystemExit unwinds the stack it
        # inherited): only the master removes the directory, once every worker is gone.
        if made and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
