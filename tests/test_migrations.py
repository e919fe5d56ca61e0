"""Each service's Alembic migrations, on SQLite and on Postgres.

Upgrading creates every table, downgrading to base drops them all, upgrading
again works, and the migrated schema is exactly what the ORM models describe,
so the two cannot drift apart.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from agentmesh.db import downgrade, migrate
from agentmesh.mesh import ServicePlugin
from services import PLUGINS, plugins_named

# Every service that keeps data: its migrations must match its models.
WITH_DATA = [plugin for plugin in PLUGINS if plugin.migrations is not None]
(_REGISTRY,) = plugins_named("registry")
MIGRATIONS = _REGISTRY.migrations


@pytest.fixture(params=WITH_DATA, ids=lambda plugin: plugin.name)
def service(request) -> ServicePlugin:
    return request.param


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path) -> str:
    """A fresh, empty database, as the URL the service itself would be given."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/registry.db"
    return request.getfixturevalue("postgres").create_database(f"migrations_{uuid.uuid4().hex}")


@pytest.fixture
def engine(url) -> Iterator[sa.Engine]:
    """A sync engine on the same database, for inspecting it."""
    sync_url = make_url(url)
    if sync_url.drivername == "sqlite+aiosqlite":
        sync_url = sync_url.set(drivername="sqlite")
    engine = sa.create_engine(sync_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def version_table(migrations) -> str:
    return f"alembic_version_{migrations.parent.name}"


def current_revision(engine: sa.Engine, migrations=MIGRATIONS) -> str | None:
    with engine.connect() as conn:
        options = {"version_table": version_table(migrations)}
        return MigrationContext.configure(conn, opts=options).get_current_revision()


def head(migrations) -> str:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations))
    return ScriptDirectory.from_config(config).get_current_head()


def test_upgrade_downgrade_upgrade(service, url, engine):
    migrations, metadata = service.migrations, service.metadata
    model_tables = set(metadata.tables)
    versions = version_table(migrations)
    assert tables(engine) == set()

    migrate(migrations, url)
    assert model_tables  # the models define tables at all
    assert tables(engine) == model_tables | {versions}
    assert current_revision(engine, migrations) == head(migrations)

    migrate(migrations, url)  # already at head: nothing to do
    assert tables(engine) == model_tables | {versions}

    downgrade(migrations, url, "base")
    assert tables(engine) <= {versions}
    assert current_revision(engine, migrations) is None

    migrate(migrations, url)
    assert tables(engine) == model_tables | {versions}
    assert current_revision(engine, migrations) == head(migrations)


def test_services_sharing_one_database_each_get_their_tables(url, engine):
    """Each service keeps its own version table, so one migration never hides another's."""
    for plugin in WITH_DATA:
        migrate(plugin.migrations, url)
    for plugin in WITH_DATA:
        assert set(plugin.metadata.tables) <= tables(engine), plugin.name
        assert current_revision(engine, plugin.migrations) == head(plugin.migrations)


def test_upgrade_after_downgrade_starts_empty(url, engine):
    migrate(MIGRATIONS, url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO users (id, display_name, email, admin, create_time) "
                "VALUES ('u1', 'someone', '', false, CURRENT_TIMESTAMP)"
            )
        )
    downgrade(MIGRATIONS, url, "base")
    migrate(MIGRATIONS, url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one() == 0


def test_migrated_schema_matches_the_models(service, url, engine):
    migrations, metadata = service.migrations, service.metadata
    migrate(migrations, url)

    # Alembic's autogenerate diff: tables, columns, types, nullability, indexes,
    # unique constraints and foreign keys. Empty means a new migration is not needed.
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": version_table(migrations)}
        )
        diff = compare_metadata(context, metadata)
    assert diff == []

    # The same, spelled out, so a failure says plainly what drifted.
    inspector = sa.inspect(engine)
    for name, table in metadata.tables.items():
        columns = {column["name"]: column for column in inspector.get_columns(name)}
        assert set(columns) == {column.name for column in table.columns}, name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, (name, column.name)
        primary_key = inspector.get_pk_constraint(name)["constrained_columns"]
        assert set(primary_key) == {column.name for column in table.primary_key}, name

        foreign_keys = {
            (
                tuple(fk["constrained_columns"]),
                fk["referred_table"],
                tuple(fk["referred_columns"]),
                (fk.get("options") or {}).get("ondelete"),
            )
            for fk in inspector.get_foreign_keys(name)
        }
        assert foreign_keys == {
            (
                tuple(c.name for c in fk.columns),
                fk.referred_table.name,
                tuple(e.column.name for e in fk.elements),
                fk.ondelete,
            )
            for fk in table.foreign_key_constraints
        }, name

        checks = {check["name"] for check in inspector.get_check_constraints(name)}
        assert checks == {c.name for c in table.constraints if isinstance(c, sa.CheckConstraint)}, (
            name
        )

        indexed = {tuple(index["column_names"]) for index in inspector.get_indexes(name)}
        assert indexed >= {tuple(c.name for c in index.columns) for index in table.indexes}, name


def test_replicas_starting_together_migrate_one_database_once(postgres, service):
    """Replicas of one service start at once on one Postgres database: each waits for the
    one migrating, then finds it done; none fails on a table another just created."""
    url = postgres.create_database(f"together_{uuid.uuid4().hex}")
    # Processes, as replicas are (Alembic's command API keeps its state in module globals).
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(migrate, [service.migrations] * 4, [url] * 4, timeout=60))
    sync_url = make_url(url).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(sync_url, poolclass=sa.pool.NullPool)
    try:
        assert current_revision(engine, service.migrations) == head(service.migrations)
    finally:
        engine.dispose()
