"""Mark the rows enqueue_purchase validated, so the worker need not validate them again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

False by default: a row inserted with plain SQL (PHP, psql) is still parsed and validated by
the worker before it is sent, and parked with its reason when it cannot be. A plain ADD COLUMN
on every dialect: SQLite adds it in place, so the views of 0003 need not be rebuilt.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox_events", sa.Column("validated", sa.Boolean(), nullable=False,
                                             server_default=sa.false()))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite >= 3.35 has it): batch mode would copy the table, which
    # SQLite refuses while the views of 0003 name it.
    op.drop_column("outbox_events", "validated")
