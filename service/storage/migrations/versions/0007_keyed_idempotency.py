"""Idempotency fingerprints keyed with a server secret (HMAC-SHA256), not a bare SHA-256.

An unkeyed SHA-256 of a request body let anyone who reads `idempotency_keys` recover a
`set_password` sent with an Idempotency-Key by trying candidate passwords. Fingerprints are now
HMAC-SHA256 under a key from TOLLGATE_SECRET_KEY or, when it is not set, a random key kept in the
new `server_keys` table (created on first use by `Runtime`, shared by every server and worker).

The old digests cannot be re-keyed (the requests are gone), so they are erased: each stored key is
marked 'legacy' and a replay of it still answers its stored response (never a 500), only without
the check that the body is the same.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LEGACY = "legacy"  # service/application/idempotency.py LEGACY_FINGERPRINT


def upgrade() -> None:
    op.create_table(
        "server_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(sa.text("UPDATE idempotency_keys SET fingerprint = :legacy").bindparams(legacy=LEGACY))


def downgrade() -> None:
    op.drop_table("server_keys")
