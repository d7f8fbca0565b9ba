"""Database and broker faults, and shutdown: nothing lost, nothing marked wrongly."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox import migrations
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi
from tests.integration.test_delivery_e2e import all_settled, counts, enqueue_orders
from tests.integration.workers import running_worker, wait_for, worker_environment
from tests.services import ThrowawayPostgres, ThrowawayRedis


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    migrations.upgrade(server.url)
    yield server
    server.destroy()


@pytest.fixture
def redis_server() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    yield server
    server.destroy()


@pytest.fixture
def engine(postgres: ThrowawayPostgres) -> Iterator[Engine]:
    engine = make_engine(postgres.url)
    yield engine
    engine.dispose()


def in_flight(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM outbox_events WHERE status = 'in_flight'")).scalar_one())


def test_sigterm_lets_the_batch_in_flight_finish_and_be_marked_before_the_worker_exits(
    postgres: ThrowawayPostgres, redis_server: ThrowawayRedis, api: RunningFakeApi,
    engine: Engine, tmp_path: Path,
) -> None:
    api.state.set_faults(Faults(latency_ms=1500))
    env = worker_environment(postgres.url, api.url, OUTBOX_BROKER_URL=redis_server.url,
                             SPOTLER_BATCH_SIZE="10")
    producer = Settings(database_url=postgres.url, broker_url=redis_server.url)
    with running_worker("w1", env, tmp_path) as worker:
        enqueue_orders(engine, producer, [f"G-{i}" for i in range(60)], per_transaction=60)
        wait_for(lambda: in_flight(engine) > 0, 20, "a batch in flight")
        time.sleep(0.3)
        os.killpg(worker.process.pid, signal.SIGTERM)
        worker.process.wait(60)
    assert in_flight(engine) == 0
    delivered = counts(engine).get("delivered", 0)
    assert delivered >= 10  # the batch that was in flight
    assert sum(api.state.received()["orderids"].values()) == delivered
    with running_worker("w2", env, tmp_path):
        wait_for(lambda: all_settled(engine, 60), 60, "the rest after restart")
    assert api.state.received()["orderids"] == {f"G-{i}": 1 for i in range(60)}


def test_a_database_outage_while_workers_run_loses_nothing_and_marks_nothing_wrongly(
    postgres: ThrowawayPostgres, redis_server: ThrowawayRedis, api: RunningFakeApi,
    engine: Engine, tmp_path: Path,
) -> None:
    api.state.set_faults(Faults(latency_ms=200))
    env = worker_environment(postgres.url, api.url, OUTBOX_BROKER_URL=redis_server.url,
                             SPOTLER_BATCH_SIZE="10", OUTBOX_LEASE_SECONDS="30")
    producer = Settings(database_url=postgres.url, broker_url=redis_server.url)
    orderids = [f"O-{i}" for i in range(200)]
    enqueue_orders(engine, producer, orderids, per_transaction=50)
    with running_worker("w1", env, tmp_path) as worker:
        wait_for(lambda: counts(engine).get("delivered", 0) >= 20, 30, "deliveries under way")
        postgres.stop("immediate")
        time.sleep(3)
        postgres.start()
        wait_for(lambda: all_settled(engine, 200), 90, "recovery after the outage")
        output = worker.output()
    assert counts(engine) == {"delivered": 200}
    assert api.state.received()["orderids"] == dict.fromkeys(orderids, 1)
    assert "database unavailable" in output


def test_with_redis_down_enqueue_succeeds_and_delivery_catches_up_afterwards(
    postgres: ThrowawayPostgres, redis_server: ThrowawayRedis, api: RunningFakeApi,
    engine: Engine, tmp_path: Path,
) -> None:
    env = worker_environment(postgres.url, api.url, OUTBOX_BROKER_URL=redis_server.url)
    producer = Settings(database_url=postgres.url, broker_url=redis_server.url)
    with running_worker("w1", env, tmp_path):
        redis_server.stop()
        started = time.monotonic()
        enqueue_orders(engine, producer, [f"M-{i}" for i in range(20)])
        assert time.monotonic() - started < 5  # 20 order transactions, none waited on Redis
        assert counts(engine) == {"pending": 20}
        redis_server.start()
        wait_for(lambda: all_settled(engine, 20), 60, "catching up after Redis is back")
    assert api.state.received()["orderids"] == {f"M-{i}": 1 for i in range(20)}
