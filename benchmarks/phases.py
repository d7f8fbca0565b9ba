"""The measured phases: the pipeline under load, the cost of an enqueue, latency when idle."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from benchmarks import db
from benchmarks.procs import (
    CpuMeter,
    Managed,
    MemorySampler,
    ProcessError,
    children,
    fake_received,
    pids_named,
    start_beat,
    start_worker,
)
from spotler_outbox.models import wakeup
from spotler_outbox.models.enqueue import enqueue_purchase
from spotler_outbox.models.settings import Settings

WORKER_CONCURRENCY = 2


@dataclass
class Bench:
    """What every phase needs: the database, the broker, the running fake API."""

    url: str
    engine: Engine
    broker_url: str
    api_url: str
    fake_pid: int
    account: str
    api_key: str
    log_dir: Path
    pool: str = "prefork"
    # The producer's settings, as an order system would pass them: wake-up on.
    settings: Settings = field(init=False)
    sessions: sessionmaker[Session] = field(init=False)
    starts: int = 0  # worker starts so far: names each worker log

    def __post_init__(self) -> None:
        self.settings = Settings(database_url=self.url, broker_url=self.broker_url,
                                 wakeup_enabled=True)
        self.sessions = sessionmaker(self.engine)

    def worker_env(self, batch_size: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "SPOTLER_"))}
        env.update({
            "OUTBOX_DATABASE_URL": self.url, "OUTBOX_BROKER_URL": self.broker_url,
            "SPOTLER_API_URL": self.api_url, "SPOTLER_ACCOUNT": self.account,
            "SPOTLER_API_KEY": self.api_key, "SPOTLER_BATCH_SIZE": str(batch_size),
            # Short sweeps and backoff: nothing in a run may sit waiting on a timer.
            "OUTBOX_SWEEP_INTERVAL_SECONDS": "1", "OUTBOX_BACKOFF_BASE_SECONDS": "0.5",
            "OUTBOX_BACKOFF_CAP_SECONDS": "2",
        })
        return env

    def flush_broker(self) -> None:
        client = redis.Redis.from_url(self.broker_url)
        client.flushdb()
        client.close()


def _enqueue_one(session: Session, bench: Bench, orderid: str, n: int) -> None:
    enqueue_purchase(session, db.purchase(orderid, n), settings=bench.settings)


def wait_delivered(bench: Bench, worker: Managed, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.delivered_count(bench.engine) >= expected:
            return
        worker.check_alive()
        time.sleep(0.05)
    raise ProcessError(f"only {db.delivered_count(bench.engine)} of {expected} delivered after "
                       f"{timeout:.0f} s (statuses {db.count_status(bench.engine)}); "
                       f"worker log: {worker.log_path}")


@contextmanager
def running_workers(bench: Bench, batch_size: int) -> Iterator[Managed]:
    """A worker (2 pool slots) and a separate beat, warmed up, on an empty outbox."""
    bench.flush_broker()  # stale wake-ups from an earlier phase would be noise
    db.wipe(bench.engine)
    bench.starts += 1
    env = bench.worker_env(batch_size)
    beat = start_beat(env, bench.log_dir, f"beat{bench.starts}")
    worker: Managed | None = None
    try:
        worker = start_worker(env, bench.log_dir, f"worker{bench.starts}-b{batch_size}",
                              WORKER_CONCURRENCY, bench.pool)
        _warm_up(bench, worker)
        yield worker
    finally:
        if worker is not None:
            worker.stop()
        beat.stop()


def _warm_up(bench: Bench, worker: Managed) -> None:
    """Open every pool child's connections and our wake-up thread's broker connection.

    Several small commits give both children a wake-up each; the first use of each path
    (Celery producer app, engine, HTTP session) is paid here, not in the first measurement.
    """
    for tx in range(4):
        with bench.sessions.begin() as session:
            for n in range(50):
                _enqueue_one(session, bench, f"warm-{tx}-{n}", n)
        time.sleep(0.3)
    wait_delivered(bench, worker, 200, 60)
    time.sleep(0.5)
    db.wipe(bench.engine)


def run_pipeline(bench: Bench, worker: Managed, *, orders: int, tx_size: int, tag: str,
                 profile_dir: Path | None = None) -> dict[str, Any]:
    """Enqueue `orders` while the worker runs; first commit to last delivered_at."""
    db.wipe(bench.engine)
    received_before = fake_received(bench.api_url)
    worker_pids = [worker.pid, *children(worker.pid)]
    meter = CpuMeter({"worker": worker_pids, "postgres": db.postgres_pids(bench.engine),
                      "fake_api": [bench.fake_pid], "producer": [os.getpid()],
                      "redis": pids_named("redis-server")})
    # Pool children do the work; with the threads pool the main process does.
    targets = worker_pids[1:] or worker_pids[:1]
    profilers = _start_profilers(targets, profile_dir) if profile_dir else []
    commits: list[float] = []
    with MemorySampler(worker.pid) as memory:
        meter.start()
        started = time.time()
        for tx in range(math.ceil(orders / tx_size)):
            with bench.sessions.begin() as session:
                for n in range(tx * tx_size, min(orders, (tx + 1) * tx_size)):
                    _enqueue_one(session, bench, f"{tag}-{n}", n)
            commits.append(time.time())
        # A guard only: batch 1 against a 50 ms API delivers about 40 events/s.
        wait_delivered(bench, worker, orders, timeout=120 + orders / 10)
        meter.stop()
    _stop_profilers(profilers)
    delivered = db.delivered_times(bench.engine)
    latencies = [delivered[f"{tag}-{n}"] - commits[n // tx_size] for n in range(orders)]
    seconds = max(delivered.values()) - commits[0]
    return {
        "orders": orders, "events_per_s": orders / seconds, "seconds": seconds,
        "enqueue_per_s": orders / (commits[-1] - started),
        "latency_ms": sorted(x * 1000 for x in latencies),
        "rss_mb": memory.peak_rss_kb / 1024, "pss_mb": memory.peak_pss_kb / 1024,
        "rss_mb_each": [round(kb / 1024, 1) for kb in memory.peak_rss_each_kb.values()],
        "cpu_s": meter.used, "wall_s": meter.wall,
        "received": fake_received(bench.api_url) - received_before,
        "requests": db.attempts_count(bench.engine),
    }


def run_drain(bench: Bench, worker: Managed, *, rows: int) -> dict[str, Any]:
    """The worker alone: `rows` already pending (committed at once, no wake-up message).

    Timed from the first request's start to the last delivered_at, so the up to one second
    until the sweep notices the rows is not counted: this is the worker's own throughput,
    with no producer competing for the two cores.
    """
    db.wipe(bench.engine)
    db.insert_pending(bench.engine, rows)
    wait_delivered(bench, worker, rows, timeout=120 + rows / 10)
    last = max(db.delivered_times(bench.engine).values())
    seconds = last - db.first_attempt_started(bench.engine)
    return {"rows": rows, "events_per_s": rows / seconds, "seconds": seconds}


def run_idle(bench: Bench, worker: Managed, *, count: int, pause: float) -> dict[str, Any]:
    """Single orders, one per transaction, `pause` apart, into an idle worker."""
    db.wipe(bench.engine)
    time.sleep(1.0)  # let the warm-up's last dispatch tasks end: the worker must be idle
    commits: dict[str, float] = {}
    for n in range(count):
        orderid = f"idle-{n}"
        with bench.sessions.begin() as session:
            session.execute(db.bench_orders.insert().values(db.order_row(orderid, n)))
            _enqueue_one(session, bench, orderid, n)
        commits[orderid] = time.time()
        time.sleep(pause)
    wait_delivered(bench, worker, count, timeout=60)
    delivered = db.delivered_times(bench.engine)
    return {"latency_ms": sorted((delivered[o] - t) * 1000 for o, t in commits.items())}


def run_enqueue_cost(bench: Bench, *, count: int, block: int = 50,
                     warmup: int = 50) -> dict[str, Any]:
    """One order per transaction, with and without enqueue_purchase, in alternating blocks.

    Blocks rather than strict alternation: the wake-up thread sends its broker message after
    the commit, and that CPU must land on the enqueue transactions, not on the plain ones
    that would otherwise follow each of them. No worker runs: its CPU would only add noise
    on two cores, and wake-ups simply queue in the (flushed) broker database.
    """
    db.wipe(bench.engine)
    bench.flush_broker()
    times: dict[bool, list[float]] = {False: [], True: []}
    n = 0
    while min(len(times[False]), len(times[True])) < count + warmup:
        for with_enqueue in (False, True):
            for _ in range(block):
                orderid = f"cost-{n}"
                t0 = time.perf_counter()
                with bench.sessions.begin() as session:
                    session.execute(db.bench_orders.insert().values(db.order_row(orderid, n)))
                    if with_enqueue:
                        _enqueue_one(session, bench, orderid, n)
                times[with_enqueue].append(time.perf_counter() - t0)
                n += 1
    waker = getattr(wakeup, "_wakers", {}).get(bench.broker_url)
    bench.flush_broker()
    return {
        "plain_ms": sorted(t * 1000 for t in times[False][warmup:]),
        "enqueue_ms": sorted(t * 1000 for t in times[True][warmup:]),
        "wakeups_sent": getattr(waker, "sent", None),
    }


def _start_profilers(pids: list[int], out_dir: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy on each pool child, collapsed stacks (text) for reading, idle frames dropped."""
    local = Path(sys.executable).parent / "py-spy"
    spy = str(local) if local.exists() else shutil.which("py-spy") or "py-spy"
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for pid in pids:
        procs.append(subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
             "--nonblocking", "-o", str(out_dir / f"worker-child-{pid}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # py-spy attaches in well under a second
    return procs


def _stop_profilers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
