"""The triggers service's tables, as migrations/versions builds them.

Every row belongs to a user (user_id) and every query names it, so one tenant
never reads another's. Schedules have ids unique per user (client-chosen ones
too); subscriptions, deliveries and triggers have generated ids, unique
outright, since a trigger is found by its id alone from its URL.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agentmesh.db import UtcDateTime

SEQ = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class ScheduleRow(Base):
    __tablename__ = "schedules"
    __table_args__ = (
        UniqueConstraint("user_id", "id", name="uq_schedules_user_id_id"),
        Index("ix_schedules_user_id_seq", "user_id", "seq"),
        # What every replica's scheduler asks for, often.
        Index("ix_schedules_next_fire_time", "next_fire_time"),
        Index("ix_schedules_fire_retry_time", "fire_retry_time"),
    )
    seq: Mapped[int] = mapped_column(SEQ, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64))
    id: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(128))
    input: Mapped[str] = mapped_column(Text)
    cron: Mapped[str] = mapped_column(String(256))
    time_zone: Mapped[str] = mapped_column(String(64))
    interval_seconds: Mapped[float] = mapped_column(Float)
    missed_tick_policy: Mapped[str] = mapped_column(String(16))
    paused: Mapped[bool] = mapped_column(Boolean)
    # The tick to consider next; NULL while paused. The claim of a tick is a
    # conditional UPDATE on it: of all replicas, one moves it on.
    next_fire_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # A claimed tick whose run is not known to have started, and when another try
    # may be made (the claimer died, or the runner was away): the same request id
    # makes a second try return the first run.
    fire_tick: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    fire_retry_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_fire_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_run: Mapped[str] = mapped_column(String(128))
    last_error: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    etag: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class SubscriptionRow(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("user_id", "id", name="uq_subscriptions_user_id_id"),
        Index("ix_subscriptions_user_id_seq", "user_id", "seq"),
    )
    seq: Mapped[int] = mapped_column(SEQ, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64))
    id: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    agent_id: Mapped[str] = mapped_column(String(64))
    # AES-GCM under a key derived from the service token (signatures.Sealer).
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    etag: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class DeliveryRow(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "subscription_id"],
            ["subscriptions.user_id", "subscriptions.id"],
            ondelete="CASCADE",
        ),
        # One delivery per event and subscription, however often the event arrives.
        UniqueConstraint("subscription_id", "event_id", name="uq_deliveries_subscription_event"),
        Index("ix_deliveries_user_id_subscription_id_seq", "user_id", "subscription_id", "seq"),
        # Set only while PENDING: what the delivery loop asks for.
        Index("ix_deliveries_next_attempt_time", "next_attempt_time"),
    )
    seq: Mapped[int] = mapped_column(SEQ, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(64))
    subscription_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(32))
    run: Mapped[str] = mapped_column(String(128))
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    last_status_code: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text)
    last_attempt_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    next_attempt_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class TriggerRow(Base):
    __tablename__ = "triggers"
    __table_args__ = (Index("ix_triggers_user_id_seq", "user_id", "seq"),)
    seq: Mapped[int] = mapped_column(SEQ, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64))
    id: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(128))
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    etag: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class HookReceiptRow(Base):
    """A webhook-id a trigger accepted, kept while a replay of it could still pass
    the timestamp check."""

    __tablename__ = "hook_receipts"
    trigger_id: Mapped[str] = mapped_column(
        ForeignKey("triggers.id", ondelete="CASCADE"), primary_key=True
    )
    webhook_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    receive_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
