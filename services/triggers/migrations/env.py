"""Alembic environment for the triggers service's database (SQLite or Postgres)."""

from agentmesh.db import run_migrations_from_env

run_migrations_from_env()
