"""Alembic environment: runs on the connection aimesh hands over, never on a URL in a file."""

from __future__ import annotations

from alembic import context

from aimesh.registry.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
