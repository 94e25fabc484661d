"""Prometheus metrics (`GET /metrics`, text format) with the well-kept `prometheus_client`.

Counters and histograms are recorded as things happen, in the process they happen in:

- `tollgate_events_total{workflow, event, outcome}` and `tollgate_denials_total{workflow, rule}`:
  every attempt written to the history (API calls, batches, timers), counted when its transaction
  commits (`storage/db.py` COMMIT_OBSERVERS; a rolled-back one counts nothing);
- `tollgate_timer_lag_seconds`: for each real-time timer fired, how late it fired (fired − due);
- `tollgate_http_request_duration_seconds{method, route}` (the route template of
  `service/api/routes.py`, never the raw path) and `tollgate_http_requests_total{method, route,
  status}`;
- `tollgate_delivery_attempts_total{channel, result}` through `delivery_attempted(channel, ok)`,
  for the outbox relay to call on every send (`result="failed"`: delivery failures by channel);
  code below the edges (the application layer may not import this module) notes
  `storage.db.note(conn, "delivery", (channel, ok))` in the transaction that records the attempt.

Gauges that describe the database are queried at scrape time, cheaply, by `ScrapeCollector`:
the due-timer backlog, the outbox backlog by channel and the active rules version.

Several gunicorn workers: `tollgate serve` points PROMETHEUS_MULTIPROC_DIR at an empty directory
before the workers start (`server.prepare_metrics_dir`), each worker writes its own files there, a scrape
on any worker sums them all (`MultiProcessCollector`), and a worker that exits is marked dead
(gunicorn's child_exit in `service/server.py`). Without that variable (tests, another WSGI server) the
process's own registry is served. This module must be imported after the variable is set:
prometheus_client picks its storage when it is first imported.
"""

from __future__ import annotations

import os
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tollgate.service.storage import db as database

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

EVENTS = Counter("tollgate_events", "Event attempts written to the history, by workflow, event and outcome "
                 "(applied, denied, failed).", ["workflow", "event", "outcome"])
DENIALS = Counter("tollgate_denials", "Failed rules of denied attempts, by workflow and rule id.",
                  ["workflow", "rule"])
TIMER_LAG = Histogram("tollgate_timer_lag_seconds", "How late real-time timers fire: fired minus due, "
                      "in seconds.", buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, float("inf")))
HTTP_LATENCY = Histogram("tollgate_http_request_duration_seconds", "Time to answer an HTTP request, by "
                         "method and route template.", ["method", "route"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
HTTP_REQUESTS = Counter("tollgate_http_requests", "HTTP requests answered, by method, route template and "
                        "status.", ["method", "route", "status"])
DELIVERIES = Counter("tollgate_delivery_attempts", "Notification delivery attempts by channel and result "
                     "(delivered, failed).", ["channel", "result"])


def delivery_attempted(channel: str, ok: bool) -> None:
    """Count one delivery attempt of the outbox relay (`ok` False: a failure, to be retried)."""
    DELIVERIES.labels(channel, "delivered" if ok else "failed").inc()


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_LATENCY.labels(method, route).observe(seconds)
    HTTP_REQUESTS.labels(method, route, str(status)).inc()


def _observe_commit(notes: list[tuple[str, Any]]) -> None:
    """What a committed transaction wrote (`storage/db.py` note): history rows and timer lags."""
    events: Tally[tuple[str, str, str]] = Tally()
    denials: Tally[tuple[str, str]] = Tally()
    for kind, value in notes:
        if kind == "history":
            for workflow, event, outcome, reasons in value:
                events[(workflow, event, outcome)] += 1
                if outcome == "denied" and reasons:
                    decoded = getattr(reasons, "obj", reasons)  # PostgreSQL's rows hold a Jsonb wrapper
                    if isinstance(decoded, str | bytes):
                        decoded = orjson.loads(decoded)
                    for reason in decoded:
                        denials[(workflow, str(reason.get("rule", "")))] += 1
        elif kind == "timer_lag":
            for seconds in value:
                TIMER_LAG.observe(max(0.0, seconds))
        elif kind == "delivery":  # (channel, ok) noted by a relay below the edges, counted once committed
            channel, ok = value
            delivery_attempted(channel, ok)
    for (workflow, event, outcome), number in events.items():  # once per label set and transaction
        EVENTS.labels(workflow, event, outcome).inc(number)
    for (workflow, rule), count in denials.items():
        DENIALS.labels(workflow, rule).inc(count)


def install() -> None:
    """Count what committed transactions write, in this process (idempotent)."""
    if _observe_commit not in database.COMMIT_OBSERVERS:
        database.COMMIT_OBSERVERS.append(_observe_commit)


Gauges = Callable[[], dict[str, tuple[str, list[tuple[dict[str, str], float]]]]]


class ScrapeCollector(Collector):
    """The gauges read from the database at scrape time: `gauges()` → {name: (help, samples)}
    where samples are [(labels, value)]."""

    def __init__(self, gauges: Gauges) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        for name, (documentation, samples) in self.gauges().items():
            labels = sorted(samples[0][0]) if samples else []
            family = GaugeMetricFamily(name, documentation, labels=labels)
            for sample_labels, value in samples:
                family.add_metric([sample_labels[k] for k in labels], value)
            yield family


def exposition(gauges: Gauges) -> bytes:
    """The text exposition of every worker's metrics (multiprocess) or this process's, plus the
    gauges queried now."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        for collector in (EVENTS, DENIALS, TIMER_LAG, HTTP_LATENCY, HTTP_REQUESTS, DELIVERIES):
            registry.register(collector)
    registry.register(ScrapeCollector(gauges))
    return generate_latest(registry)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line each
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve_worker_metrics(host: str, port: int, authorize: Callable[[str | None], int],
                         challenge: str) -> WSGIServer:
    """`tollgate worker --metrics-port`: this worker's own counters (events and denials it
    committed, timer lag, deliveries) on `http://host:port/metrics`, on a thread. `authorize`
    answers 200, 401 or 403 for an Authorization header (the caller binds the API's tokens: a role
    with the `metrics` permission); `challenge` is the WWW-Authenticate of a 401.

    A worker serves no API, so its side port is prometheus_client's own kind of server (wsgiref,
    threaded); the database gauges (backlogs, rules version) are the servers' to report."""
    install()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Only GET /metrics is served here.\n"]
        status = authorize(environ.get("HTTP_AUTHORIZATION"))
        if status == 401:
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", challenge)])
            return [b"A bearer token of a role that may read metrics is required.\n"]
        if status != 200:
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"This role may not read metrics.\n"]
        body = exposition(dict)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body]

    server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="tollgate-metrics", daemon=True).start()
    return server


__all__ = ["CONTENT_TYPE", "REGISTRY", "delivery_attempted", "exposition", "install", "observe_request",
           "serve_worker_metrics"]
