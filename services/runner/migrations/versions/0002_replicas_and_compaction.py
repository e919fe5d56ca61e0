"""Runs across runner replicas: queued runs' start data, busy policies, leases,
safe points for takeover, held reservations; conversations' compaction time.

Revision ID: 0002
Revises: 0001

Runs that exist already get no owner and no lease: one still RUNNING is taken
over by the first replica's sweep (and, not being replayable, ends FAILED with
RUNNER_LOST), which is all that can be said for a run of a runner that is gone.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("start_context", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("busy_policy", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(
            sa.Column("waiting", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("interrupts", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_expire_time", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("replayable", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(
            sa.Column("checkpoint_item_seq", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("reservations", sa.JSON(), server_default="[]", nullable=False))
        batch.create_index("runs_by_lease", ["state", "lease_expire_time"], unique=False)
        batch.create_index(batch.f("ix_runs_end_time"), ["end_time"], unique=False)
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("compact_time", sa.DateTime(timezone=True), nullable=True))
        batch.create_index(batch.f("ix_conversations_update_time"), ["update_time"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_index(batch.f("ix_conversations_update_time"))
        batch.drop_column("compact_time")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index(batch.f("ix_runs_end_time"))
        batch.drop_index("runs_by_lease")
        for column in (
            "reservations",
            "attempts",
            "checkpoint_item_seq",
            "replayable",
            "lease_expire_time",
            "owner",
            "interrupts",
            "waiting",
            "busy_policy",
            "start_context",
        ):
            batch.drop_column(column)
