"""instances.history_seq: count attempts apart from the version.

A denied attempt is history but does not change the instance, so it no longer advances the
version (clients holding the ETag keep a valid If-Match); history rows are numbered from this
counter instead.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("history_seq", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE instances SET history_seq = (SELECT COALESCE(MAX(seq), 0) FROM history "
               "WHERE history.instance = instances.id)")


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("history_seq")
