"""Database and broker faults, and shutdown: nothing lost, nothing marked wrongly."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import Engine

from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.tables import events
from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi
from tests.conftest import purchase
from tests.integration.fixtures import API_KEY
from tests.integration.test_delivery_e2e import (
    all_settled,
    counts,
    enqueue_orders,
    producer_settings,
)
from tests.integration.workers import REDIS_URL, running_worker, wait_for, worker_environment
from tests.services import ThrowawayPostgres, ThrowawayRedis, free_port


@pytest.fixture
def engine(postgres: ThrowawayPostgres) -> Iterator[Engine]:
    engine = make_engine(postgres.url)
    yield engine
    engine.dispose()


def in_flight(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM outbox_events WHERE status = 'in_flight'")).scalar_one())


def log_claims(engine: Engine) -> None:
    """The database's own record of every claim: a trigger notes each row going in flight,
    with the server's clock."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE claim_log (at timestamptz NOT NULL "
                             "DEFAULT clock_timestamp())"))
        conn.execute(sa.text("CREATE FUNCTION log_claim() RETURNS trigger LANGUAGE plpgsql AS "
                             "$$ BEGIN INSERT INTO claim_log DEFAULT VALUES; RETURN NULL; END $$"))
        conn.execute(sa.text("CREATE TRIGGER log_claim AFTER UPDATE ON outbox_events FOR EACH "
                             "ROW WHEN (NEW.status = 'in_flight' AND OLD.status <> 'in_flight') "
                             "EXECUTE FUNCTION log_claim()"))


def server_time(engine: Engine) -> dt.datetime:
    with engine.connect() as conn:
        now: dt.datetime = conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
        return now


def claims_since(engine: Engine, since: dt.datetime) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM claim_log WHERE at > :t"),
                                {"t": since}).scalar_one())


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_sigterm_lets_the_batch_in_flight_finish_and_be_marked_before_the_worker_exits(
    postgres: ThrowawayPostgres, redis_server: ThrowawayRedis, api: RunningFakeApi,
    engine: Engine, tmp_path: Path, pool: str,
) -> None:
    api.state.set_faults(Faults(latency_ms=1500))
    env = worker_environment(postgres.url, api.url, OUTBOX_BROKER_URL=redis_server.url,
                             SPOTLER_BATCH_SIZE="10")
    producer = Settings(database_url=postgres.url, broker_url=redis_server.url)
    log_claims(engine)
    with running_worker("w1", env, tmp_path, pool=pool) as worker:
        enqueue_orders(engine, producer, [f"G-{i}" for i in range(60)], per_transaction=60)
        wait_for(lambda: in_flight(engine) > 0, 20, "a batch in flight")
        time.sleep(0.3)
        signalled_at = server_time(engine)
        os.killpg(worker.process.pid, signal.SIGTERM)
        worker.process.wait(60)
    assert in_flight(engine) == 0
    # No new batch once stopping: at most a claim already under way in each of the two pool
    # slots as the signal came (a loop that ignored the stop claimed and handed back
    # thousands of batches until its time budget ran out).
    assert claims_since(engine, signalled_at) <= 20
    delivered = counts(engine).get("delivered", 0)
    assert delivered >= 10  # the batch that was in flight
    assert delivered <= 20  # and no new one: two slots, one batch of 10 in flight in each
    assert sum(api.state.received()["orderids"].values()) == delivered
    with running_worker("w2", env, tmp_path):
        wait_for(lambda: all_settled(engine, 60), 60, "the rest after restart")
    assert api.state.received()["orderids"] == {f"G-{i}": 1 for i in range(60)}


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_database_outage_while_workers_run_loses_nothing_and_marks_nothing_wrongly(
    postgres: ThrowawayPostgres, redis_server: ThrowawayRedis, api: RunningFakeApi,
    engine: Engine, tmp_path: Path, pool: str,
) -> None:
    api.state.set_faults(Faults(latency_ms=200))
    env = worker_environment(postgres.url, api.url, OUTBOX_BROKER_URL=redis_server.url,
                             SPOTLER_BATCH_SIZE="10", OUTBOX_LEASE_SECONDS="30")
    producer = Settings(database_url=postgres.url, broker_url=redis_server.url)
    orderids = [f"O-{i}" for i in range(200)]
    enqueue_orders(engine, producer, orderids, per_transaction=50)
    with running_worker("w1", env, tmp_path, pool=pool, concurrency=4 if pool == "threads"
                        else 2) as worker:
        wait_for(lambda: counts(engine).get("delivered", 0) >= 20, 30, "deliveries under way")
        postgres.stop("immediate")
        time.sleep(3)
        postgres.start()
        wait_for(lambda: all_settled(engine, 200), 90, "recovery after the outage")
        output = worker.output()
    assert counts(engine) == {"delivered": 200}
    assert api.state.received()["orderids"] == dict.fromkeys(orderids, 1)
    assert "sweep failed: OperationalError" in output  # the outage was seen, and survived


