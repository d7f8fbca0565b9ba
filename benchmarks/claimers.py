"""The database's own limit: the worker's claim and mark statements alone, no HTTP, no Celery.

Claimer processes (as many as the worker's pool slots) claim with models.claims.claim_due and
mark with mark_delivered, each in its own transaction as the worker does, recording every
iteration so throughput can be cut into windows and each claim's time looked at. For the scale
benchmark, a feeder keeps rows pending, a purger runs `spotler-outbox purge`'s function and a
lock watcher samples pg_stat_activity. Timestamps are time.monotonic(), one clock for every
process on Linux.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import threading
import time
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from benchmarks import db
from spotler_outbox.models import claims
from spotler_outbox.models import operations as ops
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.database import make_engine

# spawn, not fork: a child must not inherit the parent's pooled connections.
CTX = mp.get_context("spawn")


@dataclass
class Samples:
    """Every claimer's iterations, as parallel arrays (tens of thousands of them per run)."""

    claim_at: array[float] = field(default_factory=lambda: array("d"))  # claim statement start
    claim_s: array[float] = field(default_factory=lambda: array("d"))  # the claim statement
    settled_at: array[float] = field(default_factory=lambda: array("d"))  # mark committed
    rows: array[int] = field(default_factory=lambda: array("l"))
    started: float = float("inf")
    ended: float = 0.0

    def extend(self, other: Samples) -> None:
        for name in ("claim_at", "claim_s", "settled_at", "rows"):
            getattr(self, name).extend(getattr(other, name))
        self.started, self.ended = min(self.started, other.started), max(self.ended, other.ended)

    @property
    def per_second(self) -> float:
        return sum(self.rows) / (self.ended - self.started)


def _claimer(url: str, batch: int, drain: bool, ready: Any, start: Any, stop: Any,
             out: Any) -> None:
    engine = make_engine(url, pool_pre_ping=False)  # as the worker's engine
    with engine.connect() as conn:  # connected before the clock starts, as a warm worker is
        ready.put(("claimer", db.own_session_id(conn)))  # the pool hands this one back
    start.wait()
    s = Samples(started=time.monotonic())
    while not stop.is_set():
        now, token = utc_now(), uuid.uuid4().hex
        with engine.begin() as conn:
            t1 = time.monotonic()
            rows = claims.claim_due(conn, limit=batch, token=token, now=now,
                                   lease_until=now + dt.timedelta(seconds=120))
            t2 = time.monotonic()
        if not rows:
            if drain:
                break
            time.sleep(0.005)  # the feeder fell behind: wait for it
            continue
        with engine.begin() as conn:
            done = claims.mark_delivered(conn, [r.id for r in rows], token=token,
                                        now=utc_now(), http_status=200)
        s.claim_at.append(t1)
        s.claim_s.append(t2 - t1)
        s.settled_at.append(time.monotonic())
        s.rows.append(done)
    s.ended = time.monotonic()
    out.put(s)
    engine.dispose()


def _feeder(url: str, low: int, ready: Any, start: Any, stop: Any, out: Any) -> None:
    """Keep at least `low` rows pending, `low` at a time, for as long as the claimers run."""
    engine = make_engine(url, pool_pre_ping=False)
    made = 0
    # Bounded count: reads at most `low` entries of the due index, never the whole table.
    probe = sa.text("SELECT count(*) FROM (SELECT 1 FROM outbox_events "
                    "WHERE status = 'pending' LIMIT :low) AS p")
    while not stop.is_set():
        with engine.connect() as conn:
            pending = int(conn.execute(probe, {"low": low}).scalar_one())
            if pending >= low and not start.is_set():
                ready.put(("feeder", db.own_session_id(conn)))  # filled before the start
                start.wait()
        if pending < low:
            db.insert_pending(engine, low, prefix="live-", offset=made, by_server=True)
            made += low
        else:
            time.sleep(0.01)
    out.put(made)
    engine.dispose()


