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
from spotler_outbox.models.control import NO_CONTROL, Control, read_control, read_controls
from spotler_outbox.models.errors import NotFound, OutboxError, UsageError
from spotler_outbox.models.tables import Status, attempt_events, attempts_table, due, events

PURCHASE = "Purchase"
RATE_WINDOW = dt.timedelta(minutes=5)


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
class AccountSummary:
    account: str  # as the rows store it: '' is the default account
    counts: dict[str, int]
    control: Control


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
    account: str = ""


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
    events.c.account,
)


def _event_row(row: Any) -> EventRow:
    return EventRow(**row._asdict())


def _of_account(account: str | None) -> list[sa.ColumnElement[bool]]:
    return [] if account is None else [events.c.account == account]


def combined_control(controls: Sequence[Control]) -> Control:
    """One account's pause or hold, for the totals: the earliest pause, the latest hold."""
    paused = [c for c in controls if c.paused]
    holds = [c.not_before for c in controls if c.not_before is not None]
    first = min(paused, key=lambda c: c.paused_since or dt.datetime.max.replace(tzinfo=dt.UTC),
                default=None)
    return Control(first.paused_reason if first else None,
                   first.paused_since if first else None,
                   first.next_auth_check_at if first else None,
                   max(holds) if holds else None)


def status_summary(conn: sa.Connection, now: dt.datetime,
                   account: str | None = None) -> StatusSummary:
    """Every account together, or one; paused or held: any account, or that one."""
    where = _of_account(account)
    counts = {status.value: 0 for status in Status}
    for status, count in conn.execute(
        sa.select(events.c.status, sa.func.count()).where(*where).group_by(events.c.status)
    ):
        counts[status] = int(count)
    oldest = conn.execute(
        sa.select(events.c.orderid, events.c.created_at).where(due(now), *where)
        .order_by(events.c.created_at, events.c.id).limit(1)
    ).first()
    last_delivered = conn.execute(sa.select(sa.func.max(events.c.delivered_at))
                                  .where(*where)).scalar()
    recent = conn.execute(
        sa.select(sa.func.count()).select_from(events).where(
            events.c.status == Status.DELIVERED.value,
            events.c.delivered_at >= now - RATE_WINDOW, *where,
        )
    ).scalar_one()
    return StatusSummary(
        counts=counts,
        oldest_due_orderid=oldest.orderid if oldest else None,
        oldest_due_created_at=oldest.created_at if oldest else None,
        # max() loses the column type on some dialects: read it back through UTCDateTime.
        last_delivered_at=as_utc(last_delivered),
        delivered_last_window=int(recent),
        control=read_control(conn, account) if account is not None
        else combined_control(list(read_controls(conn).values())),
    )


def accounts_summary(conn: sa.Connection) -> list[AccountSummary]:
    """Rows per status and the pause and hold of each account with rows or a control row."""
    counts: dict[str, dict[str, int]] = {}
    for account, status, count in conn.execute(
        sa.select(events.c.account, events.c.status, sa.func.count())
        .group_by(events.c.account, events.c.status)
    ):
        counts.setdefault(account, {s.value: 0 for s in Status})[status] = int(count)
    controls = read_controls(conn)
    return [AccountSummary(account, counts.get(account, {s.value: 0 for s in Status}),
                           controls.get(account, NO_CONTROL))
            for account in sorted(set(counts) | set(controls))]


def _filters(
    status: str | None, created_before: dt.datetime | None, orderid: str | None,
    account: str | None = None,
) -> list[sa.ColumnElement[bool]]:
    where = _of_account(account)
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
    orderid: str | None = None, limit: int = 50, account: str | None = None,
) -> tuple[list[EventRow], int]:
    """The first `limit` matching rows, oldest first, and how many match in all.

    `orderid` matches exactly, or as a pattern when it holds `*`; `account` names one account.
    """
    where = _filters(status, created_before, orderid, account)
    rows = conn.execute(
        sa.select(*_ROW_COLUMNS).where(*where).order_by(events.c.id).limit(limit)
    ).all()
    total = conn.execute(sa.select(sa.func.count()).select_from(events).where(*where))
    return [_event_row(r) for r in rows], int(total.scalar_one())


