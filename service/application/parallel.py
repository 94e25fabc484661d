"""Worker processes sharing one SQLite file: a test clock's big instants and `fire_many`'s
batches judged on every core.

SQLite lets one process write at a time, but most of a batch's work — reading its instances,
judging its events, building its rows — needs no write lock. `Workers(…, count=k)` with k > 1
keeps a pool of k processes (spawned once, on first use; each with its own connection and its own
engine for the active rules). The calling process hands them work and waits:

- `advance_clock`: for each instant on the way that has at least `PARALLEL_MIN_TIMERS` timers
  due, the clock moves to the instant, the instant's timers are cut into `SPANS_PER_WORKER × k`
  ranges of instance ids, and the workers take the ranges in turn and fire them batch by batch
  (`Sweeps.sweep_span`). Every instant finishes before the next begins, so events still happen
  in time order; smaller instants are swept by the calling process as before.
- `fire_many`: with at least `PARALLEL_MIN_TIMERS` events, they are dealt to the workers by
  instance (so one instance's events keep their order), a window of `WINDOW_BATCHES × batch`
  per worker at a time, each window finished before the next.

A process that starts workers must guard its entry point with `if __name__ == "__main__":` (the
`tollgate` command, gunicorn and pytest do): spawned processes import the main module again.

Each batch is judged outside the write lock and written only if every row it read is still the
same (`Sweeps.judge_then_write`); otherwise it is judged again under the lock. The workers also
share a lock around their write transactions, so they hand the file to each other at once rather
than through SQLite's sleeping busy handler. Workers use the system clock for real time.

Two advances of one clock never share an instant: the second waits for the first's lease on the
clock (`ClockLeases.take`), and every batch a worker writes renews and checks that lease.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from tollgate.service.application.judging import Units
from tollgate.service.application.leases import ClockLeases
from tollgate.service.application.rules_versions import RulesVersions
from tollgate.service.application.sweeps import Collect, Span, Sweeps, _Event
from tollgate.service.application.times import system_now
from tollgate.service.storage.db import Database

_T = TypeVar("_T")

#: Windows of `fire_many` events dealt at once, in batches per worker.
WINDOW_BATCHES = 16
#: Ranges an instant's timers are cut into, per worker: a worker that finishes its range early
#: takes the next instead of waiting for the slowest. More and smaller ranges measured slower
#: (ranges of 2 batches: 13.5-18.2k against 14.8-20.3k transitions/s in 4 pairs of N=100,000
#: months), so a few large ones.
SPANS_PER_WORKER = 4

#: The most worker processes `auto_workers` chooses. Measured on 2 cores: 2 workers judge a
#: 100,000-invoice month 1.26-1.62x as fast as one process, 3 were slower than 2 (14,845 against
#: 17,918 transitions/s); with 2 the write lock is already held ~65% of the time, so more cores
#: would soon wait on it. Not measured on more than 2 cores: set the number to try more.
MAX_AUTO_WORKERS = 2

_sweeps: Sweeps | None = None


def auto_workers() -> int:
    """The default number of worker processes: one per core this process may run on, at most
    `MAX_AUTO_WORKERS` (1 on a single core: no pool at all)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_WORKERS))


def _start(url: str, synchronous: str, lock: Any) -> None:
    """Pool initializer: this process's sweeps over the shared file, its engine built now."""
    global _sweeps
    db = Database(url, synchronous=synchronous, shared_write_lock=lock)
    versions = RulesVersions(db, system_now)
    sweeps = Sweeps(db, Units(versions, system_now, row_locks=db.for_update()), ClockLeases(db))
    with db.read() as conn:
        versions.active(conn)
    gc.freeze()  # as at a server's start: what lives as long as the process, out of the collector's way
    _sweeps = sweeps


def _worker() -> Sweeps:
    if _sweeps is None:
        raise RuntimeError("This process was not started by a WorkerPool.")
    return _sweeps


def _ready() -> int:
    _worker()
    return os.getpid()


def _sweep_span(clock_id: str, span: Span, batch: int, actor: str, collect: Collect,
                lease: str | None = None) -> tuple[int, list[dict[str, Any]], Counter[str]]:
    sweeps = _worker()
    before = Counter(sweeps.optimistic_counts)
    handled, entries = 0, []
    with sweeps.db.bulk_work():
        while True:
            count, more = sweeps.sweep_span(clock_id, span, batch=batch, actor=actor, collect=collect,
                                             lease=lease)
            if not count:
                break
            handled += count
            entries.extend(more)
    return handled, entries, sweeps.optimistic_counts - before


