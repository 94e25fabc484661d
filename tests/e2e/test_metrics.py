"""`/metrics` under a real `tollgate serve` with two gunicorn workers: every scrape, whichever
worker answers it, sums the counters of both (prometheus_client's multiprocess mode, set up by
`serve` itself); the directory is emptied at each start; `/readyz` answers beside `/healthz`."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.server import TollgateServer


def _samples(server: TollgateServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = server.client("monitor").get("/metrics")
    assert response.status_code == 200, response
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples}


def _pids(directory: Path, kind: str) -> set[str]:
    """The processes that wrote metrics files of `kind` (counter, histogram) into the directory."""
    return {m.group(1) for p in directory.iterdir() if (m := re.fullmatch(rf"{kind}_(\d+)\.db", p.name))}


def test_two_workers_are_summed_in_every_scrape(start_server: Callable[..., TollgateServer],
                                                tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale counts of an earlier run")
    server = start_server("sqlite", workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    assert not (metrics_dir / "counter_999999.db").exists(), "a start counts from zero"
    op = server.client("operator")
    account = op.create("signup")["id"]
    # One connection per request: gunicorn hands them to whichever worker accepts first. Go on
    # until both workers have answered some (a bound on requests, not on time).
    reads = 0
    while len(_pids(metrics_dir, "counter")) < 2 and reads < 2_000:
        assert op.get(f"/instances/{account}").status_code == 200
        reads += 1
    assert len(_pids(metrics_dir, "counter")) == 2, "only one worker answered 2,000 requests"
    route: Any = (("method", "GET"), ("route", "/instances/{id}"), ("status", "200"))
    for _ in range(6):  # several scrapes, answered by either worker: each sees both workers' counts
        samples = _samples(server)
        assert samples[("tollgate_http_requests_total", route)] == reads
        created = (("event", "create"), ("outcome", "applied"), ("workflow", "signup"))
        assert samples[("tollgate_events_total", created)] == 1
    ready = server.client(None).get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"
    assert server.client(None).get("/metrics").status_code == 401
