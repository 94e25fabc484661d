"""Concurrent writers against a real server (2 gunicorn workers × 8 threads) on both backends.

`add_usage` is valid again and again in `open`, so every request is a real write to one row.
The account runs on a test clock that never moves, so no timer touches the invoice meanwhile.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.helpers.client import Client, Response
from tests.helpers.server import StartServer, TollgateServer

pytestmark = pytest.mark.e2e


def open_invoice(op: Client) -> str:
    account = op.create("signup", clock=op.clock("2026-10-15T10:00:00+09:00"))["id"]
    return str(op.create("invoice", {"account": account, "usage_month": "2026-10"})["id"])


@pytest.fixture
def invoice(server: TollgateServer) -> str:
    return open_invoice(server.client("operator"))


def together(count: int, job: Callable[[int], Any]) -> list[Any]:
    """Run `job(0..count-1)` on `count` threads released at the same moment; results in order."""
    start = threading.Barrier(count)

    def run(index: int) -> Any:
        start.wait(timeout=60)
        return job(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def add_usage(client: Client, invoice: str, amount: int, headers: dict[str, str] | None = None) -> Response:
    return client.post(f"/instances/{invoice}/events",
                       json={"event": "add_usage", "data": {"amount": amount}}, headers=headers)


def applied_amounts(client: Client, invoice: str) -> list[int]:
    return [r["data"]["amount"] for r in client.history(invoice)
            if r["event"] == "add_usage" and r["outcome"] == "applied"]


def test_ten_writers_with_the_same_if_match_exactly_one_wins(server: TollgateServer, invoice: str) -> None:
    op = server.client("operator")
    for round_ in range(1, 4):  # three races on the same row, each from a fresh ETag
        read = op.get(f"/instances/{invoice}")
        etag = read.headers["etag"]
        version = read.get_json()["version"]
        assert etag == f'"{version}"'

        condition = {"If-Match": etag}
        responses = together(10, lambda i, sent=condition: add_usage(op, invoice, 100 + i, sent))

        statuses = Counter(r.status_code for r in responses)
        assert statuses == {200: 1, 412: 9}, responses
        [winner] = [r for r in responses if r.status_code == 200]
        assert winner.headers["etag"] == f'"{version + 1}"'
        for loser in (r for r in responses if r.status_code == 412):
            assert loser.headers["content-type"] == "application/problem+json"
        after = op.instance(invoice)
        assert after["version"] == version + 1
        amounts = applied_amounts(op, invoice)
        assert len(amounts) == round_
        assert after["context"]["usage"] == sum(amounts)
        assert amounts[-1] == winner.get_json()["context"]["usage"] - sum(amounts[:-1])


def test_eight_threads_times_ten_unconditional_events_all_apply(server: TollgateServer, invoice: str) -> None:
    op = server.client("operator")
    version = op.instance(invoice)["version"]
    expected = [1000 * thread + step + 1 for thread in range(8) for step in range(10)]

    def writer(thread: int) -> list[int]:
        return [add_usage(op, invoice, 1000 * thread + step + 1).status_code for step in range(10)]

    statuses = [s for batch in together(8, writer) for s in batch]
    assert Counter(statuses) == {200: 80}

    after = op.instance(invoice)
    assert after["version"] == version + 80
    assert after["context"]["usage"] == sum(expected)
    rows = op.history(invoice)
    assert sorted(applied_amounts(op, invoice)) == sorted(expected)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))


def test_ten_replays_of_one_idempotency_key_apply_once(backend: str, start_server: StartServer) -> None:
    server = start_server(backend)
    op = server.client("operator")
    invoice = open_invoice(op)
    version = op.instance(invoice)["version"]
    key = {"Idempotency-Key": f"usage-{invoice}"}

    responses = together(10, lambda _: add_usage(op, invoice, 4242, key))

    assert all(r.status_code < 500 for r in responses), responses
    ok = [r for r in responses if r.status_code == 200]
    assert ok, responses
    assert len({r.data for r in ok}) == 1, "replays must return the first response"
    assert op.instance(invoice)["version"] == version + 1
    assert applied_amounts(op, invoice) == [4242]
    late = add_usage(op, invoice, 4242, key)
    assert (late.status_code, late.data, late.headers.get("idempotent-replayed")) == (200, ok[0].data, "true")
    other = add_usage(op, invoice, 1, key)  # the same key with another body is refused
    assert (other.status_code, other.get_json()["type"].rsplit("/", 1)[-1]) == (409, "idempotency_key_reused")
    assert applied_amounts(op, invoice) == [4242]


def test_four_concurrent_advances_of_one_clock_fire_every_timer_once_in_time_order(
        server: TollgateServer) -> None:
    """Issue 11, item 1, over HTTP: four `POST /clocks/{id}/advance` at once on one clock (on
    two gunicorn workers), to different targets. Every invoice records exactly what a lone
    advance records, each firing once and at its instant, and the clock ends at the latest target.
    The invoices are seeded straight into the server's database (as tests/test_sweep.py does):
    1,500, so that an instant takes two batches of the sweep (1,000 a transaction)."""
    from tests.service.test_clock_advances import END, TARGETS, TIMELINE, written
    from tests.service.test_sweep import Month
    from tollgate.service.application.runtime import Runtime
    from tollgate.service.storage.db import Database

    seeder = Runtime(Database(server.database_url))
    try:
        reference = Month(seeder)
        alone = reference.invoice(0, card=True)
        month = Month(seeder)
        invoices = month.card_payers(1_500)
        op = server.client("operator")
        assert op.post(f"/clocks/{reference.clock}/advance", json={"to": END.isoformat()}).status_code == 200
        want = [(e, o, at) for _, e, o, at in written(seeder, alone)]
        assert [e for e, _, _ in want] == TIMELINE
        responses = together(len(TARGETS), lambda i: op.post(f"/clocks/{month.clock}/advance",
                                                             json={"to": TARGETS[i].isoformat()}))
        assert [r.status_code for r in responses] == [200] * len(TARGETS), responses
        rows = written(seeder, f"inv_{month.tag}_")
    finally:
        seeder.db.dispose()
    assert Counter(e for _, e, _, _ in rows) == Counter(TIMELINE * len(invoices))
    # each advance answers its counts (and only a first page of the timers it fired)
    counted = sum(n for r in responses for by in r.get_json()["counts"].values() for n in by.values())
    assert counted == len(rows)
    per_invoice: dict[str, list[tuple[str, str, datetime]]] = {i: [] for i in invoices}
    for instance, event, outcome, at in rows:
        per_invoice[instance].append((event, outcome, at))
    wrong = [i for i, timeline in per_invoice.items() if timeline != want]
    assert not wrong, f"{len(wrong)} of {len(invoices)} invoices differ from a lone advance"
    assert [at for _, _, _, at in rows] == sorted(at for _, _, _, at in rows)
    assert op.get(f"/clocks/{month.clock}").get_json()["now"] == END.astimezone(UTC).isoformat()
