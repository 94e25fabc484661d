"""rules_file_imports: the digest of each rules file when it was last imported.

A server start used to activate the rules file whenever it differed from the newest version,
undoing any version activated over the API since. It now imports the file only when the file
itself changed since its last import, and this table remembers that digest per path.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rules_file_imports",
        sa.Column("path", sa.String(500), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger(), sa.ForeignKey("rules_versions.id"), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rules_file_imports")
