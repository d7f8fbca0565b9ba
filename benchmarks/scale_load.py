"""The processes `benchmarks.scale` runs at once: claimers, a feeder, the purge, a lock watcher.

The claimers do what benchmarks/rawdb.py does (claim_due, then mark_delivered, each in its own
transaction, as Dispatcher.run_once does) but record every iteration, so throughput can be cut
into windows (before / during / after the purge) and each claim's latency looked at. All
timestamps are time.monotonic(), which on Linux is one clock for every process.
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

from benchmarks import scale_data
from spotler_outbox.models import claims
from spotler_outbox.models import operations as ops
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.database import make_engine
from spotler_outbox.worker.console.format import parse_cutoff

# spawn, not fork: a child must not inherit the parent's pooled connections.
CTX = mp.get_context("spawn")


@dataclass
class Samples:
    """One claimer's iterations, as parallel arrays (tens of thousands of them per run)."""

    claim_at: array[float] = field(default_factory=lambda: array("d"))  # claim statement start
    claim_s: array[float] = field(default_factory=lambda: array("d"))  # the claim statement
    claim_tx_s: array[float] = field(default_factory=lambda: array("d"))  # checkout .. commit
    mark_tx_s: array[float] = field(default_factory=lambda: array("d"))
    settled_at: array[float] = field(default_factory=lambda: array("d"))  # mark committed
    rows: array[int] = field(default_factory=lambda: array("l"))
    empty_claims: int = 0
    started: float = 0.0
    ended: float = 0.0

    def extend(self, other: Samples) -> None:
        for name in ("claim_at", "claim_s", "claim_tx_s", "mark_tx_s", "settled_at", "rows"):
            getattr(self, name).extend(getattr(other, name))
        self.empty_claims += other.empty_claims


def _claimer(url: str, batch: int, drain: bool, ready: Any, start: Any, stop: Any,
             out: Any) -> None:
    # No pre-ping: the worker's engine has none either (worker/tasks.py).
    engine = make_engine(url, pool_pre_ping=False)
    with engine.connect() as conn:  # connected before the clock starts, as a warm worker is
        # The pool hands this one connection back every time: its pid names our backend.
        ready.put(("claimer", conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()))
    start.wait()
    s = Samples(started=time.monotonic())
    while not stop.is_set():
        now = utc_now()
        token = uuid.uuid4().hex
        t0 = time.monotonic()
        with engine.begin() as conn:
            t1 = time.monotonic()
            rows = claims.claim_due(conn, limit=batch, token=token, now=now,
                                   lease_until=now + dt.timedelta(seconds=120))
            t2 = time.monotonic()
        t3 = time.monotonic()
        if not rows:
            if drain:
                break
            s.empty_claims += 1  # the feeder fell behind: wait for it, not counted as work
            time.sleep(0.005)
            continue
        with engine.begin() as conn:
            done = claims.mark_delivered(conn, [r.id for r in rows], token=token,
                                        now=utc_now(), http_status=200)
        t4 = time.monotonic()
        s.claim_at.append(t1)
        s.claim_s.append(t2 - t1)
        s.claim_tx_s.append(t3 - t0)
        s.mark_tx_s.append(t4 - t3)
        s.settled_at.append(t4)
        s.rows.append(done)
    s.ended = time.monotonic()
    out.put(s)
    engine.dispose()


def _feeder(url: str, low: int, chunk: int, ready: Any, start: Any, stop: Any,
            out: Any) -> None:
    """Keep at least `low` rows pending, `chunk` at a time, for as long as the claimers run."""
    engine = make_engine(url, pool_pre_ping=False)
    made = 0
    # Bounded count: reads at most `low` entries of the due index, never the whole table.
    probe = sa.text("SELECT count(*) FROM (SELECT 1 FROM outbox_events "
                    "WHERE status = 'pending' LIMIT :low) AS p")
    while not stop.is_set():
        with engine.connect() as conn:
            pending = int(conn.execute(probe, {"low": low}).scalar_one())
        if pending < low:
            scale_data.insert_pending(engine, chunk, "live-", offset=made)
            made += chunk
        elif not start.is_set():
            with engine.connect() as conn:  # filled before the claimers start
                ready.put(("feeder", conn.execute(sa.text("SELECT pg_backend_pid()"))
                           .scalar_one()))
            start.wait()
        else:
            time.sleep(0.01)
    out.put(made)
    engine.dispose()


@dataclass(frozen=True)
class PurgeResult:
    rows: int
    attempts: int
    started: float
    ended: float
    statements: dict[str, list[float]]  # kind -> durations in seconds, in order