def test_with_redis_down_enqueue_succeeds_and_delivery_catches_up_afterwards(
    postgres: ThrowawayPostgres, redis_server: ThrowawayRedis, api: RunningFakeApi,
    engine: Engine, tmp_path: Path,
) -> None:
    env = worker_environment(postgres.url, api.url, OUTBOX_BROKER_URL=redis_server.url)
    producer = Settings(database_url=postgres.url, broker_url=redis_server.url)
    with running_worker("w1", env, tmp_path):
        # Let the start-up wake-up be taken and acked first: kombu can die with an
        # "Unrecoverable error" (AttributeError in _connparams) when the broker vanishes during
        # that very ack; in production the supervisor (compose restart, systemd Restart=)
        # restarts the worker and the rows wait in the outbox, but here no one would.
        time.sleep(2)
        redis_server.stop()
        started = time.monotonic()
        enqueue_orders(engine, producer, [f"M-{i}" for i in range(20)])
        assert time.monotonic() - started < 5  # 20 order transactions, none waited on Redis
        # All 20 committed; a dispatch run already going (or a LISTEN wake-up) may deliver some
        # without Redis, which is fine: none may be lost or parked.
        status = counts(engine)
        assert sum(status.values()) == 20 and set(status) <= {"pending", "in_flight", "delivered"}
        redis_server.start()
        wait_for(lambda: all_settled(engine, 20), 60, "catching up after Redis is back")
    assert api.state.received()["orderids"] == {f"M-{i}": 1 for i in range(20)}


@pytest.fixture
def outbox(postgres_url: str) -> Iterator[Engine]:
    """The shared PostgreSQL test database (a throwaway server is only needed to crash it)."""
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


def test_a_redirecting_gateway_pauses_a_real_worker_parks_nothing_and_all_goes_once_it_stops(
    postgres_url: str, outbox: Engine, api: RunningFakeApi, broker: redis.Redis,
    tmp_path: Path,
) -> None:
    api.state.set_faults(Faults(redirect_status=308))  # on /v1/track only
    env = worker_environment(postgres_url, api.url, SPOTLER_BATCH_SIZE="8")
    orderids = [f"RW-{i}" for i in range(20)]
    with running_worker("w1", env, tmp_path):
        enqueue_orders(outbox, producer_settings(postgres_url), orderids, per_transaction=20)
        # Each recheck resumes (verifyAuth answers) and the next request pauses again.
        wait_for(lambda: len(api.state.request_log()) >= 3, 30, "three redirected requests")
        assert set(counts(outbox)) <= {"pending", "in_flight"}  # none failed, none delivered
        api.state.set_faults(Faults())
        wait_for(lambda: all_settled(outbox, 20), 30, "delivery after the redirect stops")
    assert counts(outbox) == {"delivered": 20}
    with outbox.connect() as conn:  # the redirected requests counted no attempt
        assert conn.execute(sa.text("SELECT max(attempts) FROM outbox_events")).scalar_one() == 1
    assert api.state.received()["orderids"] == dict.fromkeys(orderids, 1)
    assert {r["status"] for r in api.state.request_log()} == {308, 200}


