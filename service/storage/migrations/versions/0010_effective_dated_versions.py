"""Effective-dated rules versions: `effective_at`, cancellation, and where timers were last planned.

A rules version may be scheduled (`PUT /rules?effective_at=T`): it judges every event and timer
whose own instant is at or after `effective_at` (a test clock's time included). Versions from
before this revision took effect when they were activated. A scheduled version can be cancelled
while it is still ahead (`cancelled_at`, `cancelled_by`). `rules_state` is one row: `generation`
moves on every change of the versions (a process re-reads its schedule when it sees it move) and
`timers_version` names the version real-time timers were last re-planned under; `clocks.
rules_version` does the same for each test clock.

Revision ID: 0010
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rules_versions") as batch:
        batch.add_column(sa.Column("effective_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("cancelled_by", sa.String(100), nullable=True))
    op.execute("UPDATE rules_versions SET effective_at = activated_at")
    with op.batch_alter_table("clocks") as batch:
        batch.add_column(sa.Column("rules_version", sa.BigInteger(), nullable=True))
    op.create_table(
        "rules_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("timers_version", sa.BigInteger(), nullable=True),
    )
    # Real-time timers were armed under the newest version (the only one in effect before this).
    op.execute("INSERT INTO rules_state (id, generation, timers_version) "
               "SELECT 1, 1, max(id) FROM rules_versions")


def downgrade() -> None:
    op.drop_table("rules_state")
    with op.batch_alter_table("clocks") as batch:
        batch.drop_column("rules_version")
    with op.batch_alter_table("rules_versions") as batch:
        batch.drop_column("cancelled_by")
        batch.drop_column("cancelled_at")
        batch.drop_column("effective_at")
