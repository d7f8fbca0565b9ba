"""Read-only views for operators: rows per status, and failed rows with their last attempt.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

The SQL is frozen here rather than built from models.tables, so that a later change to the
models cannot silently change what this revision created. One text serves PostgreSQL, MariaDB
and SQLite alike.

A later revision that alters or rebuilds outbox_events (SQLite's batch mode copies the table)
must drop these views first and create them again afterwards: PostgreSQL refuses to change a
column a view reads, and SQLite refuses to rename a table over a view that names it.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# One SELECT per status rather than GROUP BY: a status without rows still shows, with 0.
# Comparing the column to a literal also avoids MariaDB's collation clash between a column
# and a derived table of literals.
_STATUS_ROW = (
    "SELECT '{status}' AS status, COUNT(*) AS row_count, MIN(created_at) AS oldest_created_at, "
    "MIN(next_attempt_at) AS oldest_next_attempt_at, MAX(updated_at) AS newest_updated_at "
    "FROM outbox_events WHERE status = '{status}'"
)
STATUS_SUMMARY = "\nUNION ALL\n".join(
    _STATUS_ROW.format(status=status)
    for status in ("pending", "in_flight", "delivered", "failed")
)

# The last attempt is the one with the highest id: attempt_number starts again at 1 after an
# operator retry, ids never do. The max is read from ix_delivery_attempt_events_event alone.
FAILURES = """
SELECT o.id, o.event, o.orderid, o.attempts, o.last_http_status, o.last_error,
       o.created_at, o.updated_at,
       a.started_at AS last_attempt_at, a.outcome AS last_attempt_outcome,
       a.http_status AS last_attempt_http_status,
       a.response_excerpt AS last_attempt_excerpt
FROM outbox_events o
LEFT JOIN delivery_attempts a ON a.id = (
    SELECT MAX(ae.attempt_id) FROM delivery_attempt_events ae
    WHERE ae.outbox_event_id = o.id)
WHERE o.status = 'failed'
"""

VIEWS = {"outbox_status_summary": STATUS_SUMMARY, "outbox_failures": FAILURES}


def upgrade() -> None:
    for name, select in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
