"""Wake the workers the moment a row commits, however it was inserted (PostgreSQL only).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

An order system that inserts with plain SQL (PHP, psql) sends no broker message, so its row
used to wait for the sweeper. A statement-level trigger calls pg_notify; PostgreSQL delivers
the notification only when the inserting transaction commits, and folds identical ones within
a transaction into one. The workers LISTEN on the channel (spotler_outbox.worker.listen).
Other databases have no such channel: there the sweep interval still bounds the wait.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Frozen here, not imported: a later change to the listener must not rewrite this revision.
CHANNEL = "spotler_outbox"
FUNCTION = "spotler_outbox_notify"
TRIGGER = "outbox_events_notify"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # No payload: the notification only says "there is work"; the row is the truth.
    op.execute(f"""
        CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$""")
    # FOR EACH STATEMENT: a 100-row insert costs one call, not 100.
    op.execute(f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON outbox_events "
               f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON outbox_events")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
