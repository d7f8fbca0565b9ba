"""The dispatch control rows shared by every worker, one per account: a credentials pause, a
429's hold, and the next free slot of the account's request budget.

Like models.claims, every function takes a Connection in a transaction the caller owns, and
`now` from the caller. `account` is the value the outbox rows store ('' is the default).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Engine

from spotler_outbox.models.accounts import DEFAULT_ACCOUNT
from spotler_outbox.models.tables import Status, control, events


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

    def auth_check_due(self, now: dt.datetime) -> bool:
        """Paused, and its next verifyAuth is due."""
        return self.paused and (self.next_auth_check_at is None or self.next_auth_check_at <= now)


NO_CONTROL = Control(None, None, None, None)


def _control(row: sa.Row[tuple[object, ...]]) -> Control:
    return Control(row.paused_reason, row.paused_since, row.next_auth_check_at, row.not_before)


def read_control(conn: sa.Connection, account: str = "") -> Control:
    row = conn.execute(sa.select(control).where(control.c.account == account)).first()
    return NO_CONTROL if row is None else _control(row)


def read_controls(conn: sa.Connection) -> dict[str, Control]:
    """Every account's control row, in one statement: what the sweeper reads before it wakes
    dispatch, and a worker after an empty claim (the claim itself skips stopped accounts)."""
    return {row.account: _control(row) for row in conn.execute(sa.select(control))}


def read_all(engine: Engine) -> dict[str, Control]:
    """read_controls in a transaction of its own: for the account gate and the sweeper."""
    with engine.begin() as conn:
        return read_controls(conn)


def record_auth_check(engine: Engine, *, account: str, verified: bool, now: dt.datetime,
                      check_at: dt.datetime) -> None:
    """What verifyAuth said of a paused account: resume it, or ask again at `check_at`."""
    with engine.begin() as conn:
        if verified:
            resume(conn, now=now, account=account)
        else:
            schedule_auth_check(conn, now=now, check_at=check_at, account=account)


def _ensure_row(conn: sa.Connection, account: str, now: dt.datetime) -> None:
    """Add the account's row unless a concurrent worker just did: never an IntegrityError."""
    values = {"account": account, "updated_at": now}
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(postgresql.insert(control).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        conn.execute(sqlite.insert(control).values(values).on_conflict_do_nothing())
    else:
        conn.execute(mysql.insert(control).values(values).prefix_with("IGNORE"))


def _write_control(conn: sa.Connection, now: dt.datetime, account: str,
                   **values: object) -> None:
    update = control.update().where(control.c.account == account).values(updated_at=now,
                                                                         **values)
    if not conn.execute(update).rowcount:
        _ensure_row(conn, account, now)
        conn.execute(update)


def pause(conn: sa.Connection, *, reason: str, now: dt.datetime, check_at: dt.datetime,
          account: str = "") -> None:
    current = read_control(conn, account)
    _write_control(conn, now, account, paused_reason=reason, next_auth_check_at=check_at,
                   paused_since=current.paused_since if current.paused else now)


def schedule_auth_check(conn: sa.Connection, *, now: dt.datetime, check_at: dt.datetime,
                        account: str = "") -> None:
    _write_control(conn, now, account, next_auth_check_at=check_at)


def resume(conn: sa.Connection, *, now: dt.datetime, account: str = "") -> None:
    """Lift the account's pause; its rows that waited through it get a full retry window
    again, so the pause itself can never push them past OUTBOX_MAX_AGE_SECONDS into failed."""
    _write_control(conn, now, account, paused_reason=None, paused_since=None,
                   next_auth_check_at=None)
    conn.execute(events.update().where(events.c.status == Status.PENDING.value,
                                       events.c.account == account)
                 .values(requeued_at=now))


def hold_until(conn: sa.Connection, *, now: dt.datetime, not_before: dt.datetime,
               account: str = "") -> None:
    """No request for this account before `not_before` (a 429's Retry-After), from any
    worker; the other accounts go on."""
    _write_control(conn, now, account, not_before=not_before)


_TAKE_SLOT = control.update().where(
    control.c.account == sa.bindparam("acct"),
    sa.or_(control.c.next_request_at.is_(None),
           control.c.next_request_at <= sa.bindparam("now")),
).values(next_request_at=sa.bindparam("next"))
_READ_SLOT = sa.select(control.c.next_request_at).where(control.c.account == sa.bindparam("acct"))


def take_request_slot(conn: sa.Connection, *, account: str, now: dt.datetime,
                      interval: float) -> dt.datetime | None:
    """Take the account's next request slot if it is free at `now`: None, send now; else the
    time it frees up. One conditional UPDATE, so two workers never take the same slot."""
    params = {"acct": account, "now": now, "next": now + dt.timedelta(seconds=interval)}
    if conn.execute(_TAKE_SLOT, params).rowcount:
        return None
    free_at = conn.execute(_READ_SLOT, params).scalar()
    if free_at is None:  # no control row yet for this account
        _ensure_row(conn, account, now)
        return None if conn.execute(_TAKE_SLOT, params).rowcount else now
    return free_at  # type: ignore[no-any-return]


# The timers' turns are shared by every account: they live on the default account's row.
_TURNS = {"sweep": control.c.next_sweep_at, "retention": control.c.next_retention_at}


def take_turn(conn: sa.Connection, job: str, *, now: dt.datetime, next_at: dt.datetime) -> bool:
    """Whether this worker does `job` now: the one whose UPDATE moves the turn to `next_at`.

    Every worker's timer asks; the row lock makes exactly one of them win until `next_at`.
    """
    column = _TURNS[job]
    return conn.execute(
        control.update().where(control.c.account == DEFAULT_ACCOUNT,
                               sa.or_(column.is_(None), column <= now))
        .values({column.name: next_at})
    ).rowcount == 1
