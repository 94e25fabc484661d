"""Many events at once (e.g. a payment gateway's report): `fire_many`, `batch` per transaction.

Each event is judged as `fire` would, but a failure touches only that event. Big batches on a
SQLite file go to the worker processes (`parallel.py`), a window at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import chain, islice
from typing import Any

from tollgate.service.application.parallel import WINDOW_BATCHES, Workers
from tollgate.service.application.sweeps import Sweeps, _Event
from tollgate.service.storage.db import Database


def _chunks(items: Iterable[_Event], size: int) -> Iterator[list[_Event]]:
    """`items` in lists of `size` (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class Batches:
    """`fire_many` over `db`: judged by `sweeps` here, or by `workers` for big batches."""

    def __init__(self, db: Database, sweeps: Sweeps, workers: Workers) -> None:
        self.db = db
        self.sweeps = sweeps
        self.workers = workers

    def fire_many(self, events: Iterable[tuple[str, str, Mapping[str, Any]]], *, actor: str = "api",
                  batch: int = 1000) -> dict[str, int]:
        """Fire many events (e.g. a payment gateway's report), `batch` per transaction.

        Each event is judged and applied exactly as `fire` would (a denial is kept in the history,
        a failed send is recorded as a denied attempt), but a failure touches only that event: the
        others of the batch still commit. Instances, accounts and facts are read in a few queries
        per batch. Returns how many were applied, denied, dropped (not valid in the state, bad
        data or no such instance) and failed (the rules erred: recorded as `failed`, see
        `Sweeps.attempt`). No If-Match and no Idempotency-Key: use `fire` for those.

        With `workers` > 1 on a SQLite file and `PARALLEL_MIN_TIMERS` events or more, the worker
        processes judge them (`parallel.py`): one instance's events still go in their
        order, but events of different instances may commit in another order than given.
        """
        counts = {"applied": 0, "denied": 0, "dropped": 0, "failed": 0}
        stream: Iterator[_Event] = (_Event(*e) for e in events)
        if self.workers.active:
            window = max(batch * self.workers.count * WINDOW_BATCHES, self.workers.PARALLEL_MIN_TIMERS)
            events_window = list(islice(stream, window))
            # enough to be worth the worker processes
            if len(events_window) >= self.workers.PARALLEL_MIN_TIMERS:
                with self.db.bulk_work():
                    while events_window:
                        self._fire_window(events_window, actor, batch, counts)
                        # one window in memory at a time: a month's report can be millions of events
                        del events_window
                        events_window = list(islice(stream, window))
                return counts
            stream = chain(events_window, stream)
        with self.db.bulk_work():
            for chunk in _chunks(stream, batch):
                self.sweeps.fire_chunk(chunk, actor, counts)
        return counts

    def _fire_window(self, events: list[_Event], actor: str, batch: int, counts: dict[str, int]) -> None:
        fired = self.workers.run(lambda pool: pool.fire(events, actor=actor, batch=batch))
        for outcome, number in fired.items():
            counts[outcome] += number
