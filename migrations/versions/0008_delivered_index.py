"""Index only delivered rows by delivery time, where the dialect has partial indexes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28

Every row enters ix_outbox_events_delivered_at with a NULL when it is enqueued and again with
each claim (a claim rewrites the row): entries nobody reads, since every query on delivery
time asks for delivered rows. Partial on PostgreSQL and SQLite; MariaDB keeps the full index.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

DELIVERED = "delivered_at IS NOT NULL"


def upgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        return
    op.drop_index("ix_outbox_events_delivered_at", table_name="outbox_events")
    op.create_index("ix_outbox_events_delivered_at", "outbox_events", ["delivered_at"],
                    postgresql_where=sa.text(DELIVERED), sqlite_where=sa.text(DELIVERED))


def downgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        return
    op.drop_index("ix_outbox_events_delivered_at", table_name="outbox_events")
    op.create_index("ix_outbox_events_delivered_at", "outbox_events", ["delivered_at"])
