"""Group commit on SQLite: concurrent writers share one transaction and one commit, and a
failing writer is undone alone."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, insert, select

from tollgate.service.storage.db import Database
from tollgate.service.storage.tables import clocks

NOW = datetime(2026, 11, 26, tzinfo=UTC)


class Boom(Exception):
    pass


def _writer(name: str, *, fail: bool = False) -> Any:
    def work(conn: Connection) -> str:
        conn.execute(insert(clocks).values(id=name, now=NOW, created_at=NOW))
        if fail:
            raise Boom(name)
        return name
    return work


def test_queued_writers_share_one_commit_and_a_failure_is_undone_alone(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'g.db'}")
    db.migrate()
    commits: list[int] = []
    event.listen(db.engine, "commit", lambda conn: commits.append(1))
    results: dict[str, Any] = {}

    def call(name: str, fail: bool) -> None:
        try:
            results[name] = db.grouped(_writer(name, fail=fail))
        except Boom as error:
            results[name] = error

    names = [f"c{i}" for i in range(6)]
    with db._write_lock:  # type: ignore[union-attr]  # hold the lock so that all six queue up
        threads = [threading.Thread(target=call, args=(n, n == "c3")) for n in names]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(db._queue) < len(names) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(db._queue) == len(names)
    for thread in threads:
        thread.join(10)

    assert len(commits) == 1, "one commit for the whole group"
    assert isinstance(results["c3"], Boom) and str(results["c3"]) == "c3"
    assert {n: results[n] for n in names if n != "c3"} == {n: n for n in names if n != "c3"}
    with db.read() as conn:
        stored = set(conn.execute(select(clocks.c.id)).scalars())
    assert stored == set(names) - {"c3"}
    db.dispose()


def test_a_failed_commit_fails_every_caller_of_the_group(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'g.db'}")
    db.migrate()

    def refuse(conn: Any) -> None:
        raise OSError("disk full")

    event.listen(db.engine, "commit", refuse)
    with pytest.raises(OSError, match="disk full"):
        db.grouped(_writer("x"))
    event.remove(db.engine, "commit", refuse)
    with db.read() as conn:
        assert list(conn.execute(select(clocks.c.id))) == []
    db.dispose()


def test_a_writer_alone_is_undone_whole_and_the_next_one_commits(tmp_path: Path) -> None:
    """A group of one runs without a savepoint: its failure rolls the transaction back."""
    db = Database(f"sqlite:///{tmp_path / 'g.db'}")
    db.migrate()
    with pytest.raises(Boom, match="alone"):
        db.grouped(_writer("alone", fail=True))
    assert db.grouped(_writer("next")) == "next"
    with db.read() as conn:
        assert set(conn.execute(select(clocks.c.id)).scalars()) == {"next"}
    db.dispose()


def test_bulk_transactions_checkpoint_rarely_and_api_ones_at_sqlites_default(tmp_path: Path) -> None:
    from tollgate.service.storage.db import BULK_AUTOCHECKPOINT_BYTES, PAGE_SIZE, WAL_AUTOCHECKPOINT_BYTES

    db = Database(f"sqlite:///{tmp_path / 'g.db'}")
    db.migrate()

    def pages(conn: Connection) -> int:
        return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())

    assert db.checkpoint_pages == (4 * 1024 * 1024 // PAGE_SIZE, 40 * 1024 * 1024 // PAGE_SIZE)
    with db.transaction(bulk=True) as conn:
        assert pages(conn) * PAGE_SIZE == BULK_AUTOCHECKPOINT_BYTES == 40 * 1024 * 1024
    with db.transaction() as conn:  # the pool's one connection, given back to API work
        assert pages(conn) * PAGE_SIZE == WAL_AUTOCHECKPOINT_BYTES == 4 * 1024 * 1024
    assert db.grouped(pages) == db.checkpoint_pages[0]
    db.dispose()


def test_a_new_database_gets_16_kib_pages_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    import sqlite3

    new = Database(f"sqlite:///{tmp_path / 'new.db'}")
    new.migrate()
    with new.read() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar_one() == 16_384
    new.dispose()

    old_path = tmp_path / "old.db"  # made by an earlier tollgate (or by hand) with 4 KiB pages
    raw = sqlite3.connect(old_path)
    raw.execute("PRAGMA page_size=4096")
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("CREATE TABLE kept (v TEXT)")
    raw.execute("INSERT INTO kept VALUES ('still here')")
    raw.commit()
    raw.close()
    old = Database(f"sqlite:///{old_path}")
    old.migrate()
    with old.transaction(bulk=True) as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar_one() == 4096
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 10_240  # 40 MiB
        assert conn.exec_driver_sql("SELECT v FROM kept").scalar_one() == "still here"
    assert old.checkpoint_pages == (1_024, 10_240)
    old.dispose()


def test_bulk_work_raises_the_gc_threshold_until_the_last_overlapping_one_ends(tmp_path: Path) -> None:
    import gc

    from tollgate.service.storage.db import BULK_GC_THRESHOLD

    db = Database(f"sqlite:///{tmp_path / 'g.db'}")
    before = gc.get_threshold()
    assert before != BULK_GC_THRESHOLD
    first, second = db.bulk_work(), db.bulk_work()
    first.__enter__()
    assert gc.get_threshold() == BULK_GC_THRESHOLD
    second.__enter__()
    first.__exit__(None, None, None)  # overlapping, not nested: the first ends first
    assert gc.get_threshold() == BULK_GC_THRESHOLD
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before
    with pytest.raises(Boom), db.bulk_work():
        raise Boom("restored on errors too")
    assert gc.get_threshold() == before
    db.dispose()


def test_a_failing_multi_row_statement_is_undone_alone_with_its_journal_in_memory(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'j.db'}")
    db.migrate()
    with db.transaction() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        assert raw.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
        raw.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        raw.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.IntegrityError):  # the third row collides with the first
            raw.execute("INSERT INTO t VALUES (2), (3), (1)")
        raw.execute("INSERT INTO t VALUES (4)")
    with db.read() as conn:
        assert [k for (k,) in conn.exec_driver_sql("SELECT k FROM t ORDER BY k")] == [1, 4]
    db.dispose()
