"""Declarations of the outbox tables: the contract with order systems in any language."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from spotler_outbox.models.clock import as_utc

# MariaDB and MySQL 8, one dialect family: no RETURNING, no partial indexes, gap locks.
MYSQL_FAMILY = ("mysql", "mariadb")


class Status(enum.StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    FAILED = "failed"


DUE_STATUSES = (Status.PENDING.value, Status.IN_FLIGHT.value)
UNPURGED = "delivered_at IS NOT NULL AND purged_at IS NULL"


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """An aware UTC datetime on every dialect.

    PostgreSQL keeps timestamptz; MariaDB and SQLite have no zone, so UTC is stored naive.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in MYSQL_FAMILY:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=dialect.name == "postgresql"))

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        return as_utc(value)  # text on SQLite for a raw default such as CURRENT_TIMESTAMP


class utc_now(sa.sql.expression.FunctionElement[dt.datetime]):
    """The database's current UTC time, for defaults of rows inserted with plain SQL."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(utc_now)
def _utc_now_default(element: Any, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(utc_now, "postgresql")
def _utc_now_postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    return "now()"


@compiles(utc_now, "mysql")
@compiles(utc_now, "mariadb")
def _utc_now_mysql(element: Any, compiler: Any, **kw: Any) -> str:
    return "(UTC_TIMESTAMP(6))"


# MariaDB's default collations fold case and accents: orderids "AB-1" and "ab-1" would be
# one order, and the second purchase never sent. Compare them byte for byte.
def key_text(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb")


# SQLite only makes INTEGER PRIMARY KEY an auto-incrementing rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# The payload is kept as the exact JSON text that will be sent (no key reordering).
PayloadText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


class Base(DeclarativeBase):
    pass


class OutboxEvent(Base):
    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The Spotler account (store) the order belongs to; '' is the default account, the one
    # SPOTLER_ACCOUNT names (models.accounts).
    account: Mapped[str] = mapped_column(key_text(64), server_default="")
    event: Mapped[str] = mapped_column(key_text(64), server_default="Purchase")
    orderid: Mapped[str] = mapped_column(key_text(128))
    payload: Mapped[str] = mapped_column(PayloadText)
    status: Mapped[str] = mapped_column(sa.String(16), server_default=Status.PENDING.value)
    attempts: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    # While in flight, next_attempt_at equals the lease expiry, so one index serves both
    # "due" and "lease expired" and the claim needs no OR.
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=utc_now())
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    claim_token: Mapped[str | None] = mapped_column(sa.String(64))
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_http_status: Mapped[int | None] = mapped_column(sa.Integer)
    resends: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=utc_now())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=utc_now())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Set when an operator re-queues the row (retry, resend): the retry window starts again.
    requeued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # True only when enqueue_purchase wrote the payload, after validating it: the worker sends
    # such a row's stored JSON as it is. Plain SQL leaves it false, so the worker validates.
    validated: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    # Set when retention or an erasure emptied the payload: the row stays as the compact
    # record (event, orderid, delivered_at) that keeps a re-enqueue of the orderid a no-op.
    purged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    attempts_made: Mapped[list[AttemptEvent]] = relationship(
        back_populates="outbox_event", viewonly=True
    )

    __table_args__ = (
        # Order numbers repeat across stores (Magento's per-store increment ids).
        sa.UniqueConstraint("account", "event", "orderid",
                            name="uq_outbox_events_account_event_orderid"),
        sa.CheckConstraint(
            "status IN ('pending', 'in_flight', 'delivered', 'failed')",
            name="ck_outbox_events_status",
        ),
        # Partial where the dialect has it, so millions of delivered rows cost the claim nothing;
        # MariaDB gets the composite, whose leading status column skips them just the same.
        # The claim reads one account at a time and stops before the index when the account is
        # paused or held, so a stopped account's rows are never read.
        sa.Index(
            "ix_outbox_events_due",
            "status",
            "account",
            "next_attempt_at",
            postgresql_where=sa.text("status IN ('pending', 'in_flight')"),
            sqlite_where=sa.text("status IN ('pending', 'in_flight')"),
        ),
        # Every query on delivery time asks for delivered rows: partial where the dialect has
        # it, so enqueues and claims (each rewrites the row) add no NULL entry to it.
        sa.Index("ix_outbox_events_delivered_at", "delivered_at",
                 postgresql_where=sa.text("delivered_at IS NOT NULL"),
                 sqlite_where=sa.text("delivered_at IS NOT NULL")),
        # Retention's keyset walks delivered_at over rows not yet purged; partial where the
        # dialect has it, so the compact rows left behind cost each run nothing.
        sa.Index(
            "ix_outbox_events_unpurged",
            "delivered_at",
            "purged_at",
            postgresql_where=sa.text(UNPURGED),
            sqlite_where=sa.text(UNPURGED),
        ),
    )


class DeliveryAttempt(Base):
    """One HTTP request to Spotler, whatever its outcome."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(sa.Integer)
    event_count: Mapped[int] = mapped_column(sa.Integer)
    http_status: Mapped[int | None] = mapped_column(sa.Integer)
    outcome: Mapped[str] = mapped_column(sa.String(32))
    error_class: Mapped[str | None] = mapped_column(sa.String(64))
    response_excerpt: Mapped[str | None] = mapped_column(sa.String(512))
    worker: Mapped[str | None] = mapped_column(sa.String(128))

    __table_args__ = (sa.Index("ix_delivery_attempts_started_at", "started_at"),)


class AttemptEvent(Base):
    """Which outbox rows an attempt carried, and which attempt of theirs it was."""

    __tablename__ = "delivery_attempt_events"

    attempt_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("delivery_attempts.id", ondelete="CASCADE"), primary_key=True
    )
    outbox_event_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("outbox_events.id", ondelete="CASCADE"), primary_key=True
    )
    attempt_number: Mapped[int] = mapped_column(sa.Integer)

    outbox_event: Mapped[OutboxEvent] = relationship(back_populates="attempts_made")
    attempt: Mapped[DeliveryAttempt] = relationship()

    __table_args__ = (sa.Index("ix_delivery_attempt_events_event", "outbox_event_id"),)


class DispatchControl(Base):
    """One row per account shared by every worker: a pause for bad credentials, a stop for a
    429, and the next free slot of the account's request budget."""

    __tablename__ = "dispatch_control"

    account: Mapped[str] = mapped_column(key_text(64), primary_key=True)
    paused_reason: Mapped[str | None] = mapped_column(sa.Text)
    paused_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    next_auth_check_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    next_request_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Turns of the workers' timers: the worker whose UPDATE moves one forward does that job.
    next_sweep_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    next_retention_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=utc_now())


# Table handles for SQL Core: the claim, the operator's commands and the views all use these.
events = cast(sa.Table, OutboxEvent.__table__)
attempts_table = cast(sa.Table, DeliveryAttempt.__table__)
attempt_events = cast(sa.Table, AttemptEvent.__table__)
control = cast(sa.Table, DispatchControl.__table__)


def due(now: dt.datetime) -> sa.ColumnElement[bool]:
    """Rows a worker may claim now: pending and due, or in flight with an expired lease."""
    return sa.and_(events.c.status.in_(DUE_STATUSES), events.c.next_attempt_at <= now)
