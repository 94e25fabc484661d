"""Replay inputs in the history, and when and by which row each timer was armed.

`history.inputs` keeps what the guards, routes and timers of an attempt read besides its data
and instant (which the row has already), so that `tollgate rules impact` can judge the attempt
again under a candidate policy: the instance's context before the event (its secret fields
left out), the referenced account when the judging version read it, the facts gathered, and
for the rules that read a secret (a password, an email code) only their true/false results —
never the secret. NULL for rows written before this migration: the impact report counts them
as not replayable. `timers.armed_at` / `armed_seq` name the instant and the history row that
armed a timer (NULL for timers armed before), for the report's look-ahead.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    json = sa.JSON().with_variant(JSONB(), "postgresql")
    with op.batch_alter_table("history") as batch:
        batch.add_column(sa.Column("inputs", json, nullable=True))
    with op.batch_alter_table("timers") as batch:
        batch.add_column(sa.Column("armed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("armed_seq", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("timers") as batch:
        batch.drop_column("armed_seq")
        batch.drop_column("armed_at")
    with op.batch_alter_table("history") as batch:
        batch.drop_column("inputs")
