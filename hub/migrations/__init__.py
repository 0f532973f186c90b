"""Alembic migrations of the system of record, run in-process (no alembic.ini to install).

``Database.upgrade`` calls :func:`upgrade` at hub start; ``coldchain hub migrate`` runs it alone,
for operators who migrate before they roll out a new hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from hub.db import StoreError

MIGRATION_LOCK_KEY: Final = 0x636F6C64  # "cold": PostgreSQL advisory lock held while one hub migrates
"""Two hub processes starting together on one PostgreSQL database migrate one after the other."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision the code knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None, "hub/migrations has no revisions"
    return revision


def current(connection: Connection) -> str | None:
    """The revision a database is at (``None``: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Bring the schema to the newest revision in one transaction; return that revision."""
    with engine.connect().execution_options(coldchain_write=True) as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        elif current(connection) is None and connection.exec_driver_sql("PRAGMA user_version").scalar():
            raise StoreError(
                "this SQLite store was made by a hub from before schema migrations (see docs/operations.md):"
                " start a new store file; the gateways send again what the hub has not receipted"
            )
        command.upgrade(_config(connection), "head")
        revision = current(connection)
    assert revision is not None
    return revision
