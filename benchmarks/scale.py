"""Does the outbox keep its speed when the table is big, and while it is purged?

`./dev bench --scale` measures, on real PostgreSQL, no Celery and no HTTP:
  1. claim + mark delivered (benchmarks.claimers: batch 100, 2 processes) on --pending pending
     rows (a) in an otherwise empty table and (b) in a table that also holds --delivered
     delivered rows (made by the server: INSERT ... SELECT generate_series), with the table's
     and its indexes' sizes;
  2. the same claimers running on fresh pending rows (a feeder tops them up) while
     models.operations.purge, as `spotler-outbox purge --delivered-before 30d` runs it,
     empties the --purge delivered rows older than 30 days (their orderids stay): the
     purge's rate, throughput and claim latency before / during it, and claims seen
     waiting on a lock the purge holds;
     then a control run: the same windows with a sleep as long as the purge instead of it.
Two databases, <name> and <name minus _bench>_empty_bench, both dropped at the end.
Figures are medians over --repeat runs; ratios are taken within each run, then the median.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from benchmarks import db
from benchmarks.claimers import Load, LockWatcher, PurgeResult, Samples, run_purge
from benchmarks.report import Row, Target, at_least, at_most, percentile, render
from spotler_outbox.models.clock import utc_now

DEFAULT_URL = os.environ.get(
    "BENCH_SCALE_DATABASE_URL",
    "postgresql+psycopg://postgres@127.0.0.1:5432/spotler_outbox_scale_bench")
WARMUP_S = 2.0  # claimers just started: connections warm, but not yet in their stride
CHUNK = 250_000  # history rows per transaction: progress to report, and no 2 GB transaction

# Delivered history, oldest ids first as in a table that grew over time. The --purge oldest
# rows lie 30-60 days back, the rest within the last 30 days; an hour's margin either side of
# "30 days ago" keeps exactly --purge rows behind the cutoff for the whole command.
_HISTORY = sa.text(f"""
INSERT INTO outbox_events (id, event, orderid, payload, status, attempts, next_attempt_at,
                           created_at, updated_at, delivered_at, last_http_status)
