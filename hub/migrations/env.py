"""Alembic's entry point: runs on the connection ``hub.migrations`` hands over (never from a URL here)."""

from __future__ import annotations

from alembic import context

from hub.schema import metadata

connection = context.config.attributes["connection"]
# SQLite alters tables by copying them ("batch" mode); PostgreSQL alters in place.
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
