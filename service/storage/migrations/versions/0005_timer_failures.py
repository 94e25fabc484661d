"""Timers that fail are parked, and a clock is advanced by one holder at a time.

`failed_timers` keeps a timer whose event could not be judged (a rules expression that errs at
run time): it leaves `timers`, so every other timer goes on firing, and stays visible to operators
(`GET /instances/{id}`). `clocks.lease_owner` / `lease_expires` serialize the advances of one test
clock across threads and processes; a lease lapses when its holder stops renewing it.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "failed_timers",
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("instance", sa.String(128), sa.ForeignKey("instances.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("due_at", _TIMESTAMP, nullable=False),
        sa.Column("clock", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("failed_at", _TIMESTAMP, nullable=False),
        sa.Column("rules_version", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_failed_timers_instance", "failed_timers", ["instance", "id"])
    with op.batch_alter_table("clocks") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(32), nullable=True))
        batch.add_column(sa.Column("lease_expires", _TIMESTAMP, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clocks") as batch:
        batch.drop_column("lease_expires")
        batch.drop_column("lease_owner")
    op.drop_index("ix_failed_timers_instance", table_name="failed_timers")
    op.drop_table("failed_timers")
