"""The database schema as SQLAlchemy Core tables (the migrations create exactly these)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

from tollgate.service.storage.dialects import DIALECTS

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("Naive datetimes are not stored; give a timezone.")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if DIALECTS[dialect.name].naive_timestamps else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")

rules_versions = Table(
    "rules_versions", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False),
    Column("yaml", Text, nullable=False),
    Column("source", String(500), nullable=False),
    Column("activated_at", UTCDateTime, nullable=False),
    Column("activated_by", String(100), nullable=False),
    # Effective-dated versions (migration 0010): the version judges instants from `effective_at`
    # on (its activation time unless it was scheduled); a scheduled one may be cancelled before.
    Column("effective_at", UTCDateTime, nullable=True),
    Column("cancelled_at", UTCDateTime, nullable=True),
    Column("cancelled_by", String(100), nullable=True),
)

#: One row (id 1): `generation` moves on every change of the versions, so a process re-reads its
#: schedule only then; `timers_version` is the version real-time timers were last re-planned under
#: (`service/application/replans.py`). Migration 0010.
rules_state = Table(
    "rules_state", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("generation", BigInteger, nullable=False),
    Column("timers_version", BigInteger, nullable=True),
)

#: The last import of each rules file (by absolute path): a server start imports the file again
#: only when its digest differs from the one recorded here, never because the API activated
#: another version since (`RulesVersions.start`).
rules_file_imports = Table(
    "rules_file_imports", metadata,
    Column("path", String(500), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("version", BigInteger, ForeignKey("rules_versions.id"), nullable=False),
    Column("imported_at", UTCDateTime, nullable=False),
)

clocks = Table(
    "clocks", metadata,
    Column("id", String(64), primary_key=True),
    Column("now", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # The advance that holds the clock (service/application/sweeps.py): one at a time, each batch renews it,
    # and a lease whose holder died lapses at `lease_expires` (migration 0005).
    Column("lease_owner", String(32), nullable=True),
    Column("lease_expires", UTCDateTime, nullable=True),
    # The rules version this clock's timers were last planned under (migration 0010).
    Column("rules_version", BigInteger, nullable=True),
)

instances = Table(
    "instances", metadata,
    Column("id", String(128), primary_key=True),
    Column("workflow", String(32), nullable=False),
    Column("state", String(64), nullable=False),
    Column("context", Json, nullable=False),
    Column("secrets", Json, nullable=False),
    Column("version", Integer, nullable=False),
    Column("history_seq", Integer, nullable=False, server_default="0"),
    Column("clock", String(64), ForeignKey("clocks.id"), nullable=True),
    Column("account", String(128), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_instances_workflow_state", "workflow", "state"),
    Index("ix_instances_account", "account", "workflow"),
    Index("ix_instances_created", "created_at", "id"),
)

#: The keys the workflow definitions declare (`keys:`), one row per instance and key while the
#: instance holds it (migration 0008): `value` to find its holders, `unique_value` (the same, for a
#: unique key; NULL otherwise) for the database to refuse a second holder.
instance_keys = Table(
    "instance_keys", metadata,
    Column("instance", String(128), ForeignKey("instances.id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("workflow", String(32), nullable=False),
    Column("value", String(600), nullable=False),
    Column("unique_value", String(600), nullable=True),
    Index("ix_instance_keys_value", "workflow", "name", "value"),
    Index("ux_instance_keys_unique", "workflow", "name", "unique_value", unique=True),
)

history = Table(
    "history", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("instance", String(128), ForeignKey("instances.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("event", String(64), nullable=False),
    Column("from_state", String(64), nullable=True),
    Column("to_state", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reasons", Json, nullable=False),
    Column("notes", Json, nullable=False),
    Column("data", Json, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("rules_version", BigInteger, nullable=False),
    Column("actor", String(200), nullable=False),
    # What replay needs besides `data` and `at` (migration 0009; NULL before): see
    # service/application/impact.py. Never a secret: rules over secrets keep only their results.
    Column("inputs", Json, nullable=True),
    UniqueConstraint("instance", "seq", name="ux_history_instance_seq"),
)

timers = Table(
    "timers", metadata,
    Column("instance", String(128), ForeignKey("instances.id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("event", String(64), nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("clock", String(64), nullable=True),
    # The instant and the history row (seq) that armed the timer (migration 0009; NULL before).
    Column("armed_at", UTCDateTime, nullable=True),
    Column("armed_seq", Integer, nullable=True),
    Index("ix_timers_due", "clock", "due_at", "instance", "name"),
)

#: Timers whose event failed to be judged (a rules expression that errs at run time): taken out of
#: `timers` so that the others go on firing, kept here for operators (migration 0005).
failed_timers = Table(
    "failed_timers", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("instance", String(128), ForeignKey("instances.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("event", String(64), nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("clock", String(64), nullable=True),
    Column("error", Text, nullable=False),
    Column("failed_at", UTCDateTime, nullable=False),
    Column("rules_version", BigInteger, nullable=False),
    Index("ix_failed_timers_instance", "instance", "id"),
)

notifications = Table(
    "notifications", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("instance", String(128), ForeignKey("instances.id"), nullable=False),
    Column("template", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("recipient", String(254), nullable=False),
    Column("payload", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # Delivery (migration 0011, service/application/relay.py): pending → delivered, or retrying →
    # … → dead; `next_attempt_at` NULL is "now"; `claim` is the token of the relay sending it.
    Column("delivery_state", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    Column("claim", String(32), nullable=True),
    Column("last_status", String(16), nullable=True),
    Column("first_attempt_at", UTCDateTime, nullable=True),  # the retry window's start (real time)
    Index("ix_notifications_instance", "instance", "id"),
    Index("ix_notifications_due", "delivery_state", "channel", "next_attempt_at"),
)

#: Every attempt to deliver a notification (migration 0011): when, delivered or failed, the
#: receiver's status (e.g. "202", "250"; NULL without an answer) and a short sentence.
notification_attempts = Table(
    "notification_attempts", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("notification", BigInteger, ForeignKey("notifications.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("result", String(16), nullable=False),
    Column("status", String(16), nullable=True),
    Column("detail", String(500), nullable=False),
    Index("ix_notification_attempts_notification", "notification", "id"),
)

idempotency = Table(
    "idempotency_keys", metadata,
    Column("key", String(200), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("body", Text, nullable=False),  # the JSON text first answered, byte for byte
    Column("headers", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

server_keys = Table(
    "server_keys", metadata,  # secrets every server and worker of a cluster shares (idempotency.py)
    Column("name", String(64), primary_key=True),
    Column("secret", String(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
