"""Every difference between SQLite and PostgreSQL, in one registry keyed by dialect name.

Storage asks the dialect of its connection (`dialect_of`) or URL (`dialect_for_url`) instead of
branching on `if sqlite`: placeholders, row locks (`FOR UPDATE`, `SKIP LOCKED`), cluster-wide
locks, `IN` lists, bulk inserts (multi-row VALUES or COPY), how timestamps and JSON are written
and read back on the DBAPI cursor, engine options and connection pragmas. A dialect's answers are
fixed at start, so the hot loops pick their functions once per unit of work, never per row.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, event
from sqlalchemy.pool import StaticPool

#: Page size of a new SQLite database (an existing file keeps its own): 16 KiB instead of SQLite's
#: 4 KiB. A month of billing reads and writes the same bytes in a quarter of the system calls
#: (pread 788k → 218k, pwrite 1.17M → 0.46M for 380,000 transitions) and the b-trees are shallower;
#: bench/NOTES.md has the A/B runs.
PAGE_SIZE = 16_384
MULTI_ROWS = 100  # rows per multi-row INSERT on SQLite (100 x 13 columns, far below its 32,766 parameters)


def dumps(value: Any) -> str:
    """JSON text as SQLAlchemy's JSON type reads it (orjson: ~8x faster than json.dumps)."""
    if not value:  # the empty containers as constant text (a non-empty one skips this test at once)
        kind = type(value)
        if kind is dict:
            return "{}"
        if kind is list:
            return "[]"
        if isinstance(value, dict | list):
            return "{}" if isinstance(value, dict) else "[]"
    return orjson.dumps(value).decode()


def sqlite_timestamp(value: datetime | None) -> str | None:
    """The text SQLAlchemy stores for a DateTime on SQLite ('YYYY-MM-DD HH:MM:SS.ffffff', UTC)."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def parse_sqlite_timestamp(text: str | None) -> datetime | None:
    """The aware UTC datetime `service.storage.tables.UTCDateTime` reads back from SQLite's text."""
    if text is None:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def aware_utc(value: datetime | None) -> datetime | None:
    """What `UTCDateTime` reads back from PostgreSQL (aware, in UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def same(value: Any) -> Any:
    return value


class _TimestampMemo(dict[datetime, str | None]):
    """sqlite_timestamp per distinct instant: a batch's rows share a handful of them."""

    def __missing__(self, key: datetime) -> str | None:
        value = self[key] = sqlite_timestamp(key)
        return value


class Dialect:
    """What storage needs to know of one database dialect (the answers of `DIALECTS`' entries)."""

    name: str
    #: The DBAPI's placeholder, written for `?` in raw SQL.
    placeholder: str
    #: Row locks (`SELECT … FOR UPDATE [SKIP LOCKED]`): writers of different rows overlap. Without
    #: them the database has one writer at a time, queued in the process (`Database`).
    row_locks: bool
    #: One writer at a time for the whole database: writers queue on a lock in the process and
    #: share commits (group commit); worker processes can share the database file.
    single_writer: bool
    #: Naive timestamps in the database (UTC), converted at the boundary.
    naive_timestamps: bool
    #: How a transaction enters a cluster-wide critical section (None: the write lock already is one).
    cluster_lock_sql: str | None
    #: Append-only tables written with COPY (no conflict clause, no unique key but the id).
    copy_tables: frozenset[str] = frozenset()
    #: Rows per multi-row INSERT statement (0: executemany only).
    multi_rows: int = 0
    #: DELETE by key pairs grouped by the second column into `IN` lists (else executemany).
    grouped_deletes: bool = False

    def engine_options(self, url: str) -> dict[str, Any]:
        raise NotImplementedError

    def install(self, engine: Engine, url: str, synchronous: str, checkpoints: Callable[[int], int]) -> None:
        """Connection set-up (pragmas, BEGIN discipline) for `engine`; default: none."""

    def set_checkpoint(self, raw: Any, pages: int) -> None:
        """The WAL size (in pages) at which a commit checkpoints, on a driver connection (single
        writers only)."""

    def is_memory(self, url: str) -> bool:
        return False

    def timestamp_writer(self) -> Callable[[datetime | str | None], Any]:
        """A timestamp as the DBAPI cursor takes it (text kept as it is)."""
        raise NotImplementedError

    json_writer: Callable[[Any], Any]
    #: A JSON column's value on the DBAPI cursor → Python.
    json_reader: Callable[[Any], Any]
    #: A record's created_at / updated_at as the unit of work keeps them until written back.
    stamp_reader: Callable[[Any], Any]
    #: A timestamp on the DBAPI cursor → an aware UTC datetime.
    moment_reader: Callable[[Any], Any]

    def in_clause(self, column: str, values: list[str]) -> tuple[str, list[Any]]:
        """`column IN (…)` with its parameters."""
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def lock_suffix(self, *, skip_locked: bool = False) -> str:
        """What a SELECT ends with to lock its rows (empty without row locks)."""
        if not self.row_locks:
            return ""
        return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"


