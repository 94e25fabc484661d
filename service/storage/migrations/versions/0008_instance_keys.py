"""Declared keys in their own table: `instance_keys` replaces `instances.email` and `.usage_month`.

The workflow definitions declare the keys storage keeps (`keys:` in `definitions/*.yaml`): the
signup's login email (case-insensitive, released when the signup expires) and the invoice's
(account, usage month), unique. Storage keeps them generically, one row per instance and key, so
the generic `instances` table no longer carries columns of two workflows. Existing rows are
carried over as the bundled definitions declare them at this revision; the old columns and their
indexes are dropped (the downgrade brings them back from the keys).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SEPARATOR = "\x1f"  # between the values of a key of several fields (workflows.definitions.Key)
_CHUNK = 10_000


def upgrade() -> None:
    op.create_table(
        "instance_keys",
        sa.Column("instance", sa.String(128), sa.ForeignKey("instances.id"), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("workflow", sa.String(32), nullable=False),
        sa.Column("value", sa.String(600), nullable=False),
        sa.Column("unique_value", sa.String(600), nullable=True),
    )
    op.create_index("ix_instance_keys_value", "instance_keys", ["workflow", "name", "value"])
    op.create_index("ux_instance_keys_unique", "instance_keys", ["workflow", "name", "unique_value"],
                    unique=True)
    conn = op.get_bind()
    keys = sa.table("instance_keys", *(sa.column(c) for c in ("instance", "name", "workflow", "value",
                                                              "unique_value")))
    emails = conn.execute(sa.text("SELECT id, email FROM instances WHERE workflow = 'signup' "
                                  "AND email IS NOT NULL AND state <> 'expired'")).fetchall()
    _insert(conn, keys, ({"instance": i, "name": "email", "workflow": "signup", "value": e.strip().lower(),
                          "unique_value": None} for i, e in emails))
    months = conn.execute(sa.text("SELECT id, account, usage_month FROM instances WHERE workflow = 'invoice' "
                                  "AND account IS NOT NULL AND usage_month IS NOT NULL")).fetchall()
    _insert(conn, keys, ({"instance": i, "name": "account_month", "workflow": "invoice",
                          "value": a + SEPARATOR + m, "unique_value": a + SEPARATOR + m}
                         for i, a, m in months))
    op.drop_index("ix_instances_email", "instances")
    op.drop_index("ux_invoice_month", "instances")
    op.execute("ALTER TABLE instances DROP COLUMN email")
    op.execute("ALTER TABLE instances DROP COLUMN usage_month")


def _insert(conn: sa.Connection, table: sa.TableClause, rows: object) -> None:
    batch: list[dict[str, object]] = []
    for row in rows:  # type: ignore[attr-defined]
        batch.append(row)
        if len(batch) == _CHUNK:
            conn.execute(table.insert(), batch)
            batch = []
    if batch:
        conn.execute(table.insert(), batch)


def downgrade() -> None:
    op.add_column("instances", sa.Column("email", sa.String(254), nullable=True))
    op.add_column("instances", sa.Column("usage_month", sa.String(7), nullable=True))
    conn = op.get_bind()
    for instance, value in conn.execute(sa.text("SELECT instance, value FROM instance_keys "
                                                "WHERE name = 'email' AND workflow = 'signup'")).fetchall():
        conn.execute(sa.text("UPDATE instances SET email = :v WHERE id = :i"), {"v": value, "i": instance})
    for instance, value in conn.execute(sa.text("SELECT instance, value FROM instance_keys WHERE name = "
                                                "'account_month' AND workflow = 'invoice'")).fetchall():
        conn.execute(sa.text("UPDATE instances SET usage_month = :m WHERE id = :i"),
                     {"m": value.split(SEPARATOR)[1], "i": instance})
    op.create_index("ix_instances_email", "instances", ["email"])
    op.create_index("ux_invoice_month", "instances", ["account", "usage_month"], unique=True)
    op.drop_index("ux_instance_keys_unique", "instance_keys")
    op.drop_index("ix_instance_keys_value", "instance_keys")
    op.drop_table("instance_keys")
