"""End to end: real Celery workers, Redis, PostgreSQL or MariaDB, and the fake Spotler API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from spotler_outbox import enqueue_purchase
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.tables import Status
from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi
from tests.conftest import purchase
from tests.integration.fixtures import ACCOUNT, API_KEY, insert_raw, row
from tests.integration.workers import (
    REDIS_URL,
    running_worker,
    wait_for,
    worker_environment,
)


@pytest.fixture
def engine(server_database_url: str) -> Iterator[Engine]:
    engine = make_engine(server_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def env(server_database_url: str, api: RunningFakeApi, broker: redis.Redis) -> dict[str, str]:
    # The workers log in as the least-privilege user `spotler-outbox grants` creates.
    return worker_environment(server_database_url, api.url, as_role="worker")


def producer_settings(database_url: str, *, wakeup: bool = True) -> Settings:
    return Settings(database_url=database_url, broker_url=REDIS_URL, wakeup_enabled=wakeup)


def enqueue_orders(engine: Engine, settings: Settings, orderids: list[str],
                   per_transaction: int = 1) -> None:
    for start in range(0, len(orderids), per_transaction):
        with Session(engine) as session, session.begin():
            for orderid in orderids[start:start + per_transaction]:
                enqueue_purchase(session, purchase(orderid), settings=settings)


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT status, count(*) FROM outbox_events GROUP BY status")).all())


def all_settled(engine: Engine, total: int) -> bool:
    c = counts(engine)
    return c.get("delivered", 0) + c.get("failed", 0) == total


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_thousand_orders_are_each_received_exactly_once(
    engine: Engine, env: dict[str, str], api: RunningFakeApi, server_database_url: str,
    tmp_path: Path, pool: str,
) -> None:
    orderids = [f"T-{i}" for i in range(1000)]
    with running_worker("w1", env, tmp_path, pool=pool, concurrency=4 if pool == "threads"
                        else 2):
        enqueue_orders(engine, producer_settings(server_database_url), orderids,
                       per_transaction=10)
        wait_for(lambda: counts(engine).get("delivered") == 1000, 60, "1,000 deliveries")
    received = api.state.received()
    assert received["orderids"] == dict.fromkeys(orderids, 1)


def test_a_stretch_of_500s_then_recovery_delivers_everything_once(
    engine: Engine, env: dict[str, str], api: RunningFakeApi, server_database_url: str,
    tmp_path: Path,
) -> None:
    api.state.set_faults(Faults(error_rate=1.0, error_status=500))
    orderids = [f"S-{i}" for i in range(200)]
    with running_worker("w1", env, tmp_path):
        enqueue_orders(engine, producer_settings(server_database_url), orderids,
                       per_transaction=20)
        wait_for(lambda: len(api.state.request_log()) >= 5, 20, "failing requests")
        api.state.set_faults(Faults())
        wait_for(lambda: all_settled(engine, 200), 60, "recovery")
    assert counts(engine) == {"delivered": 200}
    assert api.state.received()["orderids"] == dict.fromkeys(orderids, 1)
    assert any(entry["status"] == 500 for entry in api.state.request_log())


def test_429_with_retry_after_means_no_request_before_the_time(
    engine: Engine, env: dict[str, str], api: RunningFakeApi, server_database_url: str,
    tmp_path: Path,
) -> None:
    with running_worker("w1", env, tmp_path):
        # Retry-After: 4, far from the hold without the header (a first backoff step of at
        # most 0.1 s plus 1 s), even with the sweeper's wait on top of that.
        api.state.set_faults(Faults(rate_limit_seconds=4.0))
        limited_from = time.time()
        enqueue_orders(engine, producer_settings(server_database_url), ["L-1", "L-2"])
        wait_for(lambda: all_settled(engine, 2), 30, "delivery after the rate limit")
    log = api.state.request_log()
    first_429 = next(e for e in log if e["status"] == 429)
    retry_at = limited_from + 4.0
    later = [e for e in log if e["at"] > first_429["at"] + 0.25]
    # Requests already in flight when the first 429 came back may land with it; after that,
    # nothing reaches the API until Retry-After has passed.
    assert later and all(e["at"] >= retry_at - 0.05 for e in later)
    assert counts(engine) == {"delivered": 2}


def test_a_poison_event_in_a_batch_is_parked_and_the_rest_delivered(
    engine: Engine, env: dict[str, str], api: RunningFakeApi, server_database_url: str,
    tmp_path: Path,
) -> None:
    api.state.set_faults(Faults(reject_orderids=["P-7"]))
    orderids = [f"P-{i}" for i in range(50)]
    enqueue_orders(engine, producer_settings(server_database_url, wakeup=False), orderids,
                   per_transaction=50)
    with running_worker("w1", env, tmp_path):
        wait_for(lambda: all_settled(engine, 50), 30, "settling the batch")
    assert counts(engine) == {"delivered": 49, "failed": 1}
    assert row(engine, "P-7").status == Status.FAILED
    assert api.state.received()["orderids"] == {o: 1 for o in orderids if o != "P-7"}


def test_a_401_pauses_then_resumes_by_itself_after_the_key_is_fixed_with_attempts_untouched(
    engine: Engine, env: dict[str, str], api: RunningFakeApi, server_database_url: str,
    tmp_path: Path,
) -> None:
    api.state.set_credentials(ACCOUNT, "the-new-key")
    with running_worker("w1", env, tmp_path) as worker:
        enqueue_orders(engine, producer_settings(server_database_url), ["K-1", "K-2"])
        wait_for(lambda: any(e["status"] == 401 for e in api.state.request_log()), 20, "a 401")
        time.sleep(1.5)  # several sweeps and credential checks while paused
        assert counts(engine) == {"pending": 2}
        assert row(engine, "K-1").attempts == 0
        with engine.connect() as conn:
            assert conn.execute(sa.text(
                "SELECT paused_reason FROM dispatch_control")).scalar_one()
        api.state.set_credentials(ACCOUNT, API_KEY)
        wait_for(lambda: all_settled(engine, 2), 20, "resumed delivery")
        assert "dispatch resumed" in worker.output()
        assert API_KEY not in worker.output()
    assert counts(engine) == {"delivered": 2}
    assert row(engine, "K-1").attempts == 1


def test_two_workers_at_once_never_send_one_orderid_twice(
    engine: Engine, env: dict[str, str], api: RunningFakeApi, server_database_url: str,
    tmp_path: Path,
) -> None:
    api.state.set_faults(Faults(latency_ms=5))
    orderids = [f"D-{i}" for i in range(600)]
    with running_worker("w1", env, tmp_path), \
            running_worker("w2", {**env, "SPOTLER_BATCH_SIZE": "7"}, tmp_path):
        enqueue_orders(engine, producer_settings(server_database_url), orderids,
                       per_transaction=3)
        wait_for(lambda: all_settled(engine, 600), 60, "600 deliveries")
    assert api.state.received()["orderids"] == dict.fromkeys(orderids, 1)
    with engine.connect() as conn:
        workers = conn.execute(sa.text(
            "SELECT DISTINCT worker FROM delivery_attempts")).scalars().all()
    # Both nodes, not two pool children of one: attempts name the Celery node (w1@host).
    assert {name.split("@")[0] for name in workers} == {"w1", "w2"}


def test_a_worker_killed_holding_a_claim_leaves_the_row_to_be_delivered_after_the_lease(
    engine: Engine, env: dict[str, str], api: RunningFakeApi, server_database_url: str,
    tmp_path: Path,
) -> None:
    api.state.set_faults(Faults(timeout_rate=1.0, timeout_seconds=120))
    with running_worker("doomed", env, tmp_path) as doomed:
        enqueue_orders(engine, producer_settings(server_database_url), ["Z-1"])
        wait_for(lambda: row(engine, "Z-1").status == Status.IN_FLIGHT, 20, "the claim")
        time.sleep(0.5)  # the request is on the wire; the fake holds it past the read timeout
        assert row(engine, "Z-1").status == Status.IN_FLIGHT
        doomed.kill()
    api.state.set_faults(Faults())
    killed_at = time.monotonic()
    with running_worker("heir", env, tmp_path):
        wait_for(lambda: all_settled(engine, 1), 30, "delivery after the lease")
    assert time.monotonic() - killed_at >= 4  # not before the 8 s lease had run out
    delivered = row(engine, "Z-1")
    assert delivered.status == Status.DELIVERED and delivered.attempts == 2
    assert api.state.received()["orderids"] == {"Z-1": 1}


def test_the_sweeper_delivers_rows_whose_wake_up_was_lost(
    engine: Engine, env: dict[str, str], api: RunningFakeApi, server_database_url: str,
    tmp_path: Path, broker: redis.Redis,
) -> None:
    enqueue_orders(engine, producer_settings(server_database_url), ["W-1", "W-2"])
    insert_raw(engine, "W-3", json.dumps(purchase("W-3")))  # plain SQL: no wake-up at all
    time.sleep(0.3)
    broker.flushdb()  # the broker lost every message
    with running_worker("w1", env, tmp_path):
        wait_for(lambda: all_settled(engine, 3), 20, "the sweeper")
    assert api.state.received()["orderids"] == {"W-1": 1, "W-2": 1, "W-3": 1}


def test_a_committed_enqueue_wakes_a_worker_without_waiting_for_the_sweeper(
    engine: Engine, api: RunningFakeApi, server_database_url: str, broker: redis.Redis,
    tmp_path: Path,
) -> None:
    env = worker_environment(server_database_url, api.url,
                             OUTBOX_SWEEP_INTERVAL_SECONDS="3600")
    with running_worker("w1", env, tmp_path):
        time.sleep(1)  # the first sweep runs at start-up; the next is an hour away
        started = time.monotonic()
        enqueue_orders(engine, producer_settings(server_database_url), ["U-1"])
        wait_for(lambda: all_settled(engine, 1), 10, "delivery woken by the commit")
        assert time.monotonic() - started < 5
