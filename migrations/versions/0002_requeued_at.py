"""Restart the retry window when an operator re-queues a row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spotler_outbox.models.tables import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_events") as batch:
        batch.add_column(sa.Column("requeued_at", UTCDateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox_events") as batch:
        batch.drop_column("requeued_at")
