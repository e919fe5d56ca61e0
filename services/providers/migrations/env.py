"""Alembic environment for the providers's database (SQLite or Postgres)."""

from alembic import context
from sqlalchemy import create_engine, pool

url = context.config.attributes["url"]
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    # render_as_batch lets ALTERs run on SQLite, which rebuilds the table instead.
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
