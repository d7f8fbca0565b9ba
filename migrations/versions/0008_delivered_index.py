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
NAME = "ix_outbox_events_delivered_at"
BUILDING = "ix_outbox_events_delivered_at_building"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect in ("mysql", "mariadb"):
        return
    if dialect == "postgresql":
        # Built beside the old one, CONCURRENTLY: a plain build would hold off the shop's
        # order commits (their enqueue writes this table) for as long as it reads the table.
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {BUILDING}")  # a failed earlier try
            op.create_index(BUILDING, "outbox_events", ["delivered_at"],
                            postgresql_where=sa.text(DELIVERED), postgresql_concurrently=True)
            op.drop_index(NAME, table_name="outbox_events", postgresql_concurrently=True)
            op.execute(f"ALTER INDEX {BUILDING} RENAME TO {NAME}")
        return
    op.drop_index(NAME, table_name="outbox_events")
    op.create_index(NAME, "outbox_events", ["delivered_at"], sqlite_where=sa.text(DELIVERED))


def downgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        return
    op.drop_index(NAME, table_name="outbox_events")
    op.create_index(NAME, "outbox_events", ["delivered_at"])
