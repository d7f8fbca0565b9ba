"""Retention: a delivered order keeps its payload for OUTBOX_RETENTION_DAYS, then only its key.

Exactly once must outlive retention: an order system (or an `import` of last year's orders)
that enqueues an old orderid again must send nothing. So the row is not deleted: its payload
(the e-mail address and everything else Spotler received) and its last error are emptied and
`purged_at` is set, leaving the compact record (event, orderid, status, delivered_at) whose
unique key makes every later enqueue of that orderid a no-op, also a plain SQL
`INSERT ... ON CONFLICT DO NOTHING` from another language. The attempts that carried the row
(Spotler's answers, which may quote the payload) are deleted.

Batches are picked by keyset on delivery time over the partial index of unpurged rows, and
each batch is its own short transaction, so a claim never waits behind a purge of millions.
Like models.operations, functions taking a Connection run inside the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox.models.tables import Status, attempt_events, attempts_table, events

PURGE_BATCH = 1000
# How often one worker (whichever takes the turn) runs retention.
RETENTION_EVERY = dt.timedelta(hours=1)
PURGED_PAYLOAD = ""


@dataclass(frozen=True)
class PurgeCount:
    rows: int = 0
    attempts: int = 0


def retention_cutoff(now: dt.datetime, days: int) -> dt.datetime | None:
    """Orders delivered before this lose their payload; None when retention is off (0 days)."""
    return None if days <= 0 else now - dt.timedelta(days=days)


_UNPURGED_DELIVERED = sa.and_(
    events.c.delivered_at.is_not(None), events.c.purged_at.is_(None),
    events.c.status == Status.DELIVERED.value)


def pick_unpurged(
    conn: sa.Connection, *, before: dt.datetime, since: dt.datetime | None,
    limit: int = PURGE_BATCH, account: str | None = None,
) -> list[tuple[int, dt.datetime]]:
    """(id, delivered_at) of the next unpurged delivered rows, oldest delivery first.

    `since` is the previous batch's last delivery time: the walk never goes back over index
    entries it has passed (on PostgreSQL those of purged rows stay until VACUUM removes them).
    """
    where = [_UNPURGED_DELIVERED, events.c.delivered_at < before]
    if account is not None:  # `purge --account`: one store's rows
        where.append(events.c.account == account)
    if since is not None:
        where.append(events.c.delivered_at >= since)
    rows = conn.execute(sa.select(events.c.id, events.c.delivered_at).where(*where)
                        .order_by(events.c.delivered_at).limit(limit)).all()
    return [(int(r.id), r.delivered_at) for r in rows]


def compacted_values(now: dt.datetime) -> dict[str, object]:
    """What compacting leaves of a delivered row (retention, erasure): its key, no payload.
    An emptied payload is no longer what enqueue validated."""
    return {"payload": PURGED_PAYLOAD, "validated": False, "last_error": None,
            "purged_at": now, "updated_at": now}


def compact_delivered(
    conn: sa.Connection, ids: Sequence[int], *, before: dt.datetime, now: dt.datetime
) -> int:
    """Empty these rows' payload and last error and drop their attempt links, unless they were
    re-queued (resend) or purged since they were picked. Returns how many were compacted."""
    if not ids:
        return 0
    compacted = int(conn.execute(
        events.update().where(events.c.id.in_(list(ids)), _UNPURGED_DELIVERED,
                              events.c.delivered_at < before)
        .values(compacted_values(now))
    ).rowcount)
    # The links are deleted explicitly: rows are kept, so no ON DELETE CASCADE would fire.
    drop_attempt_links(conn, ids)
    return compacted


def drop_attempt_links(conn: sa.Connection, ids: Sequence[int]) -> None:
    """Forget which attempts carried these rows, for those of them that are purged."""
    purged = sa.select(events.c.id).where(events.c.id.in_(list(ids)),
                                          events.c.purged_at.is_not(None))
    conn.execute(attempt_events.delete().where(
        attempt_events.c.outbox_event_id.in_(purged.scalar_subquery())))


def attempts_of(conn: sa.Connection, ids: Sequence[int]) -> list[int]:
    """The attempts that carried any of these rows."""
    if not ids:
        return []
    return list(conn.execute(sa.select(attempt_events.c.attempt_id).distinct().where(
        attempt_events.c.outbox_event_id.in_(list(ids)))).scalars())


def delete_attempts(conn: sa.Connection, ids: Sequence[int]) -> int:
    """Delete these attempts, unless a link to one of them appeared since they were read."""
    if not ids:
        return 0
    linked = sa.select(attempt_events.c.attempt_id).where(
        attempt_events.c.attempt_id == attempts_table.c.id)
    return int(conn.execute(attempts_table.delete().where(
        attempts_table.c.id.in_(list(ids)), ~linked.exists())).rowcount)


def purge_delivered_before(
    engine: Engine, *, before: dt.datetime, clock: Callable[[], dt.datetime],
    batch: int = PURGE_BATCH, stop: threading.Event | None = None,
    account: str | None = None,
) -> PurgeCount:
    """Compact every order delivered before `before` and delete the attempts left without
    orders; one short transaction per batch. `stop` ends the run between batches."""
    rows = attempts = 0
    since: dt.datetime | None = None
    while stop is None or not stop.is_set():
        with engine.begin() as conn:
            picked = pick_unpurged(conn, before=before, since=since, limit=batch,
                                   account=account)
            ids = [i for i, _ in picked]
            carried = attempts_of(conn, ids)
            rows += compact_delivered(conn, ids, before=before, now=clock())
            # Only the attempts of this batch's rows can have lost their last link: no scan
            # of the whole attempts table.
            attempts += delete_attempts(conn, carried)
        if len(picked) < batch:
            break
        since = picked[-1][1]
    return PurgeCount(rows, attempts)
