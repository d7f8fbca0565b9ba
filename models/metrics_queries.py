"""What the Prometheus exporter reads from the outbox on each scrape.

The backlog, pause and delivery rate come from models.operations.status_summary, so the metrics
and `spotler-outbox status` can never disagree; this module adds the delivery attempts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa

from spotler_outbox.models.operations import (
    RATE_WINDOW,
    AccountSummary,
    StatusSummary,
    accounts_summary,
    status_summary,
)
from spotler_outbox.models.tables import attempts_table


@dataclass(frozen=True)
class MetricsSnapshot:
    summary: StatusSummary
    attempts_by_outcome: dict[str, int]
    # Sorted ascending, so quantiles are read off by rank.
    recent_durations_ms: list[int]
    accounts: list[AccountSummary] = field(default_factory=list)


def attempts_by_outcome(conn: sa.Connection) -> dict[str, int]:
    rows = conn.execute(
        sa.select(attempts_table.c.outcome, sa.func.count()).group_by(attempts_table.c.outcome)
    )
    return {outcome: int(count) for outcome, count in rows}


def recent_durations_ms(conn: sa.Connection, since: dt.datetime) -> list[int]:
    """Every request's duration since `since`: a few thousand integers in a busy window."""
    return [int(ms) for ms in conn.execute(
        sa.select(attempts_table.c.duration_ms)
        .where(attempts_table.c.started_at >= since)
        .order_by(attempts_table.c.duration_ms)
    ).scalars()]


def read_snapshot(conn: sa.Connection, now: dt.datetime) -> MetricsSnapshot:
    return MetricsSnapshot(
        summary=status_summary(conn, now),
        attempts_by_outcome=attempts_by_outcome(conn),
        recent_durations_ms=recent_durations_ms(conn, now - RATE_WINDOW),
        accounts=accounts_summary(conn),
    )
