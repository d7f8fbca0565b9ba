"""Why the purge is as fast as it is: models.operations.purge against two alternatives, alone.

`python -m benchmarks.scale_probe` builds the same table as benchmarks.scale (--delivered rows,
--purge of them older than 30 days) and purges it three ways, restoring it in between:
  current   models.operations.purge as shipped: batches of 1000 ids picked ORDER BY id;
  batch5000 the same function with batch=5000;
  keyset    the same deletes (models.operations.purge_delivered), but each batch's ids picked
            from ix_outbox_events_delivered_at, starting where the previous batch ended
            (delivered_at >= the last one seen), so no pick walks the index entries of rows
            already deleted, and the last pick stops at the cutoff instead of reading the
            rest of the table to prove nothing is left.
No claimers run: this is the purge's own cost. EXPLAIN ANALYZE of the current and the keyset
pick as the last batch sees them (right after the purge, before VACUUM) is printed too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from benchmarks import db, scale_data
from benchmarks.scale import DEFAULT_URL
from spotler_outbox.models import operations as ops
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.tables import events

KEYSET_PICK = (
    sa.select(events.c.id, events.c.delivered_at)
    .where(events.c.status == "delivered", events.c.delivered_at < sa.bindparam("before"),
           events.c.delivered_at >= sa.bindparam("after"))
    .order_by(events.c.delivered_at).limit(sa.bindparam("n")))


def keyset_purge(engine: Engine, *, delivered_before: dt.datetime,
                 batch: int) -> tuple[int, dt.datetime]:
    """The proposed loop. `>=` and not `>`: rows sharing the last timestamp (a batch marks
    up to 100 rows with one delivered_at) are picked again rather than skipped; those already
    deleted are invisible, so every pass makes progress. Returns (rows, the last pick's
    lower bound)."""
    rows = 0
    after = dt.datetime.min.replace(tzinfo=dt.UTC)
    while True:
        with engine.begin() as conn:
            picked = conn.execute(KEYSET_PICK, {"before": delivered_before, "after": after,
                                                "n": batch}).all()
            rows += ops.purge_delivered(conn, [r.id for r in picked], before=delivered_before)
        if len(picked) < batch:
            return rows, after
        after = picked[-1].delivered_at


def timed(engine: Engine) -> dict[str, list[float]]:
    """Every statement's duration by kind, as scale_load's purger records them."""
    out: dict[str, list[float]] = {}
    began: list[float] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _before(*_: Any) -> None:
        began.append(time.monotonic())

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _after(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        kind = ("pick" if statement.startswith("SELECT outbox_events.id") else
                "delete" if statement.startswith("DELETE") else "other")
        out.setdefault(kind, []).append(time.monotonic() - began.pop())
    return out


def wal_mb(engine: Engine, since: str | None = None) -> tuple[str, float]:
    with engine.connect() as conn:
        now = str(conn.execute(sa.text("SELECT pg_current_wal_lsn()")).scalar_one())
        mb = 0.0 if since is None else float(conn.execute(
            sa.text("SELECT pg_wal_lsn_diff(CAST(:a AS pg_lsn), CAST(:b AS pg_lsn)) / 1048576.0"),
            {"a": now, "b": since}).scalar_one())
    return now, mb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delivered", type=int, default=5_000_000)
    p.add_argument("--purge", type=int, default=1_000_000)
    p.add_argument("--database-url", default=DEFAULT_URL.replace("_scale_bench",
                                                                 "_scale_probe_bench"))
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {what}", file=sys.stderr, flush=True)

    url = args.database_url
    try:
        db.prepare(url).dispose()
        admin = make_engine(url)
        history = scale_data.History(args.delivered, args.purge, utc_now())
        scale_data.insert_history(admin, history, 1, args.delivered, say)
        scale_data.maintenance(admin, "VACUUM ANALYZE outbox_events")
        for variant in ("current", "batch5000", "keyset"):
            if variant != "current":
                scale_data.restore(admin, history, say)
            engine = make_engine(url)
            statements = timed(engine)
            lsn, _ = wal_mb(admin)
            cutoff = utc_now() - dt.timedelta(days=30)
            say(f"purging: {variant}")
            t0 = time.monotonic()
            last_after = cutoff
            if variant == "keyset":
                rows, last_after = keyset_purge(engine, delivered_before=cutoff,
                                                batch=ops.PURGE_BATCH)
            else:
                rows = ops.purge(engine, delivered_before=cutoff,
                                 batch=5000 if variant == "batch5000" else ops.PURGE_BATCH)[0]
            seconds = time.monotonic() - t0
            _, wal = wal_mb(admin, lsn)
            picks = statements.get("pick", [])
            print(f"{variant:9}: {rows:,} rows in {seconds:.1f} s = {rows / seconds:,.0f} rows/s"
                  f"; picks {len(picks)}, {sum(picks):.1f} s in all, last "
                  f"{picks[-1] * 1000:,.0f} ms; deletes {sum(statements.get('delete', [])):.1f}"
                  f" s; WAL {wal:,.0f} MB")
            if variant == "current":
                print("EXPLAIN of the current last pick, after the purge, before VACUUM:")
                print(scale_data.explain_purge_pick(admin, cutoff, ops.PURGE_BATCH))
            if variant == "keyset":
                print("EXPLAIN of the keyset last pick, after the purge, before VACUUM:")
                print(scale_data.explain(admin, KEYSET_PICK, {
                    "before": cutoff, "after": last_after, "n": ops.PURGE_BATCH}))
            engine.dispose()
        admin.dispose()
    finally:
        scale_data.drop(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