def failed_tasks(seconds: float, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Capture Celery task events (what Flower reads) until a task of each name in `wanted`
    has failed or `seconds` pass; returns {task name: its task-failed event}."""
    app = Celery(broker=REDIS_URL)
    names: dict[str, str] = {}
    failed: dict[str, dict[str, Any]] = {}
    succeeded: list[str] = []

    def on_received(event: dict[str, Any]) -> None:
        names[event["uuid"]] = event["name"]

    def on_failed(event: dict[str, Any]) -> None:
        name = names.get(event["uuid"], "?")
        failed.setdefault(name, event)
        if wanted <= set(failed):
            receiver.should_stop = True

    def on_succeeded(event: dict[str, Any]) -> None:
        succeeded.append(names.get(event["uuid"], "?"))

    with app.connection() as connection:
        receiver = app.events.Receiver(connection, handlers={
            "task-received": on_received, "task-failed": on_failed,
            "task-succeeded": on_succeeded})
        with contextlib.suppress(socket.timeout, TimeoutError):
            receiver.capture(limit=None, timeout=seconds, wakeup=False)
    assert not succeeded, f"tasks reported a success without a database: {succeeded}"
    return failed


def test_a_dispatch_without_a_database_ends_failed_and_the_sweeper_logs_the_outage_once(
    api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    unreachable = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    env = worker_environment(unreachable, api.url)
    events: dict[str, dict[str, Any]] = {}
    listener = threading.Thread(target=lambda: events.update(failed_tasks(
        40, {"spotler_outbox.dispatch"})))
    listener.start()
    time.sleep(1)  # events are not kept: listen before the worker starts
    with running_worker("w1", env, tmp_path) as worker:
        Celery(broker=REDIS_URL).send_task("spotler_outbox.dispatch")
        listener.join(45)
        time.sleep(2)  # four more sweeps, still without a database
        output = worker.output()
    assert set(events) == {"spotler_outbox.dispatch"}  # the sweep is no task: it fails no task
    dispatch_failure = events["spotler_outbox.dispatch"]["exception"]
    assert dispatch_failure == ("DatabaseUnavailable('dispatch stopped: database unavailable "
                                "(OperationalError)')")
    # The sweeper timer: one line when the outage starts, not one per tick.
    assert output.count("sweep failed: OperationalError") == 1
    for event in events.values():
        assert "\n" not in event["exception"] and API_KEY not in str(event)
        assert "SELECT" not in str(event)  # not the driver's message with its SQL
    assert "Traceback" not in output
    assert API_KEY not in output
    # Still only a wake-up: acked once, never re-run by the broker.
    assert broker.llen("celery") == 0 and not broker.hlen("unacked")


def test_two_workers_on_one_machine_both_deliver_and_no_orderid_is_received_twice(
    postgres_url: str, outbox: Engine, api: RunningFakeApi, broker: redis.Redis,
    tmp_path: Path,
) -> None:
    api.state.set_faults(Faults(latency_ms=100))  # slow enough that one worker is not enough
    orderids = [f"TW-{i}" for i in range(300)]
    first = worker_environment(postgres_url, api.url, SPOTLER_BATCH_SIZE="5")
    second = worker_environment(postgres_url, api.url, SPOTLER_BATCH_SIZE="7")
    with running_worker("wa", first, tmp_path), \
            running_worker("wb", second, tmp_path):
        enqueue_orders(outbox, producer_settings(postgres_url), orderids, per_transaction=10)
        wait_for(lambda: all_settled(outbox, 300), 90, "300 deliveries")
    with outbox.connect() as conn:
        by_node = dict(conn.execute(sa.text(
            "SELECT split_part(a.worker, ':', 1), count(*) FROM delivery_attempts a "
            "JOIN delivery_attempt_events e ON e.attempt_id = a.id WHERE a.outcome = 'delivered' "
            "GROUP BY 1")).all())
    # The Celery node names, not processes: one worker's two children would not count.
    assert {node.split("@")[0] for node in by_node} == {"wa", "wb"}, by_node
    assert all(count > 0 for count in by_node.values())
    assert counts(outbox) == {"delivered": 300}
    assert api.state.received()["orderids"] == dict.fromkeys(orderids, 1)


def test_a_retry_that_falls_due_while_no_dispatch_runs_is_woken_by_the_sweeper(
    server_database_url: str, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    """What only the sweeper can do, on PostgreSQL too: no wake-up, no notification and no
    running dispatch will ever come for a row that falls due later."""
    outbox = make_engine(server_database_url)
    try:
        with running_worker("w1", worker_environment(server_database_url, api.url), tmp_path):
            time.sleep(1)  # LISTEN's start-up wake-up (PostgreSQL) has come and found nothing
            # A retry that a worker since gone scheduled: the insert's own notification wakes
            # a dispatch that finds nothing due yet.
            with outbox.begin() as conn:
                conn.execute(events.insert().values(
                    orderid="SW-1", payload=json.dumps(purchase("SW-1")),
                    next_attempt_at=utc_now() + dt.timedelta(seconds=2)))
            wait_for(lambda: all_settled(outbox, 1), 20, "the sweeper")
    finally:
        outbox.dispose()
    assert api.state.received()["orderids"] == {"SW-1": 1}
