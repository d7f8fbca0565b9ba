"""What retention costs on a big table: `python -m benchmarks.retention` (PostgreSQL).

Builds --delivered delivered rows, --old of them delivered 30-60 days ago, then runs
models.operations.purge (what the workers' retention and `purge --delivered-before 30d` run)
with every statement timed: rows compacted per second, the batch pick's p50 / max and the
last pick. Then two more runs with nothing left to purge, before and after the VACUUM ANALYZE
autovacuum runs: what the compact rows left behind cost each hourly run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from typing import Any

import sqlalchemy as sa

from benchmarks import db, scale
from spotler_outbox.models import operations as ops
from spotler_outbox.models import retention
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.database import make_engine

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/spotler_outbox_retention_bench"


def timed_purge(url: str, before: dt.datetime) -> tuple[int, float, dict[str, list[float]]]:
    engine = make_engine(url)
    statements: dict[str, list[float]] = {}
    began: list[float] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _before(*_: Any) -> None:
        began.append(time.perf_counter())

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _after(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        kind = ("pick" if statement.startswith("SELECT outbox_events.id")
                else "compact" if statement.startswith("UPDATE outbox_events")
                else "other")
        statements.setdefault(kind, []).append(time.perf_counter() - began.pop())

    with engine.connect():
        pass
    t0 = time.perf_counter()
    rows, _ = ops.purge(engine, delivered_before=before)
    took = time.perf_counter() - t0
    engine.dispose()
    return rows, took, statements


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"p50 {statistics.median(values) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms, "
            f"last {values[-1] * 1000:.1f} ms")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.retention", description=__doc__)
    p.add_argument("--delivered", type=int, default=1_000_000)
    p.add_argument("--old", type=int, default=500_000)
    p.add_argument("--database-url", default=DEFAULT_URL,
                   help="PostgreSQL; dropped and created afresh: its name must end in _bench")
    args = p.parse_args(argv)
    engine = db.prepare(args.database_url)
    shape = argparse.Namespace(delivered=args.delivered, purge=args.old)
    scale.insert_history(engine, shape, utc_now(), args.delivered, lambda _: None)
    scale.maintenance(engine, "VACUUM ANALYZE outbox_events")
    cutoff = utc_now() - dt.timedelta(days=30)
    print(f"{args.delivered:,} delivered rows, {args.old:,} delivered 30-60 days ago; "
          f"batches of {retention.PURGE_BATCH}")
    # The last run follows what autovacuum does once 5,000 rows changed (migration 0005):
    # VACUUM drops the purged rows' dead index entries, ANALYZE tells the planner that most
    # rows are now purged, so it picks the partial index over the plain delivered_at one.
    for label in ("retention run", "next run, before autovacuum",
                  "next run, after VACUUM ANALYZE"):
        if label.endswith("ANALYZE"):
            scale.maintenance(engine, "VACUUM ANALYZE outbox_events")
        rows, took, statements = timed_purge(args.database_url, cutoff)
        rate = f", {rows / took:,.0f} rows/s" if rows else ""
        print(f"{label}: {rows:,} rows compacted in {took:.2f} s{rate}; "
              f"pick {ms(statements.get('pick', []))}; "
              f"compact {ms(statements.get('compact', []))}")
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT count(*) FROM outbox_events WHERE purged_at IS NOT "
                                    "NULL AND payload = ''")).scalar_one()
    print(f"compact rows kept (payload empty, orderid deduplicating): {kept:,}")
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