class Load:
    """`processes` claimers (and, unless draining, a feeder) running until stopped."""

    def __init__(self, url: str, *, batch: int, processes: int = 2, feed_low: int = 0) -> None:
        self.ready, self.start_event, self.stop_event = CTX.Queue(), CTX.Event(), CTX.Event()
        self.out, self.fed = CTX.Queue(), CTX.Queue()
        drain = not feed_low
        self.procs = [CTX.Process(target=_claimer, daemon=True, args=(
            url, batch, drain, self.ready, self.start_event, self.stop_event, self.out))
            for _ in range(processes)]
        if not drain:
            self.procs.append(CTX.Process(target=_feeder, daemon=True, args=(
                url, feed_low, self.ready, self.start_event, self.stop_event, self.fed)))
        self.claimers, self.feeding = processes, not drain
        self.sessions: dict[int, str] = {}  # server pid / thread id -> claimer or feeder

    def __enter__(self) -> Load:
        for p in self.procs:
            p.start()
        for _ in self.procs:
            role, session = self.ready.get(timeout=300)
            self.sessions[int(session)] = str(role)
        self.start_event.set()
        return self

    def stop(self) -> tuple[Samples, int]:
        """Stop (or, draining, wait for the end): every claimer's samples, and rows fed."""
        if self.feeding:
            self.stop_event.set()
        merged = Samples()
        for _ in range(self.claimers):
            merged.extend(self.out.get(timeout=1800))
        return merged, int(self.fed.get(timeout=120)) if self.feeding else 0

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)


def drain_rate(url: str, *, batch: int, processes: int = 2) -> float:
    """Rows/s claimed + marked by `processes` draining the pending rows already there."""
    with Load(url, batch=batch, processes=processes) as load:
        samples, _ = load.stop()
    return samples.per_second


@dataclass(frozen=True)
class PurgeResult:
    rows: int
    started: float
    ended: float


def _purger(url: str, out: Any) -> None:
    """`spotler-outbox purge --delivered-before 30d`: models.operations.purge."""
    engine = make_engine(url)
    with engine.connect():
        pass
    t0 = time.monotonic()
    rows, _ = ops.purge(engine, delivered_before=utc_now() - dt.timedelta(days=30))
    out.put(PurgeResult(rows, t0, time.monotonic()))
    engine.dispose()


def run_purge(url: str) -> PurgeResult:
    out = CTX.Queue()
    proc = CTX.Process(target=_purger, args=(url, out), daemon=True)
    proc.start()
    try:
        result: PurgeResult = out.get(timeout=1800)
    finally:
        proc.join(10)
    return result


class LockWatcher(threading.Thread):
    """Every 20 ms, the claim or mark statements of this database waiting on a lock, and
    whether the purge (its UPDATE emptying rows, a DELETE of attempts, or its id pick) is among
    the sessions blocking them."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.halt = url, threading.Event()
        self.waits: list[tuple[float, bool]] = []  # (when, blocked by the purge)
        self.samples = 0

    def run(self) -> None:
        engine = make_engine(self.url, isolation_level="AUTOCOMMIT")
        query = sa.text(
            "SELECT (SELECT count(*) FROM pg_stat_activity b WHERE b.pid = ANY "
            " (pg_blocking_pids(a.pid)) AND (b.query LIKE 'DELETE FROM%' "
            "  OR b.query LIKE 'UPDATE outbox_events SET payload%' "
            "  OR b.query LIKE 'SELECT outbox_events.id%')) > 0 "
            "FROM pg_stat_activity a WHERE a.datname = current_database() "
            "AND a.pid <> pg_backend_pid() AND a.wait_event_type = 'Lock' "
            "AND a.query LIKE 'UPDATE outbox_events%'")
        with engine.connect() as conn:
            while not self.halt.is_set():
                at = time.monotonic()
                self.waits += [(at, bool(by_purge)) for by_purge in conn.execute(query).scalars()]
                self.samples += 1
                self.halt.wait(0.02)
        engine.dispose()
