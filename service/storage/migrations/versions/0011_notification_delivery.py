"""Delivery of the outbox: each notification's delivery state and a log of its attempts.

`notifications` gains `delivery_state` (pending, retrying, delivered, dead), `attempts`,
`next_attempt_at` (NULL: as soon as a relay looks; while a relay holds it, the end of its claim),
`claim` (the token of the relay sending it now), `last_status` (the receiver's last answer) and
`first_attempt_at` (real time: where the retry window starts; a redelivery starts it again);
`notification_attempts` logs every attempt (when, result, status, a short detail).

Rows that exist before this revision are marked `delivered`, with no attempt: until now the outbox
was delivered by clients polling `GET /notifications`, so those notices reached whoever reads them
already, and a billing system must not send a customer last month's invoice mail again on upgrade.
An operator who wants one sent anyway calls `POST /notifications/{id}/redeliver` (README, Delivery).
New rows start `pending` (the column's server default: the bulk writers do not name the column).

Revision ID: 0011
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("delivery_state", sa.String(16), nullable=False, server_default="pending"))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("claim", sa.String(32), nullable=True))
        batch.add_column(sa.Column("last_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE notifications SET delivery_state = 'delivered'")
    op.create_index("ix_notifications_due", "notifications", ["delivery_state", "channel", "next_attempt_at"])
    op.create_table(
        "notification_attempts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("notification", sa.BigInteger, sa.ForeignKey("notifications.id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("detail", sa.String(500), nullable=False),
    )
    op.create_index("ix_notification_attempts_notification", "notification_attempts", ["notification", "id"])


def downgrade() -> None:
    op.drop_index("ix_notification_attempts_notification", "notification_attempts")
    op.drop_table("notification_attempts")
    op.drop_index("ix_notifications_due", "notifications")
    with op.batch_alter_table("notifications") as batch:
        for column in ("first_attempt_at", "last_status", "claim", "next_attempt_at", "attempts",
                       "delivery_state"):
            batch.drop_column(column)