class SQLite(Dialect):
    name = "sqlite"
    placeholder = "?"
    row_locks = False
    single_writer = True
    naive_timestamps = True
    cluster_lock_sql = None  # its write transaction (BEGIN IMMEDIATE) shuts out every other writer
    multi_rows = MULTI_ROWS
    grouped_deletes = True
    json_writer = staticmethod(dumps)
    # context and secrets are NOT NULL: their text always parses.
    json_reader = staticmethod(orjson.loads)
    # created_at / updated_at of a loaded record are only ever written back by `flush`, so
    # SQLite's stored text is kept as it is (`timestamp_writer` passes text through).
    stamp_reader = staticmethod(same)
    moment_reader = staticmethod(parse_sqlite_timestamp)

    def is_memory(self, url: str) -> bool:
        return url in ("sqlite://", "sqlite:///:memory:")

    def engine_options(self, url: str) -> dict[str, Any]:
        options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if self.is_memory(url):
            options["poolclass"] = StaticPool
        return options

    def timestamp_writer(self) -> Callable[[datetime | str | None], Any]:
        memo = _TimestampMemo()
        # Text is what SQLite stores already (a record's timestamps as read by the unit of work).
        return lambda v: v if v is None or isinstance(v, str) else memo[v]

    def install(self, engine: Engine, url: str, synchronous: str, checkpoints: Callable[[int], int]) -> None:
        """WAL journal, `synchronous`, a 30 s busy timeout and `BEGIN IMMEDIATE`, so that writers
        queue instead of failing on lock upgrade; `checkpoints(page size)` once a file is open
        gives the WAL checkpoint threshold in pages."""
        memory = self.is_memory(url)

        @event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            if not memory:
                cursor.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a no-op unless the file is new
                cursor.execute("PRAGMA journal_mode=WAL")
                pages = checkpoints(int(cursor.execute("PRAGMA page_size").fetchone()[0]))
                cursor.execute(f"PRAGMA wal_autocheckpoint={pages}")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            # Statement journals (the undo of one multi-row statement inside a transaction, e.g.
            # 100 history rows in one INSERT) and temporary b-trees in memory, not in temporary
            # files: the billing month wrote 1.9 GB less (4.49 → 2.60 GB, 479k → 252k writes).
            cursor.execute("PRAGMA temp_store=MEMORY")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def on_begin(connection: Connection) -> None:
            readonly = connection.get_execution_options().get("tollgate_readonly")
            connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    def set_checkpoint(self, raw: Any, pages: int) -> None:
        raw.execute(f"PRAGMA wal_autocheckpoint={pages}")


class PostgreSQL(Dialect):
    name = "postgresql"
    placeholder = "%s"
    row_locks = True
    single_writer = False
    naive_timestamps = False
    cluster_lock_sql = "SELECT pg_advisory_xact_lock(:key)"
    copy_tables = frozenset({"history", "notifications"})
    json_reader = staticmethod(same)
    stamp_reader = staticmethod(aware_utc)
    moment_reader = staticmethod(aware_utc)

    def __init__(self) -> None:
        from psycopg.types.json import Jsonb

        self.json_writer = Jsonb

    def engine_options(self, url: str) -> dict[str, Any]:
        return {"pool_size": 10, "max_overflow": 20, "pool_pre_ping": True}

    def timestamp_writer(self) -> Callable[[datetime | str | None], Any]:
        return same

    def in_clause(self, column: str, values: list[str]) -> tuple[str, list[Any]]:
        """`column = ANY(?)`: one array parameter, one statement text whatever the count."""
        return f"{column} = ANY(?)", [list(values)]


#: The dialects by SQLAlchemy dialect name.
DIALECTS: dict[str, Dialect] = {"sqlite": SQLite(), "postgresql": PostgreSQL()}


def dialect_of(conn: Connection) -> Dialect:
    return DIALECTS[conn.dialect.name]


def dialect_for_url(url: str) -> Dialect:
    """The dialect of a SQLAlchemy URL (`sqlite:///…`, `postgresql+psycopg://…`)."""
    name = url.split(":", 1)[0].split("+", 1)[0]
    dialect = DIALECTS.get(name)
    if dialect is None:
        raise ValueError(f"The database URL must be sqlite:// or postgresql://, not {name}://.")
    return dialect
