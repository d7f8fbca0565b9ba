"""The database's own limit: the worker's claim and settle statements alone, no HTTP, no Celery.

Two processes (as many as the worker's pool) drain the same pre-inserted pending rows with
`models.store`'s functions, each claim and each settle in its own transaction as
`Dispatcher.run_once` does, so the figure is the ceiling the pipeline could reach.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import time
import uuid
from dataclasses import dataclass
from typing import Any

from spotler_outbox.models import claims
from spotler_outbox.models.claims import AttemptRecord
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.database import make_engine


@dataclass(frozen=True)
class RawResult:
    rows: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def _drain(url: str, batch_size: int, with_attempt: bool, ready: Any, start: Any,
           out: Any) -> None:
    engine = make_engine(url)
    with engine.connect():
        pass  # the connection is opened before the clock starts, as a warm worker's is
    ready.put(True)
    start.wait()
    t0 = time.monotonic()
    done = 0
    while True:
        now = utc_now()
        token = uuid.uuid4().hex
        lease_until = now + dt.timedelta(seconds=120)
        with engine.begin() as conn:
            rows = claims.claim_due(conn, limit=batch_size, token=token, now=now,
                                   lease_until=lease_until)
        if not rows:
            break
        settled = utc_now()
        with engine.begin() as conn:
            if with_attempt:
                record = AttemptRecord(started_at=now, duration_ms=1, event_count=len(rows),
                                       http_status=200, outcome="delivered", error_class=None,
                                       response_excerpt='{"success":true}', worker="raw-bench")
                claims.record_attempt(conn, record, rows)
            done += claims.mark_delivered(conn, [r.id for r in rows], token=token, now=settled,
                                         http_status=200)
    out.put((done, t0, time.monotonic()))
    engine.dispose()


def run_raw(url: str, *, batch_size: int, with_attempt: bool, processes: int = 2) -> RawResult:
    """Drain the pending rows already in the table; returns rows settled and wall seconds."""
    # spawn, not fork: the children must not inherit this process's pooled connections.
    ctx = mp.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_drain, args=(url, batch_size, with_attempt, ready, start, out),
                           daemon=True) for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            ready.get(timeout=60)  # both imported and connected: start them together
        start.set()
        results = [out.get(timeout=600) for _ in workers]
    finally:
        for w in workers:
            w.join(5)
            if w.is_alive():
                w.terminate()
                w.join(5)
    rows = sum(r[0] for r in results)
    seconds = max(r[2] for r in results) - min(r[1] for r in results)
    return RawResult(rows, seconds)
