"""The operator's SQL on the outbox tables: what the CLI shows, and the few rows it may change.

Like models.claims, every function takes a Connection inside a transaction the caller owns, and
`now` from the caller. The changes guard on the status they expect in their WHERE clause, so an
operator racing a worker changes nothing the worker has moved on since.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox.models import retention
from spotler_outbox.models.clock import as_utc, utc_now
from spotler_outbox.models.control import Control, read_control
from spotler_outbox.models.errors import NotFound, OutboxError
from spotler_outbox.models.tables import Status, attempt_events, attempts_table, due, events

PURCHASE = "Purchase"
RATE_WINDOW = dt.timedelta(minutes=5)
PURGE_BATCH = retention.PURGE_BATCH


@dataclass(frozen=True)
class StatusSummary:
    counts: dict[str, int]
    oldest_due_orderid: str | None
    oldest_due_created_at: dt.datetime | None
    last_delivered_at: dt.datetime | None
    delivered_last_window: int
    control: Control

    def deliveries_per_minute(self) -> float:
        return self.delivered_last_window / (RATE_WINDOW.total_seconds() / 60)


@dataclass(frozen=True)
class EventRow:
    id: int
    orderid: str
    payload: str
    status: str
    attempts: int
    resends: int
    next_attempt_at: dt.datetime
    lease_expires_at: dt.datetime | None
    last_error: str | None
    last_http_status: int | None
    created_at: dt.datetime
    updated_at: dt.datetime
    delivered_at: dt.datetime | None
    purged_at: dt.datetime | None = None  # retention or an erasure emptied the payload


@dataclass(frozen=True)
class AttemptRow:
    attempt_id: int
    started_at: dt.datetime
    attempt_number: int
    event_count: int
    http_status: int | None
    outcome: str
    error_class: str | None
    duration_ms: int
    response_excerpt: str | None
    worker: str | None


_ROW_COLUMNS = (
    events.c.id, events.c.orderid, events.c.payload, events.c.status, events.c.attempts,
    events.c.resends, events.c.next_attempt_at, events.c.lease_expires_at, events.c.last_error,
    events.c.last_http_status, events.c.created_at, events.c.updated_at, events.c.delivered_at,
    events.c.purged_at,
)


def _event_row(row: Any) -> EventRow:
    return EventRow(**row._asdict())


def status_summary(conn: sa.Connection, now: dt.datetime) -> StatusSummary:
    counts = {status.value: 0 for status in Status}
    for status, count in conn.execute(
        sa.select(events.c.status, sa.func.count()).group_by(events.c.status)
    ):
        counts[status] = int(count)
    oldest = conn.execute(
        sa.select(events.c.orderid, events.c.created_at).where(due(now))
        .order_by(events.c.created_at, events.c.id).limit(1)
    ).first()
    last_delivered = conn.execute(sa.select(sa.func.max(events.c.delivered_at))).scalar()
    recent = conn.execute(
        sa.select(sa.func.count()).select_from(events).where(
            events.c.status == Status.DELIVERED.value,
            events.c.delivered_at >= now - RATE_WINDOW,
        )
    ).scalar_one()
    return StatusSummary(
        counts=counts,
        oldest_due_orderid=oldest.orderid if oldest else None,
        oldest_due_created_at=oldest.created_at if oldest else None,
        # max() loses the column type on some dialects: read it back through UTCDateTime.
        last_delivered_at=as_utc(last_delivered),
        delivered_last_window=int(recent),
        control=read_control(conn),
    )


def _filters(
    status: str | None, created_before: dt.datetime | None, orderid: str | None
) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if status is not None:
        where.append(events.c.status == Status(status).value)
    if created_before is not None:
        where.append(events.c.created_at <= created_before)
    if orderid is not None:
        if "*" in orderid:
            escaped = orderid.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(events.c.orderid.like(escaped.replace("*", "%"), escape="\\"))
        else:
            where.append(events.c.orderid == orderid)
    return where


def list_events(
    conn: sa.Connection, *, status: str | None = None, created_before: dt.datetime | None = None,
    orderid: str | None = None, limit: int = 50,
) -> tuple[list[EventRow], int]:
    """The first `limit` matching rows, oldest first, and how many match in all.

    `orderid` matches exactly, or as a pattern when it holds `*`.
    """
    where = _filters(status, created_before, orderid)
    rows = conn.execute(
        sa.select(*_ROW_COLUMNS).where(*where).order_by(events.c.id).limit(limit)
    ).all()
    total = conn.execute(sa.select(sa.func.count()).select_from(events).where(*where))
    return [_event_row(r) for r in rows], int(total.scalar_one())


def get_event(conn: sa.Connection, orderid: str) -> EventRow:
    row = conn.execute(
        sa.select(*_ROW_COLUMNS).where(events.c.event == PURCHASE, events.c.orderid == orderid)
    ).first()
    if row is None:
        raise NotFound(f"no order {orderid!r} in the outbox")
    return _event_row(row)


def attempts_for(conn: sa.Connection, event_id: int) -> list[AttemptRow]:
    """Every request that carried this row, oldest first."""
    rows = conn.execute(
        sa.select(
            attempts_table.c.id.label("attempt_id"), attempts_table.c.started_at,
            attempt_events.c.attempt_number, attempts_table.c.event_count,
            attempts_table.c.http_status, attempts_table.c.outcome,
            attempts_table.c.error_class, attempts_table.c.duration_ms,
            attempts_table.c.response_excerpt, attempts_table.c.worker,
        )
        .join(attempt_events, attempt_events.c.attempt_id == attempts_table.c.id)
        .where(attempt_events.c.outbox_event_id == event_id)
        .order_by(attempts_table.c.started_at, attempts_table.c.id)
    ).all()
    return [AttemptRow(**r._asdict()) for r in rows]


def count_status(conn: sa.Connection, status: Status) -> int:
    return int(conn.execute(
        sa.select(sa.func.count()).select_from(events).where(events.c.status == status.value)
    ).scalar_one())


def _requeue_values(now: dt.datetime) -> dict[str, Any]:
    # requeued_at restarts the retry window: an old order re-queued by hand gets a full one.
    return {"status": Status.PENDING.value, "next_attempt_at": now, "attempts": 0,
            "updated_at": now, "requeued_at": now, "claim_token": None,
            "lease_expires_at": None}


def _change_one(
    conn: sa.Connection, orderid: str, expected: Status, values: dict[str, Any], hint: str
) -> EventRow:
    row = get_event(conn, orderid)
    changed = conn.execute(
        events.update().where(events.c.id == row.id, events.c.status == expected.value,
                              events.c.purged_at.is_(None))
        .values(values)
    ).rowcount
    if not changed:
        if _purged(conn, row.id):
            raise OutboxError(f"order {orderid!r} was purged (retention or erasure): its "
                              "payload is gone, so it cannot be sent again")
        current = get_event(conn, orderid).status
        raise OutboxError(f"order {orderid!r} is {current}, not {expected.value}; {hint}")
    return get_event(conn, orderid)


def _purged(conn: sa.Connection, row_id: int) -> bool:
    return conn.execute(sa.select(events.c.purged_at).where(events.c.id == row_id)
                        ).scalar() is not None


def retry_failed(conn: sa.Connection, orderid: str, *, now: dt.datetime) -> EventRow:
    """A failed row becomes pending, due now, with a fresh attempt budget."""
    return _change_one(conn, orderid, Status.FAILED, _requeue_values(now),
                       "only failed orders can be retried (a delivered one can be resent)")


def retry_all_failed(conn: sa.Connection, *, now: dt.datetime) -> int:
    return int(conn.execute(
        events.update().where(events.c.status == Status.FAILED.value,
                              events.c.purged_at.is_(None))
        .values(_requeue_values(now))
    ).rowcount)


def resend_delivered(
    conn: sa.Connection, orderid: str, *, now: dt.datetime, note: str
) -> EventRow:
    """Send a delivered row again, on purpose; counted in `resends`, explained in last_error."""
    values = {**_requeue_values(now), "resends": events.c.resends + 1, "last_error": note}
    return _change_one(conn, orderid, Status.DELIVERED, values,
                       "only delivered orders can be resent (a failed one can be retried)")


def purge_delivered(conn: sa.Connection, ids: Sequence[int], *, before: dt.datetime) -> int:
    """Compact these delivered rows (see models.retention): payload gone, orderid kept."""
    return retention.compact_delivered(conn, ids, before=before, now=utc_now())


def purge(engine: Engine, *, delivered_before: dt.datetime,
          batch: int = PURGE_BATCH) -> tuple[int, int]:
    """What retention does on its schedule, for one cutoff: compact delivered rows older than
    it (their orderids keep deduplicating), then delete the attempts left without rows.

    Unlike the rest of this module it owns its transactions: one short one per batch, so the
    claim never waits long behind a purge of millions. Returns (rows, attempts).
    """
    count = retention.purge_delivered_before(engine, before=delivered_before, clock=utc_now,
                                             batch=batch)
    return count.rows, count.attempts