def _fire(events: list[_Event], actor: str, batch: int) -> tuple[Counter[str], Counter[str]]:
    sweeps = _worker()
    before = Counter(sweeps.optimistic_counts)
    counts: Counter[str] = Counter()
    with sweeps.db.bulk_work():
        for lo in range(0, len(events), batch):
            counts.update(sweeps.fire_chunk_optimistic(events[lo:lo + batch], actor))
    return counts, sweeps.optimistic_counts - before


class WorkerPool:
    """`workers` processes over the SQLite file at `url` (spawned, not forked: the calling
    process may hold open connections and threads)."""

    def __init__(self, url: str, synchronous: str, workers: int) -> None:
        if workers < 2:
            raise ValueError("A worker pool needs at least 2 workers.")
        context = multiprocessing.get_context("spawn")
        self.workers = workers
        self.lock = context.Lock()
        self.executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_start,
                                            initargs=(url, synchronous, self.lock))
        #: Batches written as judged and batches judged again under the lock, over the pool's life.
        self.counts: Counter[str] = Counter()

    def start(self) -> None:
        """Start every worker now (each reads the active rules and builds its engine, ~1 s)
        instead of at the first piece of work."""
        for future in [self.executor.submit(_ready) for _ in range(self.workers)]:
            future.result()

    def sweep(self, clock_id: str, spans: list[Span], *, batch: int, actor: str,
              collect: Collect, lease: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Fire every timer of `spans`, each span by the next free worker; returns the number
        handled and the entries in span order. A worker's error is raised once every span is done.
        `lease`: the advance's lease on the clock, renewed and checked by every batch's write."""
        futures = [self.executor.submit(_sweep_span, clock_id, span, batch, actor, collect, lease)
                   for span in spans]
        wait(futures)  # all of them, even when one fails: nothing goes on writing behind the caller
        handled, entries = 0, []
        for future in futures:
            count, more, counts = future.result()
            handled += count
            entries.extend(more)
            self.counts.update(counts)
        return handled, entries

    def fire(self, events: list[_Event], *, actor: str, batch: int) -> Counter[str]:
        """Fire `events`, dealt to the workers by instance (one instance's events to one worker, in
        their order); returns applied / denied / dropped."""
        parts: list[list[_Event]] = [[] for _ in range(self.workers)]
        for event in events:
            parts[hash(event.instance) % self.workers].append(event)
        futures = [self.executor.submit(_fire, part, actor, batch) for part in parts if part]
        wait(futures)
        totals: Counter[str] = Counter()
        for future in futures:
            counts, optimistic = future.result()
            totals.update(counts)
            self.counts.update(optimistic)
        return totals

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class Workers:
    """The worker processes of one process (`count` > 1 on a SQLite file; started on first use),
    shared by clock advances and `fire_many`."""

    #: Fewest timers due at one instant (or events given to `fire_many`) handed to the worker
    #: processes: fewer are done here, sooner than the ~1 s it takes to start the workers.
    PARALLEL_MIN_TIMERS = 5_000

    def __init__(self, db: Database, count: int) -> None:
        if count < 1:
            raise ValueError(f"workers must be at least 1, not {count}.")
        self.db = db
        self.count = count
        self.pool: WorkerPool | None = None
        #: Held while the pool is started or replaced: a server's threads may advance clocks at once.
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether big sweeps and batches go to worker processes: more than one asked for, and a
        SQLite file for them to share (PostgreSQL scales out with `tollgate worker` instead)."""
        return self.count > 1 and self.db.dialect.single_writer and not self.db.memory

    def run(self, work: Callable[[WorkerPool], _T]) -> _T:
        """`work` on the worker pool, started on first use. A pool that lost a process (killed,
        out of memory) is stopped and the error raised: what that process had not committed is
        still due, and the next call starts a new pool."""
        with self._lock:
            if self.pool is None:
                self.pool = WorkerPool(self.db.url, self.db.synchronous, self.count)
            pool = self.pool
        try:
            return work(pool)
        except BrokenProcessPool:
            with self._lock:
                if self.pool is pool:  # not yet replaced by another thread that saw it break
                    self.pool = None
            pool.close()
            raise

    def start(self) -> None:
        """Start the worker processes now rather than at the first big sweep (no-op without)."""
        if self.active:
            self.run(lambda pool: pool.start())

    def close(self) -> None:
        """Stop the worker processes (if any were started)."""
        with self._lock:
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()
