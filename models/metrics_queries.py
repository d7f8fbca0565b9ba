"""What the Prometheus exporter reads from the outbox on each scrape.

The backlog, pause and hold come from models.operations.status_summary, so the metrics and
`spotler-outbox status` can never disagree; this module adds the delivery attempts the
exporter has not counted yet (see worker/console/attempt_feed.py for why by id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from spotler_outbox.models.tables import attempts_table


@dataclass(frozen=True)
class AttemptSample:
    id: int
    outcome: str
    event_count: int
    duration_ms: int


def highest_attempt_id(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.max(attempts_table.c.id))).scalar() or 0)


def attempts_after(conn: sa.Connection, highest_seen: int,
                   gaps: Sequence[tuple[int, int]]) -> list[AttemptSample]:
    """Attempts with an id above `highest_seen` or inside one of the (first, last) gaps."""
    ids = attempts_table.c.id
    wanted = sa.or_(ids > highest_seen, *(ids.between(first, last) for first, last in gaps))
    rows = conn.execute(
        sa.select(ids, attempts_table.c.outcome, attempts_table.c.event_count,
                  attempts_table.c.duration_ms).where(wanted).order_by(ids))
    return [AttemptSample(int(i), str(o), int(n), int(ms)) for i, o, n, ms in rows]
