"""Initial schema: rules versions, clocks, instances, history, timers, outbox, idempotency.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rules_versions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("yaml", sa.Text(), nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("activated_at", TS, nullable=False),
        sa.Column("activated_by", sa.String(100), nullable=False),
    )
    op.create_table(
        "clocks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("now", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("workflow", sa.String(32), nullable=False),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("context", JSON, nullable=False),
        sa.Column("secrets", JSON, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("clock", sa.String(64), sa.ForeignKey("clocks.id"), nullable=True),
        sa.Column("account", sa.String(128), nullable=True),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("usage_month", sa.String(7), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_instances_workflow_state", "instances", ["workflow", "state"])
    op.create_index("ix_instances_account", "instances", ["account", "workflow"])
    op.create_index("ix_instances_email", "instances", ["email"])
    op.create_index("ix_instances_created", "instances", ["created_at", "id"])
    op.create_index("ux_invoice_month", "instances", ["account", "usage_month"], unique=True)
    op.create_table(
        "history",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("instance", sa.String(128), sa.ForeignKey("instances.id"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("from_state", sa.String(64), nullable=True),
        sa.Column("to_state", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reasons", JSON, nullable=False),
        sa.Column("notes", JSON, nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("rules_version", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.UniqueConstraint("instance", "seq", name="ux_history_instance_seq"),
    )
    op.create_table(
        "timers",
        sa.Column("instance", sa.String(128), sa.ForeignKey("instances.id"), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("clock", sa.String(64), nullable=True),
    )
    op.create_index("ix_timers_due", "timers", ["clock", "due_at"])
    op.create_table(
        "notifications",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("instance", sa.String(128), sa.ForeignKey("instances.id"), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(254), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_notifications_instance", "notifications", ["instance", "id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("body", JSON, nullable=False),
        sa.Column("headers", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    for name in ("idempotency_keys", "notifications", "timers", "history", "instances", "clocks",
                 "rules_versions"):
        op.drop_table(name)
