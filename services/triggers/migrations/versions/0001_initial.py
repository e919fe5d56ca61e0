"""Schedules, subscriptions and their deliveries, triggers and their receipts.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def _seq() -> sa.Column:
    return sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "schedules",
        _seq(),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("cron", sa.String(256), nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("interval_seconds", sa.Float, nullable=False),
        sa.Column("missed_tick_policy", sa.String(16), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        _time("next_fire_time", nullable=True),
        _time("fire_tick", nullable=True),
        _time("fire_retry_time", nullable=True),
        _time("last_fire_time", nullable=True),
        sa.Column("last_run", sa.String(128), nullable=False),
        sa.Column("last_error", sa.LargeBinary, nullable=True),
        sa.Column("etag", sa.String(64), nullable=False),
        _time("create_time"),
        _time("update_time"),
        sa.UniqueConstraint("user_id", "id", name="uq_schedules_user_id_id"),
    )
    op.create_index("ix_schedules_user_id_seq", "schedules", ["user_id", "seq"])
    op.create_index("ix_schedules_next_fire_time", "schedules", ["next_fire_time"])
    op.create_index("ix_schedules_fire_retry_time", "schedules", ["fire_retry_time"])

    op.create_table(
        "subscriptions",
        _seq(),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("event_types", sa.JSON, nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary, nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        _time("create_time"),
        _time("update_time"),
        sa.UniqueConstraint("user_id", "id", name="uq_subscriptions_user_id_id"),
    )
    op.create_index("ix_subscriptions_user_id_seq", "subscriptions", ["user_id", "seq"])

    op.create_table(
        "deliveries",
        _seq(),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("run", sa.String(128), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_status_code", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
        _time("last_attempt_time", nullable=True),
        _time("next_attempt_time", nullable=True),
        _time("create_time"),
        sa.ForeignKeyConstraint(
            ["user_id", "subscription_id"],
            ["subscriptions.user_id", "subscriptions.id"],
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("subscription_id", "event_id", name="uq_deliveries_subscription_event"),
    )
    op.create_index(
        "ix_deliveries_user_id_subscription_id_seq",
        "deliveries",
        ["user_id", "subscription_id", "seq"],
    )
    op.create_index("ix_deliveries_next_attempt_time", "deliveries", ["next_attempt_time"])

    op.create_table(
        "triggers",
        _seq(),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary, nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        _time("create_time"),
        _time("update_time"),
    )
    op.create_index("ix_triggers_user_id_seq", "triggers", ["user_id", "seq"])

    op.create_table(
        "hook_receipts",
        sa.Column(
            "trigger_id",
            sa.String(64),
            sa.ForeignKey("triggers.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("webhook_id", sa.String(64), primary_key=True),
        _time("receive_time"),
    )
    op.create_index("ix_hook_receipts_receive_time", "hook_receipts", ["receive_time"])


def downgrade() -> None:
    op.drop_table("hook_receipts")
    op.drop_table("triggers")
    op.drop_table("deliveries")
    op.drop_table("subscriptions")
    op.drop_table("schedules")
