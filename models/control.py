"""The dispatch control row shared by every worker: a credentials pause and a 429's hold.

Like models.claims, every function takes a Connection in a transaction the caller owns, and
`now` from the caller.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from spotler_outbox.models.tables import Status, control, events

CONTROL_ID = 1


@dataclass(frozen=True)
class Control:
    paused_reason: str | None
    paused_since: dt.datetime | None
    next_auth_check_at: dt.datetime | None
    not_before: dt.datetime | None

    @property
    def paused(self) -> bool:
        return self.paused_reason is not None

    def rate_limited(self, now: dt.datetime) -> bool:
        return self.not_before is not None and self.not_before > now


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


_TURNS = {"sweep": control.c.next_sweep_at, "retention": control.c.next_retention_at}


def take_turn(conn: sa.Connection, job: str, *, now: dt.datetime, next_at: dt.datetime) -> bool:
    """Whether this worker does `job` now: the one whose UPDATE moves the turn to `next_at`.

    Every worker's timer asks; the row lock makes exactly one of them win until `next_at`.
    """
    column = _TURNS[job]
    return conn.execute(
        control.update().where(control.c.id == CONTROL_ID,
                               sa.or_(column.is_(None), column <= now))
        .values({column.name: next_at})
    ).rowcount == 1
