"""The outbox, its delivery attempts and the shared dispatch control row.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spotler_outbox.models.tables import BigId, PayloadText, UTCDateTime, key_text, utc_now

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DUE = "status IN ('pending', 'in_flight')"


def upgrade() -> None:
    op.create_table(
        "outbox_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event", key_text(64), nullable=False, server_default="Purchase"),
        sa.Column("orderid", key_text(128), nullable=False),
        sa.Column("payload", PayloadText, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False, server_default=utc_now()),
        sa.Column("lease_expires_at", UTCDateTime, nullable=True),
        sa.Column("claim_token", sa.String(64), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_http_status", sa.Integer, nullable=True),
        sa.Column("resends", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False, server_default=utc_now()),
        sa.Column("updated_at", UTCDateTime, nullable=False, server_default=utc_now()),
        sa.Column("delivered_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("event", "orderid", name="uq_outbox_events_event_orderid"),
        sa.CheckConstraint(
            "status IN ('pending', 'in_flight', 'delivered', 'failed')",
            name="ck_outbox_events_status",
        ),
    )
    op.create_index(
        "ix_outbox_events_due", "outbox_events", ["status", "next_attempt_at"],
        postgresql_where=sa.text(DUE), sqlite_where=sa.text(DUE),
    )
    op.create_index("ix_outbox_events_delivered_at", "outbox_events", ["delivered_at"])

    op.create_table(
        "delivery_attempts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error_class", sa.String(64), nullable=True),
        sa.Column("response_excerpt", sa.String(512), nullable=True),
        sa.Column("worker", sa.String(128), nullable=True),
    )
    op.create_index("ix_delivery_attempts_started_at", "delivery_attempts", ["started_at"])

    op.create_table(
        "delivery_attempt_events",
        sa.Column("attempt_id", BigId,
                  sa.ForeignKey("delivery_attempts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("outbox_event_id", BigId,
                  sa.ForeignKey("outbox_events.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("attempt_number", sa.Integer, nullable=False),
    )
    op.create_index("ix_delivery_attempt_events_event", "delivery_attempt_events",
                    ["outbox_event_id"])

    control = op.create_table(
        "dispatch_control",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("paused_reason", sa.Text, nullable=True),
        sa.Column("paused_since", UTCDateTime, nullable=True),
        sa.Column("next_auth_check_at", UTCDateTime, nullable=True),
        sa.Column("not_before", UTCDateTime, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False, server_default=utc_now()),
    )
    # The one row every worker updates; present from the start so no two workers race to add it.
    op.bulk_insert(control, [{"id": 1}])


def downgrade() -> None:
    # Indexes go with their tables (MariaDB refuses to drop one a foreign key needs).
    op.drop_table("dispatch_control")
    op.drop_table("delivery_attempt_events")
    op.drop_table("delivery_attempts")
    op.drop_table("outbox_events")
