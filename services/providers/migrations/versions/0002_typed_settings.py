"""Typed provider settings in place of additional_config; at most one default per user.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

_providers = sa.table(
    "providers",
    sa.column("seq", sa.Integer),
    sa.column("user_id", sa.String),
    sa.column("config", sa.JSON),
    sa.column("is_default", sa.Boolean),
)


def _typed(config: dict) -> dict:
    extra = config.pop("additional_config", {}) or {}
    settings = {}
    if config.get("type") == "azure_openai" and extra.get("api_version"):
        settings["azure_openai"] = {
            "api_version": str(extra["api_version"]),
            "deployment": str(extra.get("deployment", "")),
        }
    if config.get("type") == "anthropic" and extra.get("anthropic_version"):
        settings["anthropic"] = {"anthropic_version": str(extra["anthropic_version"])}
    headers = extra.get("extra_headers") or {}
    return {
        **config,
        "settings": settings,
        "extra_headers": {str(k): str(v) for k, v in headers.items()},
    }


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(
            _providers.c.seq, _providers.c.user_id, _providers.c.config, _providers.c.is_default
        ).order_by(_providers.c.seq.desc())
    ).all()
    defaults_seen = set()
    for row in rows:
        # The newest default of a user stays its default.
        is_default = bool(row.is_default) and row.user_id not in defaults_seen
        if is_default:
            defaults_seen.add(row.user_id)
        connection.execute(
            _providers.update()
            .where(_providers.c.seq == row.seq)
            .values(config=_typed(dict(row.config)), is_default=is_default)
        )
    op.create_index(
        "one_default_provider_per_user",
        "providers",
        ["user_id"],
        unique=True,
        sqlite_where=sa.text("is_default"),
        postgresql_where=sa.text("is_default"),
    )


def downgrade() -> None:
    op.drop_index("one_default_provider_per_user", "providers")
    connection = op.get_bind()
    for row in connection.execute(sa.select(_providers.c.seq, _providers.c.config)).all():
        config = dict(row.config)
        settings = config.pop("settings", {})
        headers = config.pop("extra_headers", {})
        extra = {**settings.get("azure_openai", {}), **settings.get("anthropic", {})}
        if headers:
            extra["extra_headers"] = headers
        config["additional_config"] = extra
        connection.execute(
            _providers.update().where(_providers.c.seq == row.seq).values(config=config)
        )
