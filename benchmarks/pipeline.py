"""`./dev bench`: the whole delivery pipeline on real PostgreSQL, Redis and Celery processes.

Each run measures, on one fake Spotler API process that lives for the whole command:
  1. end to end at the configured batch size: a prefork worker (2 children) and a separate
     beat run while N orders are enqueued in transactions of 100; throughput from the first
     commit to the last delivered_at, commit-to-delivered latency per order, worker memory;
  2. the same with SPOTLER_BATCH_SIZE=1 on N/5 orders (one event per request);
  3. the database's limit: claim + mark (and claim + attempt + mark) alone, 2 processes;
  4. the cost of enqueue_purchase inside a one-order transaction (wake-up on, no worker);
  5. idle latency: single orders, a pause apart, into an idle worker.
Figures are medians over --repeat runs; ratios are taken within each run, then the median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import celery
import redis
import sqlalchemy

from benchmarks import db
from benchmarks.phases import (
    Bench,
    run_drain,
    run_enqueue_cost,
    run_idle,
    run_pipeline,
    running_workers,
)
from benchmarks.procs import ProcessError, start_fake_api, stop_all
from benchmarks.rawdb import run_raw
from benchmarks.report import Row, Target, at_least, at_most, percentile, render

ACCOUNT = "bench-account"
API_KEY = "bench-key-not-a-secret"
TX_SIZE = 100


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=10000, help="orders per end-to-end run")
    p.add_argument("--repeat", type=int, default=3, help="runs; medians are reported")
    p.add_argument("--latency-ms", type=float, default=0.0, help="fake API latency per request")
    p.add_argument("--batch-size", type=int, default=100, help="SPOTLER_BATCH_SIZE (batched)")
    p.add_argument("--pool", choices=("prefork", "threads"), default="prefork",
                   help="worker pool, 2 slots either way (threads: for comparing memory)")
    p.add_argument("--idle-orders", type=int, default=30)
    p.add_argument("--idle-pause-ms", type=float, default=200.0)
    p.add_argument("--json", action="store_true", help="also print every raw figure as JSON")
    p.add_argument("--database-url", default=db.DEFAULT_URL,
                   help="PostgreSQL; dropped and created afresh, so its name must end in _bench")
    p.add_argument("--broker-url", default=os.environ.get("BENCH_BROKER_URL",
                                                          "redis://127.0.0.1:6379/14"))
    p.add_argument("--profile", metavar="DIR", type=Path,
                   help="after the runs, one extra run of each batch size with py-spy on each "
                        "pool child (collapsed stacks in DIR; not counted in the table)")
    p.add_argument("--keep-logs", action="store_true", help="keep the worker and API logs")
    args = p.parse_args(argv)
    if args.orders < 100 or args.repeat < 1:
        p.error("--orders must be at least 100 and --repeat at least 1")
    return args


def command_line(argv: list[str]) -> str:
    python = sys.executable
    if python.startswith(os.getcwd() + os.sep):
        python = os.path.relpath(python)
    return shlex.join([python, "-m", "benchmarks.pipeline", *argv])


def machine(bench: Bench) -> str:
    client = redis.Redis.from_url(bench.broker_url)
    redis_version = client.info("server").get("redis_version", "?")
    client.close()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"nproc {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable); "
            f"PostgreSQL {db.server_version(bench.engine)}; Redis {redis_version}; "
            f"Python {platform.python_version()}; Celery {celery.__version__}; "
            f"SQLAlchemy {sqlalchemy.__version__}; load average at start {load}")


def one_run(bench: Bench, args: argparse.Namespace, index: int,
            say: Any) -> tuple[dict[str, float], dict[str, Any]]:
    figures: dict[str, float] = {}
    details: dict[str, Any] = {}
    n, b = args.orders, args.batch_size
    for key, with_attempt in (("raw_cm", False), ("raw_cam", True)):
        say(f"raw database, {key}")
        db.wipe(bench.engine)
        db.insert_pending(bench.engine, n)
        raw = run_raw(bench.url, batch_size=b, with_attempt=with_attempt)
        figures[key] = raw.per_second
        details[key] = {"rows": raw.rows, "seconds": round(raw.seconds, 3)}

    say("enqueue cost")
    cost = run_enqueue_cost(bench, count=max(200, n // 10))
    figures["tx_plain_p50"] = percentile(cost["plain_ms"], 50)
    figures["tx_enqueue_p50"] = percentile(cost["enqueue_ms"], 50)
    figures["enqueue_added"] = figures["tx_enqueue_p50"] - figures["tx_plain_p50"]
    details["enqueue"] = {"transactions_each": len(cost["plain_ms"]),
                          "plain_p95_ms": percentile(cost["plain_ms"], 95),
                          "enqueue_p95_ms": percentile(cost["enqueue_ms"], 95),
                          "wakeups_sent_so_far": cost["wakeups_sent"]}

    with running_workers(bench, b) as worker:
        say(f"end to end, batch {b}, {n} orders")
        big = run_pipeline(bench, worker, orders=n, tx_size=TX_SIZE, tag=f"e2e{index}")
        say(f"worker drain, batch {b}, {n} pending rows")
        drain = run_drain(bench, worker, rows=n)
        say("idle latency")
        idle = run_idle(bench, worker, count=args.idle_orders, pause=args.idle_pause_ms / 1000)
    with running_workers(bench, 1) as worker:
        say(f"end to end, batch 1, {max(100, n // 5)} orders")
        one = run_pipeline(bench, worker, orders=max(100, n // 5), tx_size=TX_SIZE,
                           tag=f"one{index}")

    lat = big["latency_ms"]
    figures.update({
        "e2e": big["events_per_s"], "enqueue_rate": big["enqueue_per_s"],
        "lat_p50": percentile(lat, 50), "lat_p95": percentile(lat, 95),
        "lat_p99": percentile(lat, 99), "extra_received": big["received"] - n,
        "requests": big["requests"], "rss": big["rss_mb"], "pss": big["pss_mb"],
        "e2e_one": one["events_per_s"], "enqueue_rate_one": one["enqueue_per_s"],
        "extra_received_one": one["received"] - one["orders"],
        "idle_p50": percentile(idle["latency_ms"], 50),
        "idle_p95": percentile(idle["latency_ms"], 95), "idle_max": idle["latency_ms"][-1],
        "rss_one": one["rss_mb"],
    })
    figures["drain"] = drain["events_per_s"]
    figures["ratio_batch"] = figures["e2e"] / figures["e2e_one"]
    figures["ratio_drain"] = figures["drain"] / figures["e2e_one"]
    figures["frac_drain_cm"] = figures["drain"] / figures["raw_cm"] * 100
    figures["frac_cm"] = figures["e2e"] / figures["raw_cm"] * 100
    figures["frac_cam"] = figures["e2e"] / figures["raw_cam"] * 100
    for prefix, result in (("cores_", big), ("cores_one_", one)):
        used = result["cpu_s"]
        ours = sum(v for k, v in used.items() if k != "machine")
        for name, seconds in [*used.items(), ("other", used["machine"] - ours)]:
            figures[prefix + name] = seconds / result["wall_s"]
    details["e2e"] = {k: v for k, v in big.items() if k != "latency_ms"}
    details["e2e_one"] = {k: v for k, v in one.items() if k != "latency_ms"}
    details["e2e_one"]["latency_p50_ms"] = percentile(one["latency_ms"], 50)
    details["idle_latency_ms"] = [round(x, 1) for x in idle["latency_ms"]]
    return figures, details


def table_rows(args: argparse.Namespace) -> list[Row | str]:
    n, b = args.orders, args.batch_size
    one = max(100, n // 5)
    exact = Target("= 0", lambda v: v == 0)
    parts = (("worker (main + children)", "worker"),
             ("PostgreSQL (this database + server processes)", "postgres"),
             ("fake API", "fake_api"), ("producer (this process)", "producer"),
             ("Redis", "redis"), ("other processes (not this benchmark)", "other"),
             ("whole machine", "machine"))

    def cores(prefix: str) -> list[Row | str]:
        return ["   CPU used during the run, cores (of 2)",
                *(Row(f"  {name}", f"{prefix}{key}", "{:.2f}") for name, key in parts)]

    return [
        f"1. end to end, batch {b}: {n} orders enqueued in transactions of {TX_SIZE}",
        Row("delivered events/s (first commit -> last delivered_at)", "e2e"),
        Row("producer enqueue rate, orders/s (same run)", "enqueue_rate"),
        Row("commit -> delivered p50, ms", "lat_p50", "{:,.1f}"),
        Row("commit -> delivered p95, ms", "lat_p95", "{:,.1f}"),
        Row("commit -> delivered p99, ms", "lat_p99", "{:,.1f}"),
        Row("HTTP requests (delivery_attempts rows)", "requests"),
        Row("events received by the fake API - orders", "extra_received", "{:,.0f}", exact),
        Row("worker RSS peak, main + pool children, MB", "rss", "{:,.1f}",
            at_most(150, "<= 150 MB")),
        Row("worker PSS peak (shared pages split), MB", "pss", "{:,.1f}"),
        *cores("cores_"),
        f"   for comparison: the worker alone, batch {b}, draining {n} rows already pending",
        Row("delivered events/s (first request -> last delivered_at)", "drain"),
        f"2. end to end, batch 1: {one} orders",
        Row("delivered events/s", "e2e_one"),
        Row("producer enqueue rate, orders/s (same run)", "enqueue_rate_one"),
        Row("events received by the fake API - orders", "extra_received_one", "{:,.0f}", exact),
        *cores("cores_one_"),
        Row(f"batch {b} / batch 1 throughput (end to end)", "ratio_batch", "{:.1f}x",
            at_least(20, ">= 20x")),
        Row(f"batch {b} worker drain / batch 1 end to end", "ratio_drain", "{:.1f}x"),
        f"3. database limit at batch {b}, 2 processes, {n} pending rows, no HTTP/Celery",
        Row("claim + mark delivered, rows/s", "raw_cm"),
        Row("claim + record attempt + mark delivered, rows/s", "raw_cam"),
        Row("end to end as % of claim + mark", "frac_cm", "{:.0f}%", at_least(40, ">= 40%")),
        Row("end to end as % of claim + attempt + mark", "frac_cam", "{:.0f}%"),
        Row(f"worker drain (batch {b}) as % of claim + mark", "frac_drain_cm", "{:.0f}%"),
        "4. order transaction, one order each (insert into bench_orders, commit)",
        Row("p50 without enqueue, ms", "tx_plain_p50", "{:.3f}"),
        Row("p50 with enqueue_purchase (wake-up on), ms", "tx_enqueue_p50", "{:.3f}"),
        Row("enqueue adds (p50 difference), ms", "enqueue_added", "{:.3f}",
            at_most(1.0, "<= 1 ms")),
        f"5. idle worker: {args.idle_orders} single orders, {args.idle_pause_ms:g} ms apart",
        Row("commit -> delivered p50, ms", "idle_p50", "{:,.1f}", at_most(100, "<= 100 ms")),
        Row("commit -> delivered p95, ms", "idle_p95", "{:,.1f}"),
        Row("commit -> delivered max, ms", "idle_max", "{:,.1f}"),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # SIGTERM takes the same way out as Ctrl-C, so every child is stopped either way; SIGINT
    # is set too, as a shell starting us in the background would have it ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log_dir = Path(tempfile.mkdtemp(prefix="spotler-bench-"))
    started = time.monotonic()
    ok = False

    def say(what: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {what}", file=sys.stderr, flush=True)

    n_one = args.orders // 5
    runs: list[dict[str, float]] = []
    details: list[dict[str, Any]] = []
    try:
        with ExitStack() as stack:
            engine = db.prepare(args.database_url)
            stack.callback(engine.dispose)
            fake, api_url = start_fake_api(log_dir, account=ACCOUNT, api_key=API_KEY,
                                           latency_ms=args.latency_ms)
            stack.callback(fake.stop)
            bench = Bench(url=args.database_url, engine=engine, broker_url=args.broker_url,
                          api_url=api_url, fake_pid=fake.pid, account=ACCOUNT, api_key=API_KEY,
                          log_dir=log_dir, pool=args.pool)
            header = [f"command: {command_line(argv)}", f"machine: {machine(bench)}",
                      f"fake API: separate process, latency {args.latency_ms:g} ms per request;"
                      f" worker: celery {args.pool} -c 2, separate beat, sweep 1 s, batch size "
                      f"{args.batch_size}"]
            for i in range(args.repeat):
                def run_say(what: str, i: int = i) -> None:
                    say(f"run {i + 1}/{args.repeat}: {what}")
                figures, detail = one_run(bench, args, i, run_say)
                runs.append(figures)
                details.append(detail)
            if args.profile:
                for size, orders in ((args.batch_size, args.orders), (1, max(100, n_one))):
                    say(f"profiled run (py-spy), batch {size} -> {args.profile / f'b{size}'}")
                    with running_workers(bench, size) as worker:
                        run_pipeline(bench, worker, orders=orders, tx_size=TX_SIZE,
                                     tag=f"profiled{size}", profile_dir=args.profile / f"b{size}")
            db.wipe(engine)
            bench.flush_broker()
        ok = True
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130
    except ProcessError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        stop_all()  # normally a no-op: each phase stops its own processes
        if ok and not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            print(f"logs kept in {log_dir}", file=sys.stderr)

    text, missed = render(table_rows(args), runs)
    print("\n".join(header))
    print(f"medians of {len(runs)} run(s); 'each run' lists every run's figure in order")
    print(text)
    print("targets missed: " + (", ".join(missed) if missed else "none"))
    if args.json:
        print(json.dumps({"command": command_line(argv), "header": header, "runs": runs,
                          "details": details,
                          "medians": {k: statistics.median(r[k] for r in runs)
                                      for k in runs[0]}}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
