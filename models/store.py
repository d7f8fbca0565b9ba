"""Every SQL statement the worker runs on the outbox tables.

All functions take a Connection inside a transaction the caller owns, and `now` from the
caller, so that one clock decides what is due. Claimed rows carry a claim token: a worker
whose lease expired cannot mark a row that another worker has claimed since.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

import sqlalchemy as sa

from models.tables import (
    DUE_STATUSES,
    AttemptEvent,
    DeliveryAttempt,
    DispatchControl,
    OutboxEvent,
    Status,
)

events = cast(sa.Table, OutboxEvent.__table__)
attempts_table = cast(sa.Table, DeliveryAttempt.__table__)
attempt_events = cast(sa.Table, AttemptEvent.__table__)
control = cast(sa.Table, DispatchControl.__table__)
CONTROL_ID = 1


@dataclass(frozen=True)
class ClaimedRow:
    id: int
    orderid: str
    payload: str
    attempts: int  # including the one this claim starts
    retry_window_start: dt.datetime  # created, or re-queued by an operator


@dataclass(frozen=True)
class Retry:
    id: int
    at: dt.datetime


@dataclass(frozen=True)
class AttemptRecord:
    started_at: dt.datetime
    duration_ms: int
    event_count: int
    http_status: int | None
    outcome: str
    error_class: str | None
    response_excerpt: str | None
    worker: str | None


def _due(now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.and_(events.c.status.in_(DUE_STATUSES), events.c.next_attempt_at <= now)


def claim_due(
    conn: sa.Connection, *, limit: int, token: str, now: dt.datetime, lease_until: dt.datetime
) -> list[ClaimedRow]:
    """Claim up to `limit` due rows: in flight with an expired lease first, then pending.

    One status per statement, so each reads the (status, next_attempt_at) index in order and
    stops at `limit`: with `status IN (...)` every dialect sorts the whole due set, and InnoDB
    would lock all of it, leaving concurrent claimers nothing.
    """
    claimed: list[ClaimedRow] = []
    for status in (Status.IN_FLIGHT.value, Status.PENDING.value):
        claimed += _claim(conn, status, limit - len(claimed), token, now, lease_until)
        if len(claimed) >= limit:
            break
    return claimed


def _claim(
    conn: sa.Connection, status: str, limit: int, token: str, now: dt.datetime,
    lease_until: dt.datetime,
) -> list[ClaimedRow]:
    params = {"from_status": status, "n": limit, "token": token, "now": now,
              "until": lease_until}
    if conn.dialect.name in ("mysql", "mariadb"):
        # MariaDB has no UPDATE ... RETURNING: lock the rows, then update them by id.
        pick, update = _claim_statements_mariadb()
        locked = conn.execute(pick, params).all()
        if not locked:
            return []
        conn.execute(update, {**params, "ids": [r.id for r in locked]})
        return [ClaimedRow(r.id, r.orderid, r.payload, r.attempts + 1, r.since) for r in locked]
    rows = conn.execute(_claim_statement(), params).all()
    return [ClaimedRow(r.id, r.orderid, r.payload, r.attempts, r.since) for r in rows]


# The hot path's statements are built once, with bind parameters: building and cache-keying
# a statement per call cost more CPU than executing it (benchmarks/, py-spy).
_CLAIMED_COLUMNS = (events.c.id, events.c.orderid, events.c.payload, events.c.attempts,
                    sa.func.coalesce(events.c.requeued_at, events.c.created_at).label("since"))
_CLAIM_VALUES = {
    "status": Status.IN_FLIGHT.value,
    "claim_token": sa.bindparam("token"),
    "lease_expires_at": sa.bindparam("until"),
    "next_attempt_at": sa.bindparam("until"),
    "attempts": events.c.attempts + 1,
    "updated_at": sa.bindparam("now"),
}


def _pick(*columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
    return (
        sa.select(*columns)
        .where(events.c.status == sa.bindparam("from_status"),
               events.c.next_attempt_at <= sa.bindparam("now"))
        .order_by(events.c.next_attempt_at)
        .limit(sa.bindparam("n"))
        .with_for_update(skip_locked=True)
    )


@cache
def _claim_statement() -> sa.Executable:
    return (events.update()
            .where(events.c.id.in_(_pick(events.c.id).scalar_subquery()))
            .values(_CLAIM_VALUES).returning(*_CLAIMED_COLUMNS))


@cache
def _claim_statements_mariadb() -> tuple[sa.Executable, sa.Executable]:
    update = (events.update().where(events.c.id.in_(sa.bindparam("ids", expanding=True)))
              .values(_CLAIM_VALUES))
    return _pick(*_CLAIMED_COLUMNS), update


def _held(ids: Iterable[int], token: str) -> sa.ColumnElement[bool]:
    return sa.and_(events.c.id.in_(list(ids)), events.c.claim_token == token,
                   events.c.status == Status.IN_FLIGHT.value)


_RELEASED = {"claim_token": None, "lease_expires_at": None}


def _claimed(token: str) -> sa.ColumnElement[bool]:
    return sa.and_(events.c.claim_token == token, events.c.status == Status.IN_FLIGHT.value)


def renew_claim(
    conn: sa.Connection, *, token: str, now: dt.datetime, lease_until: dt.datetime
) -> int:
    """Extend the lease of every row the claim still holds; returns how many that is."""
    result = conn.execute(events.update().where(_claimed(token)).values(
        lease_expires_at=lease_until, next_attempt_at=lease_until, updated_at=now))
    return result.rowcount


def release_claim(
    conn: sa.Connection, *, token: str, now: dt.datetime, note: str
) -> int:
    """Hand back every row the claim still holds, due now, without counting an attempt."""
    result = conn.execute(events.update().where(_claimed(token)).values(
        status=Status.PENDING.value, next_attempt_at=now, attempts=events.c.attempts - 1,
        updated_at=now, last_error=note, **_RELEASED))
    return result.rowcount


def mark_delivered(
    conn: sa.Connection, ids: Sequence[int], *, token: str, now: dt.datetime,
    http_status: int | None,
) -> int:
    result = conn.execute(_MARK_DELIVERED, {"ids": list(ids), "token": token, "now": now,
                                            "http_status": http_status})
    return result.rowcount


_MARK_DELIVERED = (
    events.update()
    .where(events.c.id.in_(sa.bindparam("ids", expanding=True)),
           events.c.claim_token == sa.bindparam("token"),
           events.c.status == Status.IN_FLIGHT.value)
    .values(status=Status.DELIVERED.value, delivered_at=sa.bindparam("now"),
            updated_at=sa.bindparam("now"), last_error=None,
            last_http_status=sa.bindparam("http_status"), **_RELEASED)
)


def schedule_retries(
    conn: sa.Connection, retries: Sequence[Retry], *, token: str, now: dt.datetime,
    error: str, http_status: int | None,
) -> None:
    if not retries:
        return
    stmt = (
        events.update()
        .where(events.c.id == sa.bindparam("row_id"), events.c.claim_token == token,
               events.c.status == Status.IN_FLIGHT.value)
        .values(status=Status.PENDING.value, next_attempt_at=sa.bindparam("at"),
                last_error=error, last_http_status=http_status, updated_at=now, **_RELEASED)
    )
    conn.execute(stmt, [{"row_id": r.id, "at": r.at} for r in retries])


def mark_failed(
    conn: sa.Connection, ids: Sequence[int], *, token: str, now: dt.datetime, error: str,
    http_status: int | None,
) -> None:
    """Park rows as failed: they stay, with the reason, until an operator acts."""
    if ids:
        conn.execute(events.update().where(_held(ids, token)).values(
            status=Status.FAILED.value, last_error=error, last_http_status=http_status,
            updated_at=now, **_RELEASED))


def park_each(
    conn: sa.Connection, reasons: Sequence[tuple[int, str]], *, token: str, now: dt.datetime
) -> None:
    """Park rows as failed, each with its own reason, in one executemany."""
    if reasons:
        conn.execute(
            events.update()
            .where(events.c.id == sa.bindparam("row_id"), events.c.claim_token == token,
                   events.c.status == Status.IN_FLIGHT.value)
            .values(status=Status.FAILED.value, last_error=sa.bindparam("reason"),
                    last_http_status=None, updated_at=now, **_RELEASED),
            [{"row_id": row_id, "reason": reason} for row_id, reason in reasons])


def release(
    conn: sa.Connection, ids: Sequence[int], *, token: str, now: dt.datetime,
    not_before: dt.datetime, note: str | None = None,
) -> None:
    """Hand rows back without counting an attempt (auth pause, rate limit, shutdown)."""
    if ids:
        values: dict[str, object] = {
            "status": Status.PENDING.value, "next_attempt_at": not_before,
            "attempts": events.c.attempts - 1, "updated_at": now, **_RELEASED,
        }
        if note is not None:
            values["last_error"] = note
        conn.execute(events.update().where(_held(ids, token)).values(values))


def record_attempt(
    conn: sa.Connection, record: AttemptRecord, rows: Sequence[ClaimedRow]
) -> int:
    attempt_id = conn.execute(_INSERT_ATTEMPT, {
        "started_at": record.started_at, "duration_ms": record.duration_ms,
        "event_count": record.event_count, "http_status": record.http_status,
        "outcome": record.outcome, "error_class": record.error_class,
        "response_excerpt": record.response_excerpt, "worker": record.worker,
    }).scalar_one()
    conn.execute(_INSERT_ATTEMPT_EVENT, [
        {"attempt_id": attempt_id, "outbox_event_id": r.id, "attempt_number": r.attempts}
        for r in rows
    ])
    return int(attempt_id)


_INSERT_ATTEMPT = attempts_table.insert().returning(attempts_table.c.id)
_INSERT_ATTEMPT_EVENT = attempt_events.insert()


def any_due(conn: sa.Connection, now: dt.datetime) -> bool:
    return conn.execute(sa.select(events.c.id).where(_due(now)).limit(1)).first() is not None


# --- the shared dispatch control row -------------------------------------------------------

@dataclass(frozen=True)
class Control:
    paused_reason: str | None
    paused_since: dt.datetime | None
    next_auth_check_at: dt.datetime | None
    not_before: dt.datetime | None

    @property
    def paused(self) -> bool:
        return self.paused_reason is not None


_READ_CONTROL = sa.select(control).where(control.c.id == CONTROL_ID)


def read_control(conn: sa.Connection) -> Control:
    row = conn.execute(_READ_CONTROL).first()
    if row is None:
        return Control(None, None, None, None)
    return Control(row.paused_reason, row.paused_since, row.next_auth_check_at, row.not_before)


def _write_control(conn: sa.Connection, now: dt.datetime, **values: object) -> None:
    updated = conn.execute(control.update().where(control.c.id == CONTROL_ID)
                           .values(updated_at=now, **values)).rowcount
    if not updated:
        conn.execute(control.insert().values(id=CONTROL_ID, updated_at=now, **values))


def pause(conn: sa.Connection, *, reason: str, now: dt.datetime, check_at: dt.datetime) -> None:
    current = read_control(conn)
    _write_control(conn, now, paused_reason=reason, next_auth_check_at=check_at,
                   paused_since=current.paused_since if current.paused else now)


def schedule_auth_check(conn: sa.Connection, *, now: dt.datetime, check_at: dt.datetime) -> None:
    _write_control(conn, now, next_auth_check_at=check_at)


def resume(conn: sa.Connection, *, now: dt.datetime) -> None:
    """Lift the pause; rows that waited through it get a full retry window again, so the
    pause itself can never push them past OUTBOX_MAX_AGE_SECONDS into failed."""
    _write_control(conn, now, paused_reason=None, paused_since=None, next_auth_check_at=None)
    conn.execute(events.update().where(events.c.status == Status.PENDING.value)
                 .values(requeued_at=now))


def hold_until(conn: sa.Connection, *, now: dt.datetime, not_before: dt.datetime) -> None:
    """No request to Spotler before `not_before` (a 429's Retry-After), from any worker."""
    _write_control(conn, now, not_before=not_before)
