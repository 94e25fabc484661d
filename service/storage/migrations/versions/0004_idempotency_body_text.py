"""idempotency_keys.body as text: a replay returns the first response byte for byte.

PostgreSQL's JSONB reorders object keys, so a stored response read back differed from the one
first sent; the body is now kept as the JSON text it was.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.alter_column("body", type_=sa.Text(), existing_nullable=False,
                           postgresql_using="body::text")


def downgrade() -> None:
    json = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.alter_column("body", type_=json, existing_nullable=False, postgresql_using="body::jsonb")
