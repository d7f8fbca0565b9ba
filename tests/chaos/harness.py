"""Chaos harness: orders flow while workers are SIGKILLed, Redis and PostgreSQL restart and the
fake Spotler API misbehaves; then the fake's record is checked against the outbox.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from spotler_outbox import enqueue_purchase, migrations
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.fake_spotler.server import Faults, start_fake_api
from tests.conftest import purchase
from tests.integration.fixtures import ACCOUNT, API_KEY
from tests.integration.workers import WorkerProcess, wait_for, worker_environment
from tests.services import ThrowawayPostgres, ThrowawayRedis

LEASE_SECONDS = 15


@dataclass
class ChaosReport:
    orders: int
    seconds: float = 0.0
    worker_kills: int = 0
    # A worker that exited by itself (kombu can crash a worker when Redis drops mid-reconnect)
    # and was restarted by the harness, as docker compose's restart policy or systemd would.
    worker_exits_restarted: int = 0
    redis_restarts: int = 0
    postgres_restarts: int = 0
    api_fault_phases: int = 0
    api_5xx: int = 0
    api_429: int = 0
    timed_out_event_sends: int = 0
    requests: int = 0
    producer_retries: int = 0
    lost: int = 0
    duplicates: int = 0
    duplicates_by_cause: dict[str, int] = field(default_factory=dict)
    unexplained_duplicates: list[str] = field(default_factory=list)
    stuck: int = 0
    failed: int = 0
    inconsistent_attempts: list[str] = field(default_factory=list)
    harness_errors: list[str] = field(default_factory=list)

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class Chaos:
    def __init__(self, orders: int, produce_seconds: float, log_dir: Path, seed: int) -> None:
        self.report = ChaosReport(orders)
        self.orders = orders
        self.produce_seconds = produce_seconds
        self.log_dir = log_dir
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.services_lock = threading.Lock()

    def run(self) -> ChaosReport:
        started = time.monotonic()
        self.postgres = ThrowawayPostgres()
        self.redis = ThrowawayRedis()
        try:
            with start_fake_api(account=ACCOUNT, api_key=API_KEY) as api:
                self.api = api
                self._run_with_services()
        finally:
            self.redis.destroy()
            self.postgres.destroy()
        self.report.seconds = round(time.monotonic() - started, 1)
        return self.report

    def _run_with_services(self) -> None:
        migrations.upgrade(self.postgres.url)
        self.engine = make_engine(self.postgres.url, pool_size=2)
        env = worker_environment(
            self.postgres.url, self.api.url, OUTBOX_BROKER_URL=self.redis.url,
            SPOTLER_READ_TIMEOUT="2", OUTBOX_LEASE_SECONDS=str(LEASE_SECONDS),
            OUTBOX_BACKOFF_BASE_SECONDS="0.2", OUTBOX_BACKOFF_CAP_SECONDS="2",
            OUTBOX_MAX_ATTEMPTS="1000", OUTBOX_MAX_AGE_SECONDS="86400")
        self.workers = [self._start_worker(0, env), self._start_worker(1, env)]
        chaos = threading.Thread(target=self._inflict, args=(env,), daemon=True)
        chaos.start()
        try:
            self._produce()
        finally:
            self.stop.set()
            chaos.join(120)
        # Calm: every service up, the API well, and let the outbox drain.
        self.api.state.set_faults(Faults())
        try:
            wait_for(lambda: self._supervise(env) or self._drained(), 300 + self.orders / 200,
                     "the outbox to drain")
        finally:
            for worker in self.workers:
                worker.stop()
            self._check()
            self.engine.dispose()

    def _start_worker(self, index: int, env: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(f"chaos{index}-{time.monotonic_ns()}", env, self.log_dir)
        worker.wait_ready(60)
        return worker

    def _produce(self) -> None:
        settings = Settings(database_url=self.postgres.url, broker_url=self.redis.url)
        per_transaction = 10
        batches = range(0, self.orders, per_transaction)
        pause = self.produce_seconds / max(1, len(batches))
        for start in batches:
            orderids = [f"CH-{i}" for i in range(start, min(start + per_transaction, self.orders))]
            while True:
                try:
                    with Session(self.engine) as session, session.begin():
                        for orderid in orderids:
                            enqueue_purchase(session, purchase(orderid), settings=settings)
                    break
                except sa.exc.OperationalError:
                    # The order system retries its transaction; enqueue is idempotent, so an
                    # ambiguous commit retried adds nothing twice.
                    self.report.producer_retries += 1
                    time.sleep(0.2)
            time.sleep(pause)

    def _inflict(self, env: dict[str, str]) -> None:
        actions = [self._kill_worker, self._kill_worker, self._restart_redis,
                   self._restart_postgres, self._api_faults, self._api_faults]
        while not self.stop.wait(self.random.uniform(1.0, 4.0)):
            try:
                self._supervise(env)
                self.random.choice(actions)(env)
            except Exception as e:  # a failed fault must not end the chaos unnoticed
                self.report.harness_errors.append(f"{type(e).__name__}: {e}"[:300])

    def _supervise(self, env: dict[str, str]) -> None:
        """Restart any worker that exited by itself, as a process supervisor would."""
        for index, worker in enumerate(self.workers):
            if worker.process.poll() is not None:
                worker.stop()
                self.workers[index] = self._start_worker(index, env)
                self.report.worker_exits_restarted += 1

    def _kill_worker(self, env: dict[str, str]) -> None:
        index = self.random.randrange(len(self.workers))
        self.workers[index].kill()
        self.report.worker_kills += 1
        time.sleep(self.random.uniform(0.2, 1.5))
        self.workers[index] = self._start_worker(index, env)

    def _restart_redis(self, env: dict[str, str]) -> None:
        self.redis.stop()
        self.report.redis_restarts += 1
        time.sleep(self.random.uniform(0.5, 2.0))
        self.redis.start()

    def _restart_postgres(self, env: dict[str, str]) -> None:
        self.postgres.stop(self.random.choice(["immediate", "fast"]))
        self.report.postgres_restarts += 1
        time.sleep(self.random.uniform(0.5, 2.0))
        self.postgres.start()

    def _api_faults(self, env: dict[str, str]) -> None:
        faults = self.random.choice([
            Faults(error_rate=0.3, error_status=self.random.choice([500, 502, 503])),
            Faults(timeout_rate=0.2, timeout_seconds=3),
            Faults(rate_limit_seconds=self.random.uniform(0.5, 2.0)),
            Faults(latency_ms=self.random.uniform(10, 200)),
            Faults(),
        ])
        self.api.state.set_faults(faults)
        self.report.api_fault_phases += 1

    def _drained(self) -> bool:
        try:
            with self.engine.connect() as conn:
                left = conn.execute(sa.text(
                    "SELECT count(*) FROM outbox_events WHERE status IN ('pending', 'in_flight')"
                )).scalar_one()
                total = conn.execute(sa.text("SELECT count(*) FROM outbox_events")).scalar_one()
        except sa.exc.OperationalError:
            return False
        return total == self.orders and left == 0

    def _check(self) -> None:
        report = self.report
        log = self.api.state.request_log()
        report.requests = len(log)
        report.api_5xx = sum(1 for e in log if e["status"] >= 500)
        report.api_429 = sum(1 for e in log if e["status"] == 429)
        received: dict[str, int] = self.api.state.received()["orderids"]
        expected = {f"CH-{i}" for i in range(self.orders)}
        report.lost = len(expected - set(received))
        with self.engine.connect() as conn:
            rows = {r.orderid: r for r in conn.execute(sa.text(
                "SELECT id, orderid, status, attempts FROM outbox_events"))}
            recorded = _attempts_per_row(conn)
        statuses = Counter(r.status for r in rows.values())
        report.stuck = statuses["pending"] + statuses["in_flight"]
        report.failed = statuses["failed"]
        causes: Counter[str] = Counter()
        for orderid, times in received.items():
            row = rows.get(orderid)
            if row is None:
                report.unexplained_duplicates.append(f"{orderid}: received but not in outbox")
                continue
            mine = recorded.get(row.id, Counter())
            counted = sum(n for outcome, n in mine.items()
                          if outcome not in ("rate_limited", "auth_failed"))
            unrecorded_claims = row.attempts - counted
            if unrecorded_claims < 0:
                report.inconsistent_attempts.append(
                    f"{orderid}: {counted} attempts recorded but only {row.attempts} claims")
            if mine["delivered"] > 1:
                report.inconsistent_attempts.append(f"{orderid}: marked delivered twice")
            if times <= 1:
                continue
            report.duplicates += times - 1
            timeouts = mine["timeout"]
            explained = 0
            if timeouts:
                causes["request timed out after the API took it"] += min(timeouts, times - 1)
                explained += min(timeouts, times - 1)
            if explained < times - 1 and unrecorded_claims > 0:
                extra = min(unrecorded_claims, times - 1 - explained)
                causes["worker killed between the API's 2xx and the mark"] += extra
                explained += extra
            if explained < times - 1:
                report.unexplained_duplicates.append(
                    f"{orderid}: received {times}x, attempts {row.attempts}, recorded {dict(mine)}")
        report.duplicates_by_cause = dict(causes)
        report.timed_out_event_sends = sum(c["timeout"] for c in recorded.values())


def _attempts_per_row(conn: sa.Connection) -> dict[int, Counter[str]]:
    """Outcome counts per outbox row; a retryable answer with no HTTP status is a timeout or
    a broken connection: the API may have taken that request."""
    result: dict[int, Counter[str]] = {}
    for event_id, outcome, status in conn.execute(sa.text(
            "SELECT e.outbox_event_id, a.outcome, a.http_status FROM delivery_attempt_events e "
            "JOIN delivery_attempts a ON a.id = e.attempt_id")):
        key = "timeout" if outcome == "retryable" and status is None else outcome
        result.setdefault(event_id, Counter())[key] += 1
    return result


def run_chaos(orders: int, produce_seconds: float, log_dir: Path, seed: int) -> ChaosReport:
    return Chaos(orders, produce_seconds, log_dir, seed).run()


def summary(report: ChaosReport) -> dict[str, Any]:
    return asdict(report)