SELECT n, 'Purchase', :prefix || n, {db.PAYLOAD_SQL}, 'delivered', 1, t.at,
       t.at - interval '2 seconds', t.at, t.at, 200
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n
CROSS JOIN LATERAL (SELECT CASE
    WHEN n <= :old THEN CAST(:anchor AS timestamptz) - interval '60 days'
                        + make_interval(secs => (n - 1) * CAST(:old_step AS float8))
    ELSE CAST(:anchor AS timestamptz) - interval '30 days' + interval '1 hour'
         + make_interval(secs => (n - :old - 1) * CAST(:new_step AS float8))
    END AS at) AS t""")


def insert_history(engine: Engine, args: argparse.Namespace, anchor: dt.datetime, hi: int,
                   say: Callable[[str], None]) -> None:
    """Delivered rows 1..hi; of all --delivered, ids 1..--purge are older than 30 days."""
    span = dt.timedelta(days=30, hours=-1).total_seconds()
    params = {"template": db.PAYLOAD, "prefix": "hist-", "old": args.purge, "anchor": anchor,
              "old_step": span / args.purge, "new_step": (span - 60) / max(
                  args.delivered - args.purge, 1)}
    for lo in range(1, hi + 1, CHUNK):
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL synchronous_commit = off"))  # loading only
            conn.execute(_HISTORY, {**params, "lo": lo, "hi": min(lo + CHUNK - 1, hi)})
        say(f"delivered rows {lo:,}..{min(lo + CHUNK - 1, hi):,} of {hi:,}")
    with engine.begin() as conn:  # later default ids must not collide with explicit ones
        conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('outbox_events', 'id'), "
                             "(SELECT max(id) FROM outbox_events))"))


def maintenance(engine: Engine, sql: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(sql))  # VACUUM refuses to run inside a transaction block


def restore(engine: Engine, args: argparse.Namespace, anchor: dt.datetime,
            say: Callable[[str], None]) -> None:
    """Back to exactly the history, purged rows put back, dead versions vacuumed away: every
    run starts from the same table and indexes."""
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM delivery_attempt_events"))
        conn.execute(sa.text("DELETE FROM delivery_attempts"))
        conn.execute(sa.text("DELETE FROM outbox_events WHERE id > :d"), {"d": args.delivered})
        # A purge empties rows and keeps them: take those out too, to insert them afresh.
        conn.execute(sa.text("DELETE FROM outbox_events WHERE purged_at IS NOT NULL"))
        missing = conn.execute(sa.text("SELECT :d - count(*) FROM outbox_events"),
                               {"d": args.delivered}).scalar_one()
    if missing not in (0, args.purge):
        raise RuntimeError(f"{missing} history rows missing, expected 0 or {args.purge}")
    if missing:
        insert_history(engine, args, anchor, args.purge, say)
    maintenance(engine, "VACUUM ANALYZE outbox_events")


def sizes(engine: Engine) -> dict[str, float]:
    """MB of the table and of each of its indexes."""
    with engine.connect() as conn:
        out = {f"size_{name}": size / 2**20 for name, size in conn.execute(sa.text(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
            "WHERE indrelid = 'outbox_events'::regclass"))}
        out["size_heap"] = conn.execute(sa.text(
            "SELECT pg_relation_size('outbox_events')")).scalar_one() / 2**20
    return out


def drain_figures(prefix: str, s: Samples) -> dict[str, float]:
    ms = sorted(d * 1000 for d in s.claim_s)
    return {prefix: s.per_second, f"{prefix}_p50": percentile(ms, 50),
            f"{prefix}_p99": percentile(ms, 99)}


def phase1(args: argparse.Namespace, big: Engine, empty: Engine, anchor: dt.datetime, run: int,
           say: Callable[[str], None]) -> dict[str, float]:
    figures: dict[str, float] = {}

    def drain(engine: Engine, prefix: str) -> None:
        db.insert_pending(engine, args.pending, prefix="pending-", offset=run * args.pending,
                          by_server=True)
        maintenance(engine, "ANALYZE outbox_events")
        url = engine.url.render_as_string(hide_password=False)
        with Load(url, batch=args.batch, processes=args.processes) as load:
            figures.update(drain_figures(prefix, load.stop()[0]))

    def empty_table() -> None:
        say("(a) empty table")
        db.wipe(empty)
        drain(empty, "cm_empty")

    def big_table() -> None:
        say(f"(b) table with {args.delivered:,} delivered rows")
        if run > 0:
            restore(big, args, anchor, say)
        drain(big, "cm_big")

    # Alternate the order, so a machine getting busier or quieter does not favour one table.
    for step in (empty_table, big_table) if run % 2 == 0 else (big_table, empty_table):
        step()
    figures["big_ratio"] = figures["cm_big"] / figures["cm_empty"]
    return figures


def window(s: Samples, lo: float, hi: float) -> tuple[float, list[float]]:
    """Rows settled per second within [lo, hi), and the claim times (ms) started in it."""
    rows = sum(n for at, n in zip(s.settled_at, s.rows, strict=True) if lo <= at < hi)
    ms = sorted(d * 1000 for at, d in zip(s.claim_at, s.claim_s, strict=True) if lo <= at < hi)
    return rows / (hi - lo), ms


def phase2(args: argparse.Namespace, big: Engine, anchor: dt.datetime,
           say: Callable[[str], None], control_s: float | None = None) -> dict[str, float]:
    """Claimers before and during the purge; or, given control_s, a sleep that long instead."""
    url = big.url.render_as_string(hide_password=False)
    say("restoring the table (VACUUM ANALYZE)")
    restore(big, args, anchor, say)
    watcher = LockWatcher(url)
    watcher.start()
    try:
        with Load(url, batch=args.batch, processes=args.processes,
                  feed_low=args.pending) as load:
            say(f"claimers running; {args.window:g} s before")
            time.sleep(WARMUP_S + args.window)
            if control_s is None:
                say("purging")
                purge = run_purge(url)
            else:
                say(f"control: no purge, {control_s:.0f} s")
                t0 = time.monotonic()
                time.sleep(control_s)
                purge = PurgeResult(0, t0, time.monotonic())
            samples, _ = load.stop()
    finally:
        watcher.halt.set()
        watcher.join(10)
    f: dict[str, float] = {}
    for name, (lo, hi) in {"before": (purge.started - args.window, purge.started),
                           "during": (purge.started, purge.ended)}.items():
        f[f"cm_{name}"], ms = window(samples, lo, hi)
        f[f"claim_p99_{name}"] = percentile(ms, 99)
        f[f"claim_max_{name}"] = ms[-1] if ms else float("nan")
    f["ratio_during"] = f["cm_during"] / f["cm_before"]
    f["purge_s"] = purge.ended - purge.started
    if control_s is None:
        f["purge_rate"] = purge.rows / f["purge_s"]
        waits = [by_purge for at, by_purge in watcher.waits
                 if purge.started <= at < purge.ended]
        f["lock_waits"], f["lock_waits_purge"] = float(len(waits)), float(sum(waits))
        if purge.rows != args.purge:
            say(f"warning: the purge emptied {purge.rows:,} rows, expected {args.purge:,}")
    return f


def table_rows(args: argparse.Namespace, index_names: list[str]) -> list[Row | str]:
    ms = "{:,.2f}"
    return [
        f"1. claim + mark delivered, batch {args.batch}, {args.processes} processes, "
        f"{args.pending:,} pending rows",
        Row("(a) otherwise empty table, rows/s", "cm_empty"),
        Row(f"(b) table also holding {args.delivered:,} delivered rows, rows/s", "cm_big"),
        Row("(b) / (a)", "big_ratio", "{:.2f}", at_least(0.8, ">= 0.8 (within 20%)")),
        Row("(a) claim statement p99, ms", "cm_empty_p99", ms),
        Row("(b) claim statement p99, ms", "cm_big_p99", ms),
        "   sizes of the big table after VACUUM ANALYZE, MB",
        Row("heap", "size_heap", "{:,.1f}"),
        *(Row(f"index {name}", f"size_{name}", "{:,.1f}") for name in index_names),
        f"2. purge of {args.purge:,} delivered rows (models.operations.purge, cutoff 30d) while "
        f"{args.processes} processes claim + mark fresh pending rows",
        Row("purge duration, s", "purge_s", "{:,.1f}"),
        Row("purge rate, rows/s", "purge_rate"),
        Row(f"claim + mark rows/s, {args.window:g} s before the purge", "cm_before"),
        Row("claim + mark rows/s, during the purge", "cm_during"),
        Row("during / before", "ratio_during", "{:.2f}"),
        Row("control run (a sleep instead of the purge): during / before", "ctl_ratio_during",
            "{:.2f}"),
        Row("claim statement p99 before, ms", "claim_p99_before", ms),
        Row("claim statement p99 during, ms", "claim_p99_during", ms),
        Row("claim statement max during, ms", "claim_max_during", ms,
            at_most(1000.0, "<= 1000 ms")),
        Row("20 ms samples of a claim / mark waiting on a lock, during", "lock_waits"),
        Row("... on a lock the purge holds", "lock_waits_purge", "{:,.0f}",
            Target("= 0", lambda v: v == 0)),
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./dev bench --scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delivered", type=int, default=5_000_000, help="delivered rows in (b)")
    p.add_argument("--purge", type=int, default=1_000_000,
                   help="of those, how many are older than 30 days (what the purge empties)")
    p.add_argument("--pending", type=int, default=20_000,
                   help="pending rows drained in phase 1; the feeder's low-water mark in 2")
    p.add_argument("--repeat", type=int, default=3, help="runs; medians reported")
    p.add_argument("--window", type=float, default=10.0, help="seconds before the purge")
    p.add_argument("--batch", type=int, default=100, help="rows per claim")
    p.add_argument("--processes", type=int, default=2, help="claiming processes")
    p.add_argument("--no-control", action="store_true", help="skip the control run")
    p.add_argument("--database-url", default=DEFAULT_URL,
                   help="PostgreSQL; dropped and created afresh, so its name must end in _bench")
    p.add_argument("--json", action="store_true", help="also print every figure as JSON")
    args = p.parse_args(argv)
    if not 0 < args.purge <= args.delivered or args.pending < args.batch or args.repeat < 1:
        p.error("need 0 < --purge <= --delivered, --pending >= --batch, --repeat >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # the `with` blocks stop children
    started = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {what}", file=sys.stderr, flush=True)

    parsed = make_url(args.database_url)
    empty_url = parsed.set(database=(parsed.database or "").removesuffix("_bench")
                           + "_empty_bench").render_as_string(hide_password=False)
    runs: list[dict[str, float]] = []
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        big, empty = db.prepare(args.database_url), db.prepare(empty_url)
        anchor = utc_now()
        insert_history(big, args, anchor, args.delivered, say)
        maintenance(big, "VACUUM ANALYZE outbox_events")
        built = sizes(big)
        for i in range(args.repeat):
            def run_say(what: str, i: int = i) -> None:
                say(f"run {i + 1}: {what}")
            figures = phase1(args, big, empty, anchor, i, run_say)
            figures.update(built)
            figures.update(phase2(args, big, anchor, run_say))
            if i == 0 and not args.no_control:
                control = phase2(args, big, anchor, run_say, control_s=figures["purge_s"])
                figures["ctl_ratio_during"] = control["ratio_during"]
            runs.append(figures)
        big.dispose()
        empty.dispose()
    except KeyboardInterrupt:
        print("interrupted: the child processes were stopped", file=sys.stderr)
        return 130
    finally:
        for url in (args.database_url, empty_url):
            db.drop(url)
    indexes = sorted(k.removeprefix("size_") for k in built if k != "size_heap")
    text, missed = render(table_rows(args, indexes), runs)
    print(f"command: ./dev bench --scale {' '.join(argv or sys.argv[1:])}")
    print(f"load average at start {load}, at the end "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.repeat} run(s), medians; "
          "'each run' lists every run's figure in order")
    print(text)
    print("targets missed: " + (", ".join(missed) if missed else "none"))
    if args.json:
        print(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
