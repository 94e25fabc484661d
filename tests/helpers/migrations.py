"""Alembic driven by hand for the migration tests: upgrade or downgrade a database to a revision."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from tollgate.service.storage.db import MIGRATIONS, Database


def run_migration(db: Database, action: str, revision: str) -> None:
    """`action` ("upgrade" or "downgrade") `db` to `revision`, in one transaction."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)
