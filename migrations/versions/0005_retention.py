"""Retention keeps a compact record of each delivered order; the workers' timers take turns.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

outbox_events.purged_at marks a row whose payload retention or an erasure emptied; the row
itself stays, so the unique (event, orderid) keeps deduplicating re-enqueues. The partial index
lets retention walk unpurged delivered rows by delivery time. dispatch_control gains the turns
of the sweeper and of retention, shared by every worker. On PostgreSQL, outbox_events gets
autovacuum settings that keep the due index lean: every claim leaves dead index entries.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spotler_outbox.models.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UNPURGED = "delivered_at IS NOT NULL AND purged_at IS NULL"
# Vacuum after a fixed number of changed rows, not a fraction of a table of millions of
# delivered rows (the default 20% would let the due index grow for hours).
AUTOVACUUM = {
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "5000",
    "autovacuum_analyze_scale_factor": "0",
    "autovacuum_analyze_threshold": "5000",
    "autovacuum_vacuum_cost_delay": "1",
}


def upgrade() -> None:
    op.add_column("outbox_events", sa.Column("purged_at", UTCDateTime, nullable=True))
    op.create_index("ix_outbox_events_unpurged", "outbox_events", ["delivered_at", "purged_at"],
                    postgresql_where=sa.text(UNPURGED), sqlite_where=sa.text(UNPURGED))
    op.add_column("dispatch_control", sa.Column("next_sweep_at", UTCDateTime, nullable=True))
    op.add_column("dispatch_control",
                  sa.Column("next_retention_at", UTCDateTime, nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        settings = ", ".join(f"{k} = {v}" for k, v in AUTOVACUUM.items())
        op.execute(f"ALTER TABLE outbox_events SET ({settings})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE outbox_events RESET ({', '.join(AUTOVACUUM)})")
    op.drop_column("dispatch_control", "next_retention_at")
    op.drop_column("dispatch_control", "next_sweep_at")
    op.drop_index("ix_outbox_events_unpurged", table_name="outbox_events")
    op.drop_column("outbox_events", "purged_at")
