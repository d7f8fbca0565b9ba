"""Every SQL statement a worker runs on the outbox rows it claims.

All functions take a Connection inside a transaction the caller owns, and `now` from the
caller, so that one clock decides what is due. Claimed rows carry a claim token: a worker
whose lease expired cannot change a row that another worker has claimed since.

The hot path's statements are built once, with bind parameters: building and cache-keying a
statement per call cost more CPU than executing it (benchmarks/, py-spy).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from spotler_outbox.models.tables import (
    MYSQL_FAMILY,
    Status,
    attempt_events,
    attempts_table,
    control,
    due,
    events,
)


class ClaimedRow(NamedTuple):
    """A tuple: a claim builds a hundred of them per request, a dataclass cost 2 us each."""

    id: int
    orderid: str
    payload: str
    attempts: int  # including the one this claim starts
    retry_window_start: dt.datetime  # created, or re-queued by an operator
    validated: bool = False  # enqueue_purchase validated the payload: send it as stored


@dataclass(frozen=True)
class ScheduledRetry:
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


# "Rows this claim still holds": our token. A row whose lease ran out and that another worker
# claimed since carries that worker's token; a claim sets the token with in_flight, and every
# change away from in_flight clears it (settle, hand-back, erasure, an operator's retry).
# Statements that name their rows by id test the token alone: with a status test PostgreSQL
# planned each mark afresh, through the due index, whose in-flight part keeps an entry of every
# claim since the last vacuum (a bitmap scan reads dead entries too); without it, one generic
# plan by primary key. Those that name no ids keep the status test: their way to the rows.
_HELD_BY_US = events.c.claim_token == sa.bindparam("token")
_CLAIMED_BY_US = sa.and_(_HELD_BY_US, events.c.status == Status.IN_FLIGHT.value)
_ONE_ROW = events.c.id == sa.bindparam("row_id")
_SOME_ROWS = events.c.id.in_(sa.bindparam("ids", expanding=True))
# PostgreSQL takes the ids as one array: an expanding IN renders and binds a parameter per id
# on every call, which cost the worker more CPU than the statement's whole round trip.
_SOME_ROWS_PG = events.c.id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.BigInteger)))


def _per_dialect(make: Callable[[sa.ColumnElement[bool]], sa.Executable]
                 ) -> Callable[[sa.Connection], sa.Executable]:
    """A statement on "these rows by id", in the spelling of the connection's dialect."""
    built = {True: make(_SOME_ROWS_PG), False: make(_SOME_ROWS)}
    return lambda conn: built[conn.dialect.name == "postgresql"]


_UNCLAIMED = {"claim_token": None, "lease_expires_at": None}


def claim_due(
    conn: sa.Connection, *, limit: int, token: str, now: dt.datetime, lease_until: dt.datetime,
    account: str = "",
) -> list[ClaimedRow]:
    """Claim up to `limit` due rows of one account: in flight with an expired lease first,
    then pending. A batch never mixes accounts: each request carries one account's key.
    Nothing of an account whose dispatch is paused or held (its dispatch_control row).

    One status per index read, so each reads the (status, account, next_attempt_at) index in
    order and stops at `limit`: with `status IN (...)` every dialect sorts the whole due set,
    and InnoDB would lock all of it, leaving concurrent claimers nothing.
    """
    params = {"of_account": account, "n": limit, "token": token, "now": now,
              "until": lease_until}
    if conn.dialect.name not in MYSQL_FAMILY:
        rows = conn.execute(_claim_statement(), params).all()
        return [ClaimedRow(i, orderid, payload, attempts, since, bool(validated))
                for i, orderid, payload, attempts, since, validated in rows]
    # MariaDB has no UPDATE ... RETURNING (lock the rows, then update them by id), and no
    # locking read inside a UNION: a statement per status.
    claimed: list[ClaimedRow] = []
    pick, updates = _claim_statements_mariadb()
    for status in (Status.IN_FLIGHT.value, Status.PENDING.value):
        locked = conn.execute(pick, {**params, "from_status": status,
                                     "n": limit - len(claimed)}).all()
        if locked:
            conn.execute(updates[status], {**params, "ids": [r.id for r in locked]})
            claimed += [ClaimedRow(r.id, r.orderid, r.payload, r.attempts + 1, r.since,
                                   bool(r.validated)) for r in locked]
        if len(claimed) >= limit:
            break
    return claimed


_CLAIMED_COLUMNS = (events.c.id, events.c.orderid, events.c.payload, events.c.attempts,
                    sa.func.coalesce(events.c.requeued_at, events.c.created_at).label("since"),
                    events.c.validated)
# A row still in flight when its lease ran out was claimed by a worker that never recorded an
# answer (it crashed, or the database refused the record): its request may have reached
# Spotler, so the claim that takes it again says so rather than keep a stale reason.
RECLAIMED_NOTE = ("claimed again: the lease of an earlier claim ran out before its answer was "
                  "recorded, so that request may have reached Spotler (merged on orderid)")