def _purger(url: str, older_than: str, out: Any) -> None:
    """What `spotler-outbox purge --delivered-before 30d` does: the CLI's own cutoff parsing
    and models.operations.purge, with every statement timed."""
    engine = make_engine(url)
    statements: dict[str, list[float]] = {}
    began: list[float] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _before(*_: Any) -> None:
        began.append(time.monotonic())

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _after(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        kind = ("pick ids" if statement.startswith("SELECT outbox_events.id")
                else "delete links" if statement.startswith("DELETE FROM delivery_attempt_ev")
                else "delete rows" if statement.startswith("DELETE FROM outbox_events")
                else "other")
        statements.setdefault(kind, []).append(time.monotonic() - began.pop())

    with engine.connect():
        pass
    cutoff = parse_cutoff(older_than, utc_now())
    t0 = time.monotonic()
    rows, attempts = ops.purge(engine, delivered_before=cutoff)
    out.put(PurgeResult(rows, attempts, t0, time.monotonic(), statements))
    engine.dispose()


def run_purge(url: str, older_than: str) -> PurgeResult:
    out = CTX.Queue()
    proc = CTX.Process(target=_purger, args=(url, older_than, out), daemon=True)
    proc.start()
    try:
        result: PurgeResult = out.get(timeout=1800)
    finally:
        proc.join(10)
    return result


class LockWatcher(threading.Thread):
    """Samples pg_stat_activity every 20 ms for sessions of this database that wait on a lock
    (with the statements of the sessions blocking them), on I/O or on an LWLock (WAL)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.halt = threading.Event()
        self.waits: list[Wait] = []
        self.sampled_at: list[float] = []

    def run(self) -> None:
        engine = make_engine(self.url, isolation_level="AUTOCOMMIT")
        # pg_blocking_pids is only evaluated for the (rare) rows already found waiting.
        query = sa.text(
            "SELECT a.pid, a.wait_event_type, a.wait_event, left(a.query, 80), "
            "extract(epoch FROM clock_timestamp() - a.query_start), "
            "CASE WHEN a.wait_event_type = 'Lock' THEN "
            " (SELECT string_agg(left(b.query, 80), ' | ') FROM pg_stat_activity b "
            "  WHERE b.pid = ANY (pg_blocking_pids(a.pid))) END "
            "FROM pg_stat_activity a WHERE a.datname = current_database() "
            "AND a.pid <> pg_backend_pid() AND a.state = 'active' "
            "AND a.wait_event_type IN ('Lock', 'IO', 'LWLock')")
        with engine.connect() as conn:
            while not self.halt.is_set():
                at = time.monotonic()
                for pid, kind, event, text, waited, blockers in conn.execute(query):
                    self.waits.append(Wait(at, int(pid), str(kind), str(event), str(text),
                                           float(waited or 0), str(blockers or "")))
                self.sampled_at.append(at)
                self.halt.wait(0.02)
        engine.dispose()


@dataclass(frozen=True)
class Wait:
    at: float
    pid: int
    kind: str  # pg_stat_activity.wait_event_type: Lock, IO, LWLock
    event: str  # wait_event: transactionid, extend, WALSync, WALWrite, DataFileRead, ...
    query: str
    waited_s: float  # since the waiting statement started
    blockers: str  # the blocking sessions' statements ('' for extension locks)

    @property
    def is_claim_or_mark(self) -> bool:
        return self.query.lstrip().upper().startswith("UPDATE OUTBOX_EVENTS")

    @property
    def is_commit(self) -> bool:
        return self.query.strip().upper() == "COMMIT"

    @property
    def blocked_by_purge(self) -> bool:
        return "DELETE FROM" in self.blockers or "SELECT outbox_events.id" in self.blockers

    @property
    def who(self) -> str:
        # The claim's SET list starts "status=..., attempts=(...)"; mark_delivered's does not.
        return "claim" if "attempts=(" in self.query else "mark"

    @property
    def blocked_by(self) -> str:
        kinds = {"purge": self.blocked_by_purge,
                 "feeder INSERT": "INSERT INTO outbox_events" in self.blockers,
                 "claim/mark UPDATE": "UPDATE outbox_events" in self.blockers,
                 "a COMMIT": "COMMIT" in self.blockers}
        return " + ".join(k for k, v in kinds.items() if v) or "(not reported)"


class Load:
    """`processes` claimers (and, unless draining, a feeder) running until stopped."""

    def __init__(self, url: str, *, batch: int, processes: int, drain: bool,
                 feed_low: int = 0, feed_chunk: int = 0) -> None:
        self.ready, self.start_event, self.stop_event = CTX.Queue(), CTX.Event(), CTX.Event()
        self.out, self.fed = CTX.Queue(), CTX.Queue()
        self.procs = [CTX.Process(target=_claimer, daemon=True, args=(
            url, batch, drain, self.ready, self.start_event, self.stop_event, self.out))
            for _ in range(processes)]
        if not drain:
            self.procs.append(CTX.Process(target=_feeder, daemon=True, args=(
                url, feed_low, feed_chunk, self.ready, self.start_event, self.stop_event,
                self.fed)))
        self.feeding = not drain
        self.claimers = processes
        self.started = 0.0
        self.pids: dict[int, str] = {}  # backend pid -> claimer / feeder

    def __enter__(self) -> Load:
        for p in self.procs:
            p.start()
        for _ in self.procs:
            # imported, connected, and the pending rows in place
            role, pid = self.ready.get(timeout=300)
            self.pids[int(pid)] = str(role)
        self.started = time.monotonic()
        self.start_event.set()
        return self

    def stop(self) -> tuple[Samples, int]:
        """Stop (or, draining, wait for the end) and return every claimer's samples merged."""
        if self.feeding:
            self.stop_event.set()
        merged = Samples(started=float("inf"))
        for _ in range(self.claimers):
            s: Samples = self.out.get(timeout=1800)
            merged.extend(s)
            merged.started = min(merged.started, s.started)
            merged.ended = max(merged.ended, s.ended)
        fed = int(self.fed.get(timeout=120)) if self.feeding else 0
        return merged, fed

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
