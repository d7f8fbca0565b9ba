"""Idle commit -> delivered latency for rows inserted with plain SQL on PostgreSQL.

What a PHP or psql order system sees: it sends no wake-up message, so without migration 0004's
trigger and the workers' LISTEN its row would wait for the next sweep. The sweep interval is
set to 60 s here, so a row delivered in milliseconds can only have been woken by the
notification. Single rows, one per transaction, a pause apart, into an idle worker (its
sweeper and LISTEN inside) and the fake Spotler API on loopback; commit time is taken when
COMMIT returns, delivered time is the row's delivered_at (the worker's clock: the same machine).

    .venv/bin/python -m benchmarks.plain_sql_latency [--orders 50] [--pause-ms 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from spotler_outbox import migrations
from spotler_outbox.models.database import make_engine
from spotler_outbox.worker.fake_spotler.server import start_fake_api

ACCOUNT, API_KEY = "bench-account", "bench-key"
INSERT = ("INSERT INTO outbox_events (event, orderid, payload) VALUES ('Purchase', %s, %s) "
          "ON CONFLICT (account, event, orderid) DO NOTHING")
ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/"
                   "spotler_outbox_bench_plain_sql")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--orders", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--pause-ms", type=float, default=200.0)
    p.add_argument("--pool", default="threads", choices=["threads", "prefork"])
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args()


def prepare_database(url: str) -> None:
    parsed = make_url(url)
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                            {"n": parsed.database}).first():
            conn.execute(sa.text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()
    migrations.upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM delivery_attempt_events"))
        conn.execute(sa.text("DELETE FROM delivery_attempts"))
        conn.execute(sa.text("DELETE FROM outbox_events"))
    engine.dispose()


def start_worker(env: dict[str, str], pool: str, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "spotler_outbox.worker", "worker",
               "--loglevel=INFO", f"--pool={pool}", "--concurrency=2", "--without-mingle",
               "--without-gossip"]
    worker = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                              cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 60
    while "listening for new outbox rows" not in log.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start listening:\n{log.read_text()}")
        time.sleep(0.1)
    return worker


def connect(url: str) -> psycopg.Connection[Any]:
    engine = sa.create_engine(url)
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    engine.dispose()
    return psycopg.connect(*args, **kwargs)


def measure(url: str, orders: int, warmup: int, pause: float) -> list[float]:
    commits: dict[str, float] = {}
    with connect(url) as conn:
        for n in range(warmup + orders):
            orderid = f"plain-{n}"
            payload = json.dumps({"event": "Purchase", "email": f"buyer{n}@example.com",
                                  "orderid": orderid, "products": [{"id": "SKU-1",
                                                                    "quantity": 1}]})
            with conn.transaction():
                conn.execute(INSERT, (orderid, payload))
            if n >= warmup:
                commits[orderid] = time.time()
            time.sleep(pause)
        deadline = time.monotonic() + 60
        while True:
            rows = dict(conn.execute("SELECT orderid, delivered_at FROM outbox_events "
                                     "WHERE status = 'delivered'").fetchall())
            conn.commit()
            if all(o in rows for o in commits) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    missing = [o for o in commits if o not in rows]
    if missing:
        raise SystemExit(f"{len(missing)} rows not delivered within 60 s: {missing[:5]}")
    return sorted((rows[o].timestamp() - t) * 1000 for o, t in commits.items())


def main() -> None:
    args = parse_args()
    prepare_database(args.database_url)
    redis.Redis.from_url(args.redis_url).flushdb()
    with start_fake_api(account=ACCOUNT, api_key=API_KEY) as api, \
            tempfile.TemporaryDirectory(prefix="plain-sql-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "SPOTLER_"))}
        env.update({"OUTBOX_DATABASE_URL": args.database_url, "OUTBOX_BROKER_URL": args.redis_url,
                    "SPOTLER_API_URL": api.url, "SPOTLER_ACCOUNT": ACCOUNT,
                    "SPOTLER_API_KEY": API_KEY, "OUTBOX_SWEEP_INTERVAL_SECONDS": "60"})
        worker = start_worker(env, args.pool, Path(tmp) / "worker.log")
        try:
            time.sleep(2.0)  # the start-up sweep is over; the next is a minute away
            latency = measure(args.database_url, args.orders, args.warmup,
                              args.pause_ms / 1000)
        finally:
            worker.terminate()
            worker.wait(30)
    figures = {
        "orders": len(latency), "pool": args.pool, "sweep_interval_s": 60,
        "p50_ms": round(statistics.median(latency), 1),
        "p95_ms": round(latency[int(0.95 * (len(latency) - 1))], 1),
        "max_ms": round(latency[-1], 1),
    }
    print(f"plain-SQL insert on PostgreSQL, idle worker ({args.pool}), sweep every 60 s: "
          f"commit -> delivered p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, "
          f"max {figures['max_ms']} ms over {len(latency)} orders")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
