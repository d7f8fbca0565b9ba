"""`./dev bench`: the worker on real PostgreSQL, MariaDB, Redis and Celery processes.

One run measures, against a fake Spotler API in its own process:
  1. drains, on PostgreSQL and on MariaDB, at batch 100 and at batch 1: pending rows committed
     before the worker (prefork, 2 children; its sweeper finds them) is told they are due; events/s
     from the first request to the last delivered_at, and CPU time per delivered event of each
     process tree (worker, database server work for this database, fake API) read from /proc,
     start-up excluded; beside it the database's own limit (claim + mark alone, 2 processes);
  2. the same drain with 50 ms of API latency per request, against its bound: two slots each
     waiting on one request of 100 events at a time carry at most 2 x 100 / 0.05 s;
  3. memory of the default pools: prefork with Celery's default concurrency (what README's
     `celery -A spotler_outbox.worker worker` starts here) and compose's threads, 4;
  4. end to end on PostgreSQL: orders enqueued in transactions of 100 while the worker runs
     (commit -> delivered latency), and single orders into an idle worker.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from benchmarks import claimers, db
from benchmarks.procs import (
    CHILD_ENV,
    CpuMeter,
    Managed,
    MemorySampler,
    ProcessError,
    fake_received,
    process_tree,
    py_spy,
    start_fake_api,
    start_worker,
    stop_all,
    tree,
)
from benchmarks.report import Row, at_least, at_most, percentile, render
from spotler_outbox.models.enqueue import enqueue_purchase
from spotler_outbox.models.settings import Settings

ACCOUNT, API_KEY = "bench-account", "bench-key-not-a-secret"
LATENCY_MS = 50.0
SLOTS = 2
BACKENDS = {"pg": ("PostgreSQL", db.POSTGRES_URL), "maria": ("MariaDB", db.MARIADB_URL)}


@dataclass
class Bench:
    engine: Engine
    broker_url: str
    log_dir: Path
    starts: int = 0

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=False)

    def env(self, api_url: str, batch: int) -> dict[str, str]:
        return {**CHILD_ENV, "OUTBOX_DATABASE_URL": self.url, "OUTBOX_BROKER_URL": self.broker_url,
                "SPOTLER_API_URL": api_url, "SPOTLER_ACCOUNT": ACCOUNT,
                "SPOTLER_API_KEY": API_KEY, "SPOTLER_BATCH_SIZE": str(batch),
                # Short sweeps and backoff: nothing in a run may sit waiting on a timer.
                "OUTBOX_SWEEP_INTERVAL_SECONDS": "1", "OUTBOX_BACKOFF_BASE_SECONDS": "0.5",
                "OUTBOX_BACKOFF_CAP_SECONDS": "2"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./dev bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20000, help="rows per drain at batch 100")
    p.add_argument("--rows-one", type=int, default=2000, help="rows per drain at batch 1")
    p.add_argument("--orders", type=int, default=10000, help="orders end to end")
    p.add_argument("--backends", default="pg,maria", help="comma-separated: pg, maria")
    p.add_argument("--skip", default="", help="comma-separated phases to skip: "
                   "raw, one, latency, memory, e2e")
    p.add_argument("--runs", type=int, default=1,
                   help="repeat the whole measurement; the table shows medians and each run")
    p.add_argument("--json", action="store_true", help="also print every figure as JSON")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy on the pool children during the drains at batch 100 (collapsed "
                        "stacks in DIR/<backend>; their CPU then counts py-spy's pauses too)")
    p.add_argument("--broker-url", default=os.environ.get("BENCH_BROKER_URL",
                                                          "redis://127.0.0.1:6379/14"))
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if min(args.rows, args.rows_one, args.orders) < 100:
        p.error("--rows, --rows-one and --orders must be at least 100")
    return args


def flush(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    client.flushdb()  # stale wake-ups from an earlier phase would be noise
    client.close()


def wait_delivered(bench: Bench, worker: Managed, expected: int, conn: sa.Connection,
                   server: db.ServerWork | None = None) -> None:
    deadline = time.monotonic() + 120 + expected / 10
    # Polled on the due index, ten times a second: a count(*) of the whole table each time
    # took half a core at 80,000 rows, away from the processes being measured.
    unfinished = sa.text("SELECT count(*) FROM (SELECT 1 FROM outbox_events "
                         "WHERE status IN ('pending', 'in_flight') LIMIT 1) AS t")
    count = sa.text("SELECT count(*) FROM outbox_events WHERE status = 'delivered'")
    while time.monotonic() < deadline:
        if server is not None:
            server.note(conn)
        if (not conn.execute(unfinished).scalar_one()
                and conn.execute(count).scalar_one() >= expected):
            return
        worker.check_alive()
        time.sleep(0.1)
    raise ProcessError(f"not all {expected} delivered: {db.statuses(bench.engine)}; "
                       f"worker log {worker.log_path}")


@contextmanager
def running_worker(bench: Bench, api_url: str, batch: int, pool: str = "prefork",
                   concurrency: int | None = SLOTS) -> Iterator[Managed]:
    """A worker (its sweeper timer inside, as in production), warmed up (every slot's
    connections open), on an empty outbox."""
    flush(bench.broker_url)
    db.wipe(bench.engine)
    bench.starts += 1
    env = bench.env(api_url, batch)
    name = f"worker{bench.starts}-{pool}-b{batch}"
    with ExitStack() as stack:
        worker = start_worker(env, bench.log_dir, name, pool=pool, concurrency=concurrency)
        stack.callback(worker.stop)
        db.insert_pending(bench.engine, 50 * SLOTS * 2)
        with bench.engine.connect() as conn:
            wait_delivered(bench, worker, 50 * SLOTS * 2, conn)
        time.sleep(0.5)
        db.wipe(bench.engine)
        yield worker


def drain(bench: Bench, worker: Managed, api: tuple[Managed, str], rows: int,
          profile: Path | None = None) -> dict[str, float]:
    """`rows` pending rows, made due at once after the meter starts; CPU per event and rate.

    They are inserted due in an hour, then made due by one UPDATE from this process's own
    session, whose server time is left out of the database's figure, as is its polling.
    """
    db.insert_pending(bench.engine, rows, due_in=3600)
    received = fake_received(api[1])
    with (bench.engine.connect() as conn, MemorySampler(worker.pid) as memory,
          py_spy(tree(worker.pid)[1:] or [worker.pid], profile)):
        server = db.ServerWork(bench.engine, db.own_session_id(conn))
        meter = CpuMeter({"worker": process_tree(worker.pid), "api": process_tree(api[0].pid),
                          "db": server.sessions, "db_bg": server.background})
        meter.start()
        conn.execute(sa.text("UPDATE outbox_events SET next_attempt_at = created_at"))
        conn.commit()
        wait_delivered(bench, worker, rows, conn, server)
        meter.stop()
    first, last, requests = db.drain_span(bench.engine)
    out = {"eps": rows / (last - first), "requests": requests,
           "extra": fake_received(api[1]) - received - rows,
           "rss": memory.peak_rss_kb / 1024, "pss": memory.peak_pss_kb / 1024}
    for group in ("worker", "db", "db_bg", "api", "machine"):
        out[f"us_{group}"] = meter.used[group] / rows * 1e6
    out["us_dbsum"] = out["us_db"] + out["us_db_bg"]
    out["us_other"] = out["us_machine"] - sum(
        out[f"us_{g}"] for g in ("worker", "db", "db_bg", "api"))
    db.wipe(bench.engine)
    return out


def run_e2e(bench: Bench, worker: Managed, orders: int, tx_size: int = 100) -> dict[str, float]:
    """Orders enqueued in transactions of `tx_size` while the worker runs (wake-ups on)."""
    settings = Settings(database_url=bench.url, broker_url=bench.broker_url, wakeup_enabled=True)
    sessions = sessionmaker(bench.engine)
    commits: list[float] = []
    for tx in range(math.ceil(orders / tx_size)):
        with sessions.begin() as session:
            for n in range(tx * tx_size, min(orders, (tx + 1) * tx_size)):
                enqueue_purchase(session, db.purchase(f"e2e-{n}", n), settings=settings)
        commits.append(time.time())
    with bench.engine.connect() as conn:
        wait_delivered(bench, worker, orders, conn)
    done = db.delivered_times(bench.engine)
    lat = sorted((done[f"e2e-{n}"] - commits[n // tx_size]) * 1000 for n in range(orders))
    seconds = max(done.values()) - commits[0]
    db.wipe(bench.engine)
    idle: list[float] = []
    time.sleep(1.0)  # the worker must be idle
    for n in range(30):
        with sessions.begin() as session:
            enqueue_purchase(session, db.purchase(f"idle-{n}", n), settings=settings)
        t0 = time.time()
        with bench.engine.connect() as conn:
            wait_delivered(bench, worker, n + 1, conn)
        idle.append((db.delivered_times(bench.engine)[f"idle-{n}"] - t0) * 1000)
        time.sleep(0.2)
    idle.sort()
    return {"e2e": orders / seconds, "lat_p50": percentile(lat, 50),
            "lat_p95": percentile(lat, 95), "lat_p99": percentile(lat, 99),
            "idle_p50": percentile(idle, 50), "idle_max": idle[-1]}


def measure(args: argparse.Namespace, log_dir: Path, say: Callable[[str], None]
            ) -> tuple[dict[str, float], list[str]]:
    figures: dict[str, float] = {}
    skip = set(args.skip.split(","))
    with ExitStack() as stack:
        apis = {}
        for name, latency in (("fast", 0.0), ("slow", LATENCY_MS)):
            proc, url = start_fake_api(log_dir, f"fake-api-{name}", account=ACCOUNT,
                                       api_key=API_KEY, latency_ms=latency)
            stack.callback(proc.stop)
            apis[name] = (proc, url)
        header = [f"machine: nproc {os.cpu_count()}; Python {platform.python_version()}; "
                  f"load average at start {', '.join(f'{x:.2f}' for x in os.getloadavg())}"]
        for key in args.backends.split(","):
            label, url = BACKENDS[key]
            say(f"{label}: creating {url.split('/')[-1].split('?')[0]}")
            bench = Bench(db.prepare(url), args.broker_url, log_dir)
            stack.callback(db.drop, url)
            stack.callback(bench.engine.dispose)
            header.append(f"{label}: {db.server_version(bench.engine)}")
            if "raw" not in skip:
                say(f"{label}: claim + mark alone, {args.rows} rows")
                db.insert_pending(bench.engine, args.rows)
                figures[f"{key}_raw"] = claimers.drain_rate(bench.url, batch=100)
            sizes = [(100, args.rows)] + ([] if "one" in skip else [(1, args.rows_one)])
            for batch, rows in sizes:
                with running_worker(bench, apis["fast"][1], batch) as worker:
                    say(f"{label}: drain at batch {batch}, {rows} rows")
                    spy = args.profile / key if args.profile and batch == 100 else None
                    for k, v in drain(bench, worker, apis["fast"], rows, spy).items():
                        figures[f"{key}_b{batch}_{k}"] = v
                    if key == "pg" and batch == 100 and "e2e" not in skip:
                        say(f"{label}: end to end, {args.orders} orders; idle latency")
                        figures.update(run_e2e(bench, worker, args.orders))
            if key != "pg":
                continue
            if "latency" not in skip:
                with running_worker(bench, apis["slow"][1], 100) as worker:
                    say(f"{label}: drain at batch 100, {LATENCY_MS:g} ms per request")
                    slow = drain(bench, worker, apis["slow"], args.rows)
                figures.update({f"slow_{k}": v for k, v in slow.items()})
                figures["slow_bound"] = SLOTS * 100 / (LATENCY_MS / 1000)
                figures["slow_frac"] = slow["eps"] / figures["slow_bound"] * 100
            if "memory" not in skip:
                for pool, conc in (("prefork", None), ("threads", 4)):
                    with running_worker(bench, apis["fast"][1], 100, pool, conc) as worker:
                        say(f"{label}: memory of {pool}, concurrency {conc or 'default'}")
                        got = drain(bench, worker, apis["fast"], args.rows)
                    figures.update({f"mem_{pool}_{k}": got[k] for k in ("rss", "pss")})
                    figures[f"mem_{pool}_eps"], figures[f"mem_{pool}_us"] = (
                        got["eps"], got["us_worker"])
    header.append(f"load average at the end {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return figures, header


def table_rows() -> list[Row | str]:
    us, ms = "{:,.0f}", "{:,.1f}"
    rows: list[Row | str] = []
    for key, (label, _) in BACKENDS.items():
        rows.append(f"{label}: drains of pending rows, prefork 2 children")
        for b in (100, 1):
            p = f"{key}_b{b}_"
            rows += [Row(f"batch {b}: delivered events/s", p + "eps"),
                     Row(f"batch {b}: CPU per event, worker (main + children), us", p + "us_worker",
                         us, at_most(60, "<= 60 us") if (key, b) == ("pg", 100) else None),
                     Row(f"batch {b}: CPU per event, database sessions of this database, us",
                         p + "us_db", us),
                     Row(f"batch {b}: CPU per event, database server background (shared), us",
                         p + "us_db_bg", us),
                     Row(f"batch {b}: CPU per event, database server (both), us", p + "us_dbsum",
                         us, at_most(80, "<= 80 us") if (key, b) == ("pg", 100) else None),
                     Row(f"batch {b}: CPU per event, fake API, us", p + "us_api", us),
                     Row(f"batch {b}: CPU per event, anything else on the machine (other "
                         "sessions' tests too), us",
                         p + "us_other", us),
                     Row(f"batch {b}: HTTP requests", p + "requests"),
                     Row(f"batch {b}: events received - rows (duplicates)", p + "extra", us,
                         at_most(0, "= 0"))]
        rows.append(Row("database limit, claim + mark alone, 2 processes, batch 100, rows/s",
                        f"{key}_raw"))
    return [
        *rows,
        f"PostgreSQL, batch 100, {LATENCY_MS:g} ms per request",
        Row("delivered events/s", "slow_eps"),
        Row(f"bound: {SLOTS} slots x 100 events / {LATENCY_MS / 1000:g} s", "slow_bound"),
        Row("share of the bound", "slow_frac", "{:.0f}%", at_least(80, ">= 80%")),
        Row("CPU per event, worker, us", "slow_us_worker", us),
        "memory, peak during a drain at batch 100 (worker main + pool)",
        Row("prefork, Celery's default concurrency: RSS, MB", "mem_prefork_rss", ms),
        Row("prefork: PSS, MB", "mem_prefork_pss", ms),
        Row("threads, 4 (compose): RSS, MB", "mem_threads_rss", ms, at_most(150, "<= 150 MB")),
        Row("threads, 4: PSS, MB", "mem_threads_pss", ms),
        Row("threads, 4: events/s", "mem_threads_eps"),
        Row("threads, 4: worker CPU per event, us", "mem_threads_us", us),
        "PostgreSQL end to end, batch 100",
        Row("orders enqueued in transactions of 100: delivered events/s", "e2e"),
        Row("commit -> delivered p50, ms", "lat_p50", ms),
        Row("commit -> delivered p95, ms", "lat_p95", ms),
        Row("commit -> delivered p99, ms", "lat_p99", ms),
        Row("idle worker, single orders 200 ms apart: commit -> delivered p50, ms", "idle_p50",
            ms, at_most(100, "<= 100 ms")),
        Row("idle worker: max, ms", "idle_max", ms),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # SIGTERM takes Ctrl-C's way out, so every child is stopped either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log_dir = Path(tempfile.mkdtemp(prefix="spotler-bench-"))
    started = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {what}", file=sys.stderr, flush=True)

    runs: list[dict[str, float]] = []
    try:
        for run in range(args.runs):
            if args.runs > 1:
                say(f"run {run + 1} of {args.runs}")
            figures, header = measure(args, log_dir, say)
            runs.append(figures)
    except KeyboardInterrupt:
        print(f"interrupted: every process started was stopped; logs in {log_dir}",
              file=sys.stderr)
        return 130
    except ProcessError as e:
        print(f"benchmark failed: {e}\nlogs in {log_dir}", file=sys.stderr)
        return 1
    finally:
        stop_all()
        flush(args.broker_url)
    text, missed = render(table_rows(), runs)
    print("\n".join(header))
    print(text)
    print("targets missed: " + (", ".join(missed) if missed else "none"))
    if args.json:
        print(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
