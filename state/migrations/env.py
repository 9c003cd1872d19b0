"""Alembic's entry point for the store's migrations.

Run through :func:`state.migrations.upgrade`, which hands over a connection that
already holds the migration lock and its transaction: everything here runs in it,
and it commits (or rolls back) as one.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the store's migrations run through `moodwire store upgrade` (or any Store() open), "
        "not the alembic command line: they need the store's migration lock"
    )
# render_as_batch: SQLite alters a table by copying it (ALTER COLUMN, constraints).
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