def get_event(conn: sa.Connection, orderid: str, account: str | None = None) -> EventRow:
    """The order `orderid` of `account`, or of whichever account holds it, if only one does."""
    rows = conn.execute(
        sa.select(*_ROW_COLUMNS).where(events.c.event == PURCHASE, events.c.orderid == orderid,
                                       *_of_account(account)).limit(2)
    ).all()
    if not rows:
        where = "" if account is None else f" of account {account!r}"
        raise NotFound(f"no order {orderid!r}{where} in the outbox")
    if len(rows) > 1:
        accounts = ", ".join(repr(r.account) for r in rows)
        raise UsageError(f"order {orderid!r} is in more than one account ({accounts}, ...): "
                         "name one with --account")
    return _event_row(rows[0])


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


def count_status(conn: sa.Connection, status: Status, account: str | None = None) -> int:
    return int(conn.execute(
        sa.select(sa.func.count()).select_from(events).where(events.c.status == status.value,
                                                             *_of_account(account))
    ).scalar_one())


def _requeue_values(now: dt.datetime) -> dict[str, Any]:
    # requeued_at restarts the retry window: an old order re-queued by hand gets a full one.
    return {"status": Status.PENDING.value, "next_attempt_at": now, "attempts": 0,
            "updated_at": now, "requeued_at": now, "claim_token": None,
            "lease_expires_at": None}


def _change_one(
    conn: sa.Connection, orderid: str, expected: Status, values: dict[str, Any], hint: str,
    account: str | None,
) -> EventRow:
    row = get_event(conn, orderid, account)
    account = row.account
    changed = conn.execute(
        events.update().where(events.c.id == row.id, events.c.status == expected.value,
                              events.c.purged_at.is_(None))
        .values(values)
    ).rowcount
    if not changed:
        if _purged(conn, row.id):
            raise OutboxError(f"order {orderid!r} was purged (retention or erasure): its "
                              "payload is gone, so it cannot be sent again")
        current = get_event(conn, orderid, account).status
        raise OutboxError(f"order {orderid!r} is {current}, not {expected.value}; {hint}")
    return get_event(conn, orderid, account)


def _purged(conn: sa.Connection, row_id: int) -> bool:
    return conn.execute(sa.select(events.c.purged_at).where(events.c.id == row_id)
                        ).scalar() is not None


def retry_failed(conn: sa.Connection, orderid: str, *, now: dt.datetime,
                 account: str | None = None) -> EventRow:
    """A failed row becomes pending, due now, with a fresh attempt budget."""
    return _change_one(conn, orderid, Status.FAILED, _requeue_values(now),
                       "only failed orders can be retried (a delivered one can be resent)",
                       account)


def retry_all_failed(conn: sa.Connection, *, now: dt.datetime,
                     account: str | None = None) -> int:
    return int(conn.execute(
        events.update().where(events.c.status == Status.FAILED.value,
                              events.c.purged_at.is_(None), *_of_account(account))
        .values(_requeue_values(now))
    ).rowcount)


def resend_delivered(
    conn: sa.Connection, orderid: str, *, now: dt.datetime, note: str,
    account: str | None = None,
) -> EventRow:
    """Send a delivered row again, on purpose; counted in `resends`, explained in last_error."""
    values = {**_requeue_values(now), "resends": events.c.resends + 1, "last_error": note}
    return _change_one(conn, orderid, Status.DELIVERED, values,
                       "only delivered orders can be resent (a failed one can be retried)",
                       account)


def purge(engine: Engine, *, delivered_before: dt.datetime,
          batch: int = retention.PURGE_BATCH, account: str | None = None) -> tuple[int, int]:
    """What retention does on its schedule, for one cutoff: compact delivered rows older than
    it (their orderids keep deduplicating), then delete the attempts left without rows;
    `account`: that account's rows only.

    Unlike the rest of this module it owns its transactions: one short one per batch, so the
    claim never waits long behind a purge of millions. Returns (rows, attempts).
    """
    count = retention.purge_delivered_before(engine, before=delivered_before, clock=utc_now,
                                             batch=batch, account=account)
    return count.rows, count.attempts
