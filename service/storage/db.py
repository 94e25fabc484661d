"""Database connections: SQLite (WAL, default) or PostgreSQL (psycopg 3), migrated by Alembic.

The transaction discipline (write queue and group commit where the dialect has one writer, bulk
checkpoints, cluster locks) is here; what differs between the dialects is `dialects.py`'s.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text

from tollgate.service.storage.dialects import PAGE_SIZE, dialect_for_url, dumps

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_URL = "sqlite:///tollgate.db"
__all__ = ["BULK_AUTOCHECKPOINT_BYTES", "BULK_GC_THRESHOLD", "DEFAULT_URL", "MIGRATIONS", "PAGE_SIZE",
           "WAL_AUTOCHECKPOINT_BYTES", "Database", "normalise_url"]
WAL_AUTOCHECKPOINT_BYTES = 4 * 1024 * 1024  # SQLite's default (1,000 pages of 4 KiB)
BULK_AUTOCHECKPOINT_BYTES = 40 * 1024 * 1024  # inside bulk transactions (timer sweeps, fire_many)
#: gc.set_threshold while bulk work runs (CPython's default: 700, 10, 10).
BULK_GC_THRESHOLD = (50_000, 20, 10)


#: Critical sections that one process of the cluster (every server, gunicorn worker and `tollgate
#: worker` on one database) enters at a time, until the transaction that entered it ends; the
#: number is the PostgreSQL advisory lock key.
CLUSTER_LOCKS = {"schema": 0x746F6C6C_0001, "rules_versions": 0x746F6C6C_0002,
                 "rules_takeover": 0x746F6C6C_0003}

#: Told what each transaction wrote once it commits (`note`): [(kind, value), …]. The metrics
#: edge (`service/metrics.py`) registers here; with none registered, `note` keeps nothing.
COMMIT_OBSERVERS: list[Callable[[list[tuple[str, Any]]], None]] = []
_NOTES = "tollgate.notes"
log = logging.getLogger("tollgate.storage")


def note(conn: Connection, kind: str, value: Any) -> None:
    """Remember `value` (of `kind`) for the COMMIT_OBSERVERS, told when `conn`'s transaction
    commits; forgotten if it rolls back (or if a group commit's job is undone alone)."""
    if COMMIT_OBSERVERS:
        conn.info.setdefault(_NOTES, []).append((kind, value))


def _committed(conn: Connection) -> None:
    notes = conn.info.pop(_NOTES, None)
    if notes:
        for observe in COMMIT_OBSERVERS:
            try:
                observe(notes)
            except Exception:  # counting must never stop a commit
                log.exception("A commit observer failed; the transaction commits regardless.")


def _rolled_back(conn: Connection) -> None:
    conn.info.pop(_NOTES, None)


_GC_LOCK = threading.Lock()
_bulk_depth = 0
_saved_threshold: tuple[int, ...] = gc.get_threshold()


def normalise_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


T = TypeVar("T")


class _Job(Generic[T]):
    """One caller's piece of a group commit."""

    __slots__ = ("error", "finished", "result", "work")

    def __init__(self, work: Callable[[Connection], T]) -> None:
        self.work = work
        self.result: T | None = None
        self.error: BaseException | None = None
        self.finished = False

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class Database:
    """One SQLAlchemy engine plus the transaction discipline tollgate relies on.

    SQLite: WAL journal, `synchronous=FULL` (an acknowledged event survives power loss), a 30 s
    busy timeout and `BEGIN IMMEDIATE` so writers queue instead of failing on lock upgrade.
    PostgreSQL: READ COMMITTED with row locks (`SELECT … FOR UPDATE`) on the instances touched.
    """

    def __init__(self, url: str | None = None, *, echo: bool = False, synchronous: str = "FULL",
                 shared_write_lock: AbstractContextManager[Any] | None = None) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}.")
        self.synchronous = synchronous
        self.url = normalise_url(url or os.environ.get("TOLLGATE_DATABASE_URL") or DEFAULT_URL)
        self.dialect = dialect = dialect_for_url(self.url)
        self.is_sqlite = dialect.name == "sqlite"  # for tests and benchmarks; storage asks `dialect`
        self.memory = dialect.is_memory(self.url)
        kwargs: dict[str, Any] = {"echo": echo, "json_serializer": dumps, "json_deserializer": orjson.loads,
                                  **dialect.engine_options(self.url)}
        self.engine: Engine = create_engine(self.url, **kwargs)
        event.listen(self.engine, "commit", _committed)
        event.listen(self.engine, "rollback", _rolled_back)
        single = dialect.single_writer
        self._write_lock: threading.Lock | None = threading.Lock() if single else None
        #: One writer at a time: a lock shared with sibling processes (the worker pool of
        #: `application/parallel.py`), taken around every write transaction so they hand the
        #: database to each other at once instead of through SQLite's busy handler, which sleeps
        #: 1-100 ms a try.
        self._shared_write_lock = shared_write_lock if single else None
        #: wal_autocheckpoint in pages of this database: (API transactions, bulk transactions).
        self.checkpoint_pages = (WAL_AUTOCHECKPOINT_BYTES // 4096, BULK_AUTOCHECKPOINT_BYTES // 4096)
        self._queue_lock = threading.Lock()
        self._queue: list[_Job[Any]] = []
        dialect.install(self.engine, self.url, synchronous, self._page_size)

    def _page_size(self, page: int) -> int:
        """The WAL checkpoint thresholds in pages of `page` bytes (`install`, once a file is open);
        the one for API transactions."""
        self.checkpoint_pages = (max(1, WAL_AUTOCHECKPOINT_BYTES // page),
                                 max(1, BULK_AUTOCHECKPOINT_BYTES // page))
        return self.checkpoint_pages[0]

    @contextmanager
    def transaction(self, *, bulk: bool = False) -> Iterator[Connection]:
        """A read-write transaction: committed on success, rolled back on any exception.

        On SQLite, writers of one process queue on a lock first: SQLite's own busy handler
        sleeps with back-off (up to 100 ms a try), which under contention costs seconds of tail
        latency; a queue in the process hands the database over at once.

        `bulk` (a timer sweep's or `fire_many`'s batch): on SQLite its commit checkpoints only
        once the WAL holds ~40 MB instead of ~4 MB, so a page written by several batches is
        copied into the database file (and fsynced there) once. Durability is the WAL's either
        way (every commit is fsynced with synchronous=FULL). API transactions keep SQLite's
        default, because a 40 MB checkpoint stalls the request that triggers it (and everyone
        queued behind it) for a long time: measured p99 spikes of 100-500 ms under load.
        """
        if self._write_lock is None:
            with self.engine.begin() as connection:
                yield connection
            return
        with self._shared_write_lock or nullcontext(), self._write_lock, self.engine.connect() as connection:
            raw = connection.connection.driver_connection if bulk and not self.memory else None
            normal, bulky = self.checkpoint_pages
            if raw is not None:
                self.dialect.set_checkpoint(raw, bulky)
            try:
                with connection.begin():
                    yield connection
            finally:
                if raw is not None:
                    self.dialect.set_checkpoint(raw, normal)

    @contextmanager
    def bulk_work(self) -> Iterator[None]:
        """For the length of bulk work (a sweep of many timers, a batch of events): the cyclic
        garbage collector's young generation waits for 50,000 new containers instead of 700.

        A batch of 1,000 events keeps ~100,000 containers alive until it commits and frees them
        by reference counting: at the default threshold ~2,000 young collections per 76,000
        transitions found almost nothing (0.5 of ~5 s CPU). Only while bulk work runs: an API
        server's requests keep the default, where collections are small and frequent rather
        than large and rare (a process-wide setting, counted so that overlapping bulk work
        restores it once, when the last ends).
        """
        with _GC_LOCK:
            global _bulk_depth, _saved_threshold
            if _bulk_depth == 0:
                _saved_threshold = gc.get_threshold()
                gc.set_threshold(*BULK_GC_THRESHOLD)
            _bulk_depth += 1
        try:
            yield
        finally:
            with _GC_LOCK:
                _bulk_depth -= 1
                if _bulk_depth == 0:
                    gc.set_threshold(*_saved_threshold)

    def grouped(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in a write transaction, committed before this returns (group commit).

        On SQLite, concurrent callers queue their work; whoever takes the write lock runs every
        queued piece in ONE transaction, each in its own savepoint (a failing piece is undone
        alone and its exception re-raised to its caller), and commits once: one fsync for the
        group instead of one per event, with the same durability for each caller. PostgreSQL
        commits each caller's transaction on its own (row locks already let writers overlap).
        """
        if self._write_lock is None:
            with self.engine.begin() as connection:
                return work(connection)
        job: _Job[T] = _Job(work)
        with self._queue_lock:
            self._queue.append(job)
        with self._write_lock:
            if not job.finished:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._run_group(batch)
        return job.outcome()

    def _run_group(self, batch: list[_Job[Any]]) -> None:
        try:
            with self.engine.begin() as connection:
                if len(batch) == 1:  # alone: the transaction itself undoes a failing job
                    job = batch[0]
                    try:
                        job.result = job.work(connection)
                    except BaseException as error:
                        job.error = error
                        connection.rollback()
                    return
                # Savepoints on the driver's connection: SQLAlchemy's begin_nested() compiles
                # and dispatches a statement each way (~0.1 ms a job), and nothing else here
                # needs SQLAlchemy to know of them (a job's own begin_nested() nests inside).
                raw = connection.connection.driver_connection
                assert raw is not None
                for job in batch:
                    raw.execute("SAVEPOINT tollgate_job")
                    noted = len(connection.info.get(_NOTES, ()))
                    try:
                        job.result = job.work(connection)
                    except BaseException as error:  # handed to the job's own caller
                        raw.execute("ROLLBACK TO SAVEPOINT tollgate_job")
                        del connection.info.get(_NOTES, [])[noted:]
                        job.error = error
                    raw.execute("RELEASE SAVEPOINT tollgate_job")
        except BaseException as error:  # the commit itself failed: nobody's work is stored
            for job in batch:
                if job.error is None:
                    job.error = error
        finally:
            for job in batch:
                job.finished = True

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (a deferred BEGIN on SQLite, so readers never queue)."""
        with self.engine.connect().execution_options(tollgate_readonly=True) as connection:
            yield connection
            connection.rollback()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (creates it on first start)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            self.cluster_lock(connection, "schema")  # processes starting together migrate once
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def migration_status(self) -> tuple[str | None, str | None]:
        """(the database's Alembic revision, the newest migration's): equal when the schema is current."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(config).get_current_head()
        with self.read() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        return current, head

    def cluster_lock(self, connection: Connection, name: str) -> None:
        """Enter the critical section `name` of `CLUSTER_LOCKS` for the rest of `connection`'s
        write transaction: other processes on this database wait until it commits or rolls back."""
        statement = self.dialect.cluster_lock_sql
        if statement is not None:
            connection.execute(text(statement), {"key": CLUSTER_LOCKS[name]})

    def for_update(self) -> bool:
        """Whether row locks are available (SQLite serialises writers with BEGIN IMMEDIATE)."""
        return self.dialect.row_locks

    def dispose(self) -> None:
        self.engine.dispose()
