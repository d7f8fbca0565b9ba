"""Does the outbox keep its speed when the table is big, and while it is purged?

`python -m benchmarks.scale` measures, on real PostgreSQL, no Celery and no HTTP:
  1. claim + mark delivered (models.store, batch 100, 2 processes, as benchmarks/rawdb.py) on
     --pending pending rows (a) in an otherwise empty table and (b) in a table that also holds
     --delivered delivered rows (made by the server: INSERT ... SELECT generate_series), with
     the table's sizes and the EXPLAIN ANALYZE of the claim in (b);
  2. the same claimers running continuously on fresh pending rows (a feeder process tops them
     up) while models.operations.purge, as `spotler-outbox purge --delivered-before 30d` runs
     it, deletes the --purge delivered rows older than 30 days: the purge's rate, throughput
     before / during / after, claim latency, and any claim seen waiting on a lock.
Two databases, <name> and <name minus _bench>_empty_bench, both dropped at the end.
Figures are medians over --repeat runs; ratios are taken within each run, then the median.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import signal
import statistics
import sys
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from benchmarks import scale_data
from benchmarks.report import render
from benchmarks.scale_load import Load, LockWatcher, PurgeResult, run_purge
from benchmarks.scale_report import drain_figures, purge_figures, table_rows, wait_summary
from spotler_outbox.models.clock import utc_now

DEFAULT_URL = os.environ.get(
    "BENCH_SCALE_DATABASE_URL",
    "postgresql+psycopg://postgres@127.0.0.1:5432/spotler_outbox_scale_bench")
WARMUP_S = 2.0  # claimers just started: connections warm, but not yet in their stride
CONTROL_KEYS = ("cm_before", "cm_during", "cm_after", "ratio_during", "ratio_after",
                "claim_p99_before", "claim_p99_during", "claim_max_during",
                "claim_tx_max_during", "commit_wait_during", "checkpoints_during")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delivered", type=int, default=5_000_000, help="delivered rows in (b)")
    p.add_argument("--purge", type=int, default=1_000_000,
                   help="of those, how many are older than 30 days (what the purge deletes)")
    p.add_argument("--pending", type=int, default=20_000,
                   help="pending rows drained in phase 1; the feeder's low-water mark in 2")
    p.add_argument("--repeat", type=int, default=3, help="runs of phase 1; medians reported")
    p.add_argument("--purge-repeat", type=int, help="runs of phase 2 (default: --repeat)")
    p.add_argument("--control", type=int, default=1,
                   help="phase 2 runs followed by a control run: the same claimers and windows "
                        "with a sleep as long as that run's purge instead of the purge")
    p.add_argument("--window", type=float, default=10.0,
                   help="seconds measured before and after the purge")
    p.add_argument("--batch", type=int, default=100, help="rows per claim")
    p.add_argument("--processes", type=int, default=2, help="claiming processes")
    p.add_argument("--database-url", default=DEFAULT_URL,
                   help="PostgreSQL; dropped and created afresh, so its name must end in _bench")
    p.add_argument("--keep", action="store_true", help="do not drop the databases at the end")
    p.add_argument("--json", action="store_true", help="also print every figure as JSON")
    args = p.parse_args(argv)
    if args.purge_repeat is None:
        args.purge_repeat = args.repeat
    if not 0 < args.purge <= args.delivered or args.pending < args.batch:
        p.error("need 0 < --purge <= --delivered and --pending >= --batch")
    if args.repeat < 1 or args.purge_repeat < 0 or args.control < 0:
        p.error("--repeat must be at least 1, --purge-repeat and --control at least 0")
    args.control = min(args.control, args.purge_repeat)
    return args


def command_line(argv: list[str]) -> str:
    python = sys.executable
    if python.startswith(os.getcwd() + os.sep):
        python = os.path.relpath(python)
    return shlex.join([python, "-m", "benchmarks.scale", *argv])


def machine(engine: Engine) -> str:
    with engine.connect() as conn:
        version = conn.execute(sa.text("SHOW server_version")).scalar_one()
        settings = ", ".join(f"{name} {value}{unit or ''}" for name, value, unit in conn.execute(
            sa.text("SELECT name, setting, unit FROM pg_settings WHERE name IN "
                    "('shared_buffers', 'synchronous_commit', 'autovacuum', 'max_wal_size') "
                    "ORDER BY name")))
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"nproc {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), "
            f"{mem_gb:.0f} GB RAM; PostgreSQL {version} ({settings}); "
            f"Python {platform.python_version()}; SQLAlchemy {sa.__version__}; "
            f"load average at start {load}")


def phase1(args: argparse.Namespace, big: Engine, empty: Engine, history: scale_data.History,
           run: int, say: Any) -> tuple[dict[str, float], str]:
    """(a) and (b), one drain each, from the same starting state every run."""
    big_url = big.url.render_as_string(hide_password=False)
    empty_url = empty.url.render_as_string(hide_password=False)
    figures: dict[str, float] = {}
    explain = ""

    def empty_table() -> None:
        say("(a) empty table")
        scale_data.reset_empty(empty)
        scale_data.insert_pending(empty, args.pending, "pending-")
        scale_data.maintenance(empty, "ANALYZE outbox_events")
        with Load(empty_url, batch=args.batch, processes=args.processes, drain=True) as load:
            samples, _ = load.stop()
        figures.update(drain_figures("cm_empty", samples))

    def big_table() -> None:
        nonlocal explain
        say(f"(b) table with {args.delivered:,} delivered rows")
        if run > 0:  # the previous run's rows, now delivered, go; VACUUM clears their versions
            scale_data.restore(big, history, say)
        scale_data.insert_pending(big, args.pending, "pending-", offset=run * args.pending)
        scale_data.maintenance(big, "ANALYZE outbox_events")
        if run == 0:
            explain = scale_data.explain_claim(big, args.batch)
        with Load(big_url, batch=args.batch, processes=args.processes, drain=True) as load:
            samples, _ = load.stop()
        figures.update(drain_figures("cm_big", samples))

    # Alternate the order run by run, so a machine getting busier or quieter (other sessions
    # share it) does not always favour the same table.
    for step in (empty_table, big_table) if run % 2 == 0 else (big_table, empty_table):
        step()
    figures["big_ratio"] = figures["cm_big"] / figures["cm_empty"]
    return figures, explain


def phase2(args: argparse.Namespace, big: Engine, history: scale_data.History, say: Any,
           control_s: float | None = None) -> tuple[dict[str, float], list[str]]:
    """Claimers before, during and after the purge; or, given control_s, the same timeline
    with a sleep that long instead of the purge (what the windows show with no purge)."""
    url = big.url.render_as_string(hide_password=False)
    say("restoring the table (VACUUM ANALYZE)")
    scale_data.restore(big, history, say)
    watcher = LockWatcher(url)
    watcher.start()
    try:
        with Load(url, batch=args.batch, processes=args.processes, drain=False,
                  feed_low=args.pending, feed_chunk=args.pending) as load:
            say(f"claimers running; {args.window:g} s before the purge")
            time.sleep(WARMUP_S)
            edges = [scale_data.server_counters(big)]
            time.sleep(args.window)
            edges.append(scale_data.server_counters(big))
            if control_s is None:
                say("purging")
                purge = run_purge(url, "30d")
            else:
                say(f"control: no purge, {control_s:.0f} s")
                t0 = time.monotonic()
                time.sleep(control_s)
                purge = PurgeResult(0, 0, t0, time.monotonic(), {})
            edges.append(scale_data.server_counters(big))
            done = "slept" if control_s is not None else f"purged {purge.rows:,} rows"
            say(f"{done} in {purge.ended - purge.started:.1f} s; {args.window:g} s after")
            time.sleep(args.window)
            edges.append(scale_data.server_counters(big))
            samples, fed = load.stop()
    finally:
        watcher.halt.set()
        watcher.join(10)
    server = {name: (scale_data.wal_mb_per_s(big, a, b), b.checkpoints - a.checkpoints)
              for name, a, b in zip(("before", "during", "after"), edges, edges[1:],
                                    strict=False)}
    if purge.rows != args.purge and control_s is None:
        say(f"warning: the purge deleted {purge.rows:,} rows, expected {args.purge:,}")
    return (purge_figures(samples, purge, watcher, args.window, fed, load.pids, server),
            wait_summary(watcher, purge, args.window, load.pids))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # SIGTERM takes Ctrl-C's way out, so the child processes' `with` blocks stop them.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {what}", file=sys.stderr, flush=True)

    runs: list[dict[str, float]] = []
    explains: dict[str, str] = {}
    waits: dict[int, list[str]] = {}
    urls = [args.database_url, scale_data.empty_url(args.database_url)]
    try:
        big, empty = scale_data.prepare_databases(args.database_url)
        header = [f"command: {command_line(argv)}", f"machine: {machine(big)}"]
        history = scale_data.History(args.delivered, args.purge, utc_now())
        t0 = time.monotonic()
        scale_data.insert_history(big, history, 1, args.delivered, say)
        t1 = time.monotonic()
        scale_data.maintenance(big, "VACUUM ANALYZE outbox_events")
        built = {"build_insert_s": t1 - t0, "build_vacuum_s": time.monotonic() - t1,
                 **scale_data.sizes(big)}
        say(f"built in {t1 - t0:.0f} s + VACUUM ANALYZE {built['build_vacuum_s']:.0f} s")
        for i in range(max(args.repeat, args.purge_repeat)):
            figures = dict(built)
            if i < args.repeat:
                one, explain = phase1(args, big, empty, history, i,
                                      lambda w, i=i: say(f"phase 1 run {i + 1}: {w}"))
                figures.update(one)
                explains.setdefault("claim", explain)
            if i < args.purge_repeat:
                if "purge" not in explains:
                    explains["purge"] = scale_data.explain_purge_pick(
                        big, utc_now() - dt.timedelta(days=30), 1000)
                two, waits[i] = phase2(args, big, history,
                                       lambda w, i=i: say(f"phase 2 run {i + 1}: {w}"))
                figures.update(two)
            if i < args.control:
                # Is the drop during the purge the purge's, or the windows' (a queue table
                # slows as dead index entries pile up, and autovacuum is off here)?
                control, _ = phase2(args, big, history,
                                    lambda w, i=i: say(f"control run {i + 1}: {w}"),
                                    control_s=figures.get("purge_s", 120.0))
                figures.update({f"ctl_{k}": control[k] for k in CONTROL_KEYS})
            runs.append(figures)
        index_names = sorted(k.removeprefix("size_") for k in built
                             if k.startswith("size_") and k not in ("size_heap", "size_total"))
        big.dispose()
        empty.dispose()
    except KeyboardInterrupt:
        print("interrupted: the child processes were stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            for url in urls:
                scale_data.drop(url)
    text, missed = render(table_rows(args, index_names), runs)
    print("\n".join(header))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at the end {load}; whole command {time.monotonic() - started:.0f} s")
    print(f"phase 1: {args.repeat} run(s), phase 2: {args.purge_repeat} run(s); medians, and "
          "'each run' lists every run's figure in order")
    print(text)
    print("targets missed: " + (", ".join(missed) if missed else "none"))
    for i, lines in waits.items():
        print(f"\nphase 2 run {i + 1}: waits of the claimers' sessions seen "
              f"(20 ms samples, {args.window:g} s before the purge to the end): "
              + ("none" if not lines else ""))
        print("\n".join(lines))
    print("\nEXPLAIN (ANALYZE, BUFFERS) of the claim in (b), run 1 (rolled back):")
    print(explains.get("claim", "(not run)"))
    print("\nEXPLAIN (ANALYZE, BUFFERS) of the purge's first 'pick 1000 ids' (run 1):")
    print(explains.get("purge", "(not run)"))
    if args.json:
        print(json.dumps({"command": command_line(argv), "header": header, "runs": runs,
                          "medians": {k: statistics.median(r[k] for r in runs if k in r)
                                      for k in runs[0]}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
