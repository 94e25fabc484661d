"""timers: index the sweep's whole order (clock, due_at, instance, name).

The sweep claims the first `batch` due timers ORDER BY due_at, instance, name. With an index on
(clock, due_at) only, every sweep sorted all timers of the earliest instant to take the first
1,000 of them: a billing run with a million issue timers at one instant did a million-row sort
per batch (quadratic in N). With the full order in the index, the LIMIT stops after `batch` rows.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_timers_due", table_name="timers")
    op.create_index("ix_timers_due", "timers", ["clock", "due_at", "instance", "name"])


def downgrade() -> None:
    op.drop_index("ix_timers_due", table_name="timers")
    op.create_index("ix_timers_due", "timers", ["clock", "due_at"])
