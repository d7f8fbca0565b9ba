"""Several Spotler accounts in one outbox: an account per row, a control row per account.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

Existing rows get the account '' : the default account, resolved to SPOTLER_ACCOUNT when a
row is sent (models.accounts). Nothing is read from the environment here, so the upgrade gives
the same result wherever it runs, and a plain-SQL insert that leaves the column out still
means what it meant before. dispatch_control is rebuilt keyed by account; the single row's
pause and hold become the default account's.

The views of 0003 read outbox_events: they are dropped first and created again, grouped by
account (see 0003's note).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from spotler_outbox.models.tables import UTCDateTime, key_text, utc_now

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DUE = "status IN ('pending', 'in_flight')"
UNPURGED = "delivered_at IS NOT NULL AND purged_at IS NULL"  # 0005's partial index
_STATE = ("paused_reason", "paused_since", "next_auth_check_at", "not_before", "next_sweep_at",
          "next_retention_at", "updated_at")

# One row per (account, status), also for a status without rows: every account with rows,
# and every account with a control row ('' always has one).
_STATUS_ROW = (
    "SELECT a.account AS account, '{status}' AS status, COUNT(o.id) AS row_count, "
    "MIN(o.created_at) AS oldest_created_at, MIN(o.next_attempt_at) AS oldest_next_attempt_at, "
    "MAX(o.updated_at) AS newest_updated_at "
    "FROM (SELECT account FROM dispatch_control UNION SELECT account FROM outbox_events) a "
    "LEFT JOIN outbox_events o ON o.account = a.account AND o.status = '{status}' "
    "GROUP BY a.account"
)
STATUS_SUMMARY = "\nUNION ALL\n".join(
    _STATUS_ROW.format(status=status)
    for status in ("pending", "in_flight", "delivered", "failed")
)
FAILURES = """
SELECT o.id, o.account, o.event, o.orderid, o.attempts, o.last_http_status, o.last_error,
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

# 0003's views as it created them, for the downgrade (frozen, like 0003 itself).
_STATUS_ROW_0003 = (
    "SELECT '{status}' AS status, COUNT(*) AS row_count, MIN(created_at) AS oldest_created_at, "
    "MIN(next_attempt_at) AS oldest_next_attempt_at, MAX(updated_at) AS newest_updated_at "
    "FROM outbox_events WHERE status = '{status}'"
)
VIEWS_0003 = {
    "outbox_status_summary": "\nUNION ALL\n".join(
        _STATUS_ROW_0003.format(status=status)
        for status in ("pending", "in_flight", "delivered", "failed")),
    "outbox_failures": FAILURES.replace("o.id, o.account, o.event", "o.id, o.event"),
}


def _drop_views() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")


def _create_views(views: dict[str, str]) -> None:
    for name, select in views.items():
        op.execute(f"CREATE VIEW {name} AS {select}")


def _control_table(key: sa.Column[Any]) -> list[sa.Column[Any]]:
    budget: list[sa.Column[Any]] = [sa.Column("next_request_at", UTCDateTime, nullable=True)]
    return [
        key,
        sa.Column("paused_reason", sa.Text, nullable=True),
        sa.Column("paused_since", UTCDateTime, nullable=True),
        sa.Column("next_auth_check_at", UTCDateTime, nullable=True),
        sa.Column("not_before", UTCDateTime, nullable=True),
        *(budget if key.name == "account" else []),
        # 0005's turns of the workers' timers, kept on the default account's row.
        sa.Column("next_sweep_at", UTCDateTime, nullable=True),
        sa.Column("next_retention_at", UTCDateTime, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False, server_default=utc_now()),
    ]


def _rebuild_control(key: sa.Column[Any], key_value: object, old_key: str,
                     old_value: object) -> None:
    conn = op.get_bind()
    columns = ", ".join(_STATE)
    # Typed, so SQLite's text and MariaDB's naive times come back as aware UTC datetimes.
    read = sa.text(f"SELECT {columns} FROM dispatch_control WHERE {old_key} = :k").columns(
        **{name: UTCDateTime() for name in _STATE if name != "paused_reason"})
    state = conn.execute(read, {"k": old_value}).mappings().first()
    op.drop_table("dispatch_control")
    table = op.create_table("dispatch_control", *_control_table(key))
    row = {key.name: key_value}
    if state is not None:
        row.update({name: state[name] for name in _STATE if state[name] is not None})
    op.bulk_insert(table, [row])


def upgrade() -> None:
    _drop_views()
    op.drop_index("ix_outbox_events_due", table_name="outbox_events")
    op.drop_index("ix_outbox_events_unpurged", table_name="outbox_events")
    with op.batch_alter_table("outbox_events") as batch:
        batch.add_column(sa.Column("account", key_text(64), nullable=False, server_default=""))
        batch.drop_constraint("uq_outbox_events_event_orderid", type_="unique")
        batch.create_unique_constraint("uq_outbox_events_account_event_orderid",
                                       ["account", "event", "orderid"])
    op.create_index(
        "ix_outbox_events_due", "outbox_events", ["status", "account", "next_attempt_at"],
        postgresql_where=sa.text(DUE), sqlite_where=sa.text(DUE),
    )
    op.create_index("ix_outbox_events_unpurged", "outbox_events", ["delivered_at", "purged_at"],
                    postgresql_where=sa.text(UNPURGED), sqlite_where=sa.text(UNPURGED))
    _rebuild_control(sa.Column("account", key_text(64), primary_key=True), "", "id", 1)
    _create_views(VIEWS)


def downgrade() -> None:
    conn = op.get_bind()
    others = conn.execute(sa.text(
        "SELECT COUNT(*) FROM outbox_events WHERE account <> ''")).scalar()
    if others:
        raise RuntimeError(f"cannot downgrade below 0006: {others} rows belong to accounts "
                           "other than the default one, and their orderids could collide")
    _drop_views()
    op.drop_index("ix_outbox_events_due", table_name="outbox_events")
    op.drop_index("ix_outbox_events_unpurged", table_name="outbox_events")
    with op.batch_alter_table("outbox_events") as batch:
        batch.drop_constraint("uq_outbox_events_account_event_orderid", type_="unique")
        batch.create_unique_constraint("uq_outbox_events_event_orderid", ["event", "orderid"])
        batch.drop_column("account")
    op.create_index(
        "ix_outbox_events_due", "outbox_events", ["status", "next_attempt_at"],
        postgresql_where=sa.text(DUE), sqlite_where=sa.text(DUE),
    )
    op.create_index("ix_outbox_events_unpurged", "outbox_events", ["delivered_at", "purged_at"],
                    postgresql_where=sa.text(UNPURGED), sqlite_where=sa.text(UNPURGED))
    _rebuild_control(sa.Column("id", sa.Integer, primary_key=True, autoincrement=False), 1,
                     "account", "")
    _create_views(VIEWS_0003)