# While in flight, next_attempt_at is the lease expiry: one index serves "due" and "expired".
_CLAIM_VALUES = {
    "status": Status.IN_FLIGHT.value,
    "claim_token": sa.bindparam("token"),
    "lease_expires_at": sa.bindparam("until"),
    "next_attempt_at": sa.bindparam("until"),
    "attempts": events.c.attempts + 1,
    "updated_at": sa.bindparam("now"),
}


# Read in the claim itself (once per statement: it names no claimed row), so a worker needs
# no statement of its own per batch to learn whether the account may send. Not locked: a
# locking read locks no row of a subquery (MariaDB and MySQL alike).
_ACCOUNT_STOPPED = sa.exists().where(
    control.c.account == sa.bindparam("of_account"),
    sa.or_(control.c.paused_reason.is_not(None), control.c.not_before > sa.bindparam("now")))


def _pick(status: sa.ColumnElement[Any], *columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
    return (
        sa.select(*columns)
        .where(events.c.status == status,
               events.c.account == sa.bindparam("of_account"),
               events.c.next_attempt_at <= sa.bindparam("now"),
               ~_ACCOUNT_STOPPED)
        .order_by(events.c.next_attempt_at)
        .limit(sa.bindparam("n"))
        .with_for_update(skip_locked=True)
    )


@cache
def _claim_statement() -> sa.Executable:
    """One statement for both statuses: the pending arm runs only for what the in-flight arm
    left (the outer LIMIT stops pulling rows). The statuses are literals: as parameters, a
    generic plan could not use the partial index at all. (PostgreSQL still plans the claim
    afresh on most calls in `./dev bench`: its custom plans cost less in its estimate.)"""
    arms = [sa.select(_pick(sa.literal_column(f"'{status.value}'"), events.c.id)
                      .subquery().c.id)
            for status in (Status.IN_FLIGHT, Status.PENDING)]
    either = sa.union_all(*arms).subquery()
    # SET reads the row as it was, so the status tested here is the one before the claim.
    reclaimed = sa.case((events.c.status == Status.IN_FLIGHT.value, RECLAIMED_NOTE),
                        else_=events.c.last_error)
    return (events.update()
            .where(events.c.id.in_(sa.select(either.c.id).limit(sa.bindparam("n"))
                                   .scalar_subquery()))
            .values({**_CLAIM_VALUES, "last_error": reclaimed}).returning(*_CLAIMED_COLUMNS))


@cache
def _claim_statements_mariadb() -> tuple[sa.Executable, dict[str, sa.Executable]]:
    # MySQL's SET assigns left to right, each seeing the ones before: a CASE on the status
    # would read the new one. The status is known per statement here anyway.
    claim = events.update().where(_SOME_ROWS)
    return (_pick(sa.bindparam("from_status"), *_CLAIMED_COLUMNS), {
        Status.PENDING.value: claim.values(_CLAIM_VALUES),
        Status.IN_FLIGHT.value: claim.values({**_CLAIM_VALUES, "last_error": RECLAIMED_NOTE}),
    })


_RENEW = events.update().where(_CLAIMED_BY_US).values(
    lease_expires_at=sa.bindparam("until"), next_attempt_at=sa.bindparam("until"),
    updated_at=sa.bindparam("now"))


def renew(conn: sa.Connection, *, token: str, now: dt.datetime, lease_until: dt.datetime) -> int:
    """Extend the lease of every row the claim still holds; returns how many that is."""
    return int(conn.execute(_RENEW, {"token": token, "now": now, "until": lease_until}).rowcount)


_HANDED_BACK = {"status": Status.PENDING.value, "next_attempt_at": sa.bindparam("not_before"),
                "attempts": events.c.attempts - sa.bindparam("uncounted", type_=sa.Integer),
                "updated_at": sa.bindparam("now"), "last_error": sa.bindparam("note"),
                **_UNCLAIMED}
_RELEASE = _per_dialect(
    lambda some: events.update().where(some, _HELD_BY_US).values(_HANDED_BACK))


def release(
    conn: sa.Connection, *, token: str, now: dt.datetime, note: str, ids: Sequence[int],
    not_before: dt.datetime | None = None, attempt_counted: bool = False,
) -> int:
    """Hand the rows `ids` the claim still holds back, due again at `not_before` (default:
    now). Without an attempt counted, unless `attempt_counted`: a request of this claim
    carried them already, so the attempt its claim counted stands. Returns how many."""
    if not ids:
        return 0
    return int(conn.execute(_RELEASE(conn), {
        "token": token, "now": now, "note": note, "ids": list(ids),
        "uncounted": 0 if attempt_counted else 1,
        "not_before": now if not_before is None else not_before}).rowcount)


_MARK_DELIVERED = _per_dialect(lambda some: events.update().where(some, _HELD_BY_US).values(
    status=Status.DELIVERED.value, delivered_at=sa.bindparam("now"),
    updated_at=sa.bindparam("now"), last_error=None,
    last_http_status=sa.bindparam("http_status"), **_UNCLAIMED))


def mark_delivered(
    conn: sa.Connection, ids: Sequence[int], *, token: str, now: dt.datetime,
    http_status: int | None,
) -> int:
    """Returns how many rows were marked: fewer than `ids` when part of the claim was lost."""
    return int(conn.execute(_MARK_DELIVERED(conn), {"ids": list(ids), "token": token, "now": now,
                                              "http_status": http_status}).rowcount)


_NOTE_UNANSWERED = _per_dialect(lambda some: events.update().where(some, _HELD_BY_US).values(
    last_error=sa.bindparam("note"), updated_at=sa.bindparam("now")))


def note_unanswered(conn: sa.Connection, ids: Sequence[int], *, token: str, now: dt.datetime,
                    note: str) -> None:
    """Say why rows stay in flight: sent, with no answer recorded. They keep their claim (and
    the attempt it counted) until the lease runs out."""
    conn.execute(_NOTE_UNANSWERED(conn), {"ids": list(ids), "token": token, "now": now,
                                          "note": note})


_SCHEDULE_RETRY = events.update().where(_ONE_ROW, _HELD_BY_US).values(
    status=Status.PENDING.value, next_attempt_at=sa.bindparam("at"),
    last_error=sa.bindparam("error"), last_http_status=sa.bindparam("http_status"),
    updated_at=sa.bindparam("now"), **_UNCLAIMED)


def schedule_retries(
    conn: sa.Connection, retries: Sequence[ScheduledRetry], *, token: str, now: dt.datetime,
    error: str, http_status: int | None,
) -> None:
    if retries:
        conn.execute(_SCHEDULE_RETRY, [
            {"row_id": r.id, "at": r.at, "token": token, "now": now, "error": error,
             "http_status": http_status} for r in retries])


_PARK = events.update().where(_ONE_ROW, _HELD_BY_US).values(
    status=Status.FAILED.value, last_error=sa.bindparam("reason"),
    last_http_status=sa.bindparam("http_status"), updated_at=sa.bindparam("now"),
    **_UNCLAIMED)


def park(
    conn: sa.Connection, reasons: Sequence[tuple[int, str]], *, token: str, now: dt.datetime,
    http_status: int | None = None,
) -> None:
    """Park rows as failed, each with its own reason: they stay until an operator acts."""
    if reasons:
        conn.execute(_PARK, [
            {"row_id": row_id, "reason": reason, "token": token, "now": now,
             "http_status": http_status} for row_id, reason in reasons])


# No explicit RETURNING (MySQL 8 has none): SQLAlchemy reads the new id the dialect's way.
_INSERT_ATTEMPT = attempts_table.insert()
_INSERT_ATTEMPT_EVENT = attempt_events.insert()
_ATTEMPT_COLUMNS = ("started_at", "duration_ms", "event_count", "http_status", "outcome",
                    "error_class", "response_excerpt", "worker")
# PostgreSQL: the attempt and every link in one statement. psycopg's executemany sends one
# INSERT per row (100 executions cost the backend ~10 us per event more than one), and each
# statement costs the worker more than its round trip (benchmarks/, py-spy).
_RECORD_ATTEMPT_PG = sa.text(
    f"WITH attempt AS (INSERT INTO delivery_attempts ({', '.join(_ATTEMPT_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _ATTEMPT_COLUMNS)}) RETURNING id), "
    "links AS (INSERT INTO delivery_attempt_events (attempt_id, outbox_event_id, attempt_number) "
    "SELECT attempt.id, unnest(CAST(:ids AS BIGINT[])), unnest(CAST(:nums AS INTEGER[])) "
    "FROM attempt) "
    "SELECT id FROM attempt"
).bindparams(sa.bindparam("started_at", type_=attempts_table.c.started_at.type))


def record_attempt(
    conn: sa.Connection, record: AttemptRecord, rows: Sequence[ClaimedRow]
) -> int:
    """The attempt row and its links to the rows it carried; returns the attempt's id."""
    values = {c: getattr(record, c) for c in _ATTEMPT_COLUMNS}
    if conn.dialect.name == "postgresql":
        return int(conn.execute(_RECORD_ATTEMPT_PG, {
            **values, "ids": [r.id for r in rows], "nums": [r.attempts for r in rows],
        }).scalar_one())
    inserted = conn.execute(_INSERT_ATTEMPT, values)
    attempt_id: int = inserted.inserted_primary_key_rows[0][0]  # type: ignore[index]
    # PyMySQL rewrites this executemany into one multi-row INSERT; SQLite loops in C.
    conn.execute(_INSERT_ATTEMPT_EVENT, [
        {"attempt_id": attempt_id, "outbox_event_id": r.id, "attempt_number": r.attempts}
        for r in rows
    ])
    return int(attempt_id)


def any_due(conn: sa.Connection, now: dt.datetime,
            accounts: Sequence[str] | None = None) -> bool:
    """Whether any row is due; of `accounts` only, when given (those that may send now)."""
    where = [due(now)]
    if accounts is not None:
        if not accounts:
            return False
        where.append(events.c.account.in_(list(accounts)))
    return conn.execute(sa.select(events.c.id).where(*where).limit(1)).first() is not None
