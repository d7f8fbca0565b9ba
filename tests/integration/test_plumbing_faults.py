"""Exactly once on a shop's real plumbing, with real workers: a failover that turns the
database read-only mid-drain, a worker host whose clock is ahead, and PgBouncer in
transaction mode between the database and both the workers and the shop.

The oracle is the fake API's own count of what it received, per orderid.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from spotler_outbox import enqueue_purchase
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi
from tests.conftest import in_ci, purchase
from tests.integration.test_delivery_e2e import all_settled, counts, enqueue_orders
from tests.integration.workers import REDIS_URL, running_worker, wait_for, worker_environment
from tests.services import ThrowawayPgBouncer, ThrowawayPostgres, ThrowawayRedis


def set_read_only(server: ThrowawayPostgres, on: bool) -> None:
    """What a demoted primary or a standby answers every write with (SQLSTATE 25006): every
    session, the open ones included, from its next transaction on."""
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT", connect_args={
        "options": "-c default_transaction_read_only=off"})
    with admin.connect() as conn:
        conn.exec_driver_sql("ALTER SYSTEM SET default_transaction_read_only = "
                             + ("on" if on else "off"))
        conn.exec_driver_sql("SELECT pg_reload_conf()")
    admin.dispose()


def test_a_failover_to_a_read_only_node_mid_drain_sends_no_order_twice_and_loses_none(
    postgres: ThrowawayPostgres, redis_server: ThrowawayRedis, api: RunningFakeApi,
    tmp_path: Path,
) -> None:
    api.state.set_faults(Faults(latency_ms=300))
    env = worker_environment(postgres.url, api.url, OUTBOX_BROKER_URL=redis_server.url,
                             SPOTLER_BATCH_SIZE="10", OUTBOX_LEASE_SECONDS="12")
    engine = make_engine(postgres.url)
    orderids = [f"RO-{i}" for i in range(1000)]
    enqueue_orders(engine, Settings(database_url=postgres.url, broker_url=redis_server.url),
                   orderids, per_transaction=100)
    with running_worker("w1", env, tmp_path) as worker:
        wait_for(lambda: counts(engine).get("delivered", 0) >= 100, 30, "deliveries under way")
        set_read_only(postgres, True)
        wait_for(lambda: "read-only" in worker.output(), 10, "a write refused as read-only")
        time.sleep(8)
        set_read_only(postgres, False)
        wait_for(lambda: all_settled(engine, 1000), 90, "the drain after the failover")
        output = worker.output()
    engine.dispose()
    assert counts(engine) == {"delivered": 1000}
    assert api.state.received()["orderids"] == dict.fromkeys(orderids, 1)
    assert "Traceback" not in output
    # One line when the outage starts and one when it ends, per batch whose answer waited
    # (two pool processes, each with at most two claims) and per timer: not one per try.
    waited = output.count("could not record Spotler's answer")
    assert 1 <= waited <= 4 and output.count("recorded Spotler's answer for") == waited
    assert output.count("dispatch stopped: database unavailable") <= 2  # one per process
    assert output.count("sweep failed") <= 1


def libfaketime() -> str:
    path = shutil.which("faketime")
    if path is None:
        message = "libfaketime's faketime not installed (Debian: apt-get install faketime)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_a_worker_whose_clock_is_ninety_seconds_ahead_takes_no_lease_another_worker_holds(
    postgres_url: str, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    # Every request takes 1.5 s against an 8 s lease: on its own clock the skewed worker
    # would find every lease the other holds long expired.
    ahead = [libfaketime(), "-f", "+90s"]
    api.state.set_faults(Faults(latency_ms=1500))
    env = worker_environment(postgres_url, api.url, SPOTLER_BATCH_SIZE="10",
                             FAKETIME_DONT_FAKE_MONOTONIC="1")
    engine = make_engine(postgres_url)
    orderids = [f"SK-{i}" for i in range(200)]
    with running_worker("on-time", env, tmp_path), \
            running_worker("ahead", env, tmp_path, prefix=ahead) as skewed:
        enqueue_orders(engine, Settings(database_url=postgres_url, broker_url=env[
            "OUTBOX_BROKER_URL"]), orderids, per_transaction=20)
        wait_for(lambda: all_settled(engine, 200), 90, "200 deliveries")
        skewed_log = skewed.output()
    with engine.connect() as conn:
        nodes = set(conn.execute(sa.text(
            "SELECT DISTINCT split_part(worker, '@', 1) FROM delivery_attempts")).scalars())
    engine.dispose()
    assert nodes == {"on-time", "ahead"}  # both took part
    assert api.state.received()["orderids"] == dict.fromkeys(orderids, 1)
    assert skewed_log.count("s ahead of the database's") == 1  # said once, and corrected
    assert "Discarding revoked task" not in skewed_log  # no wake-up dropped as expired


def test_workers_and_concurrent_checkouts_behind_pgbouncer_in_transaction_mode_send_each_once(
    postgres_url: str, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    bouncer = ThrowawayPgBouncer(str(sa.engine.make_url(postgres_url).database),
                                 pool_mode="transaction", pool_size=4)
    direct = make_engine(postgres_url)
    with direct.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS pgb_orders")
        conn.exec_driver_sql("CREATE TABLE pgb_orders (id text PRIMARY KEY)")
    # The shop's engine as docs/integrating.md says to build it behind such a pooler; the
    # enqueue's own statements are never prepared, whatever the engine says.
    shop = sa.create_engine(bouncer.url, connect_args={"prepare_threshold": None})
    producer = Settings(database_url=bouncer.url, broker_url=REDIS_URL)
    failures: list[BaseException] = []

    def checkouts(first: int) -> None:
        for n in range(first, first + 50):
            try:
                with Session(shop) as session, session.begin():
                    session.execute(sa.text("INSERT INTO pgb_orders VALUES (:id)"),
                                    {"id": f"PB-{n}"})
                    enqueue_purchase(session, purchase(f"PB-{n}"), settings=producer)
            except Exception as e:  # a checkout that failed: the test's point
                failures.append(e)

    api.state.set_faults(Faults(latency_ms=50))
    env = worker_environment(bouncer.url, api.url, SPOTLER_BATCH_SIZE="10")
    try:
        with running_worker("w1", env, tmp_path) as worker:
            producers = [threading.Thread(target=checkouts, args=(50 * i,)) for i in range(4)]
            for thread in producers:
                thread.start()
            for thread in producers:
                thread.join(120)
            wait_for(lambda: all_settled(direct, 200), 90, "200 deliveries")
            # The listener's probe takes PROBE_SECONDS; wake-ups after commit delivered meanwhile.
            wait_for(lambda: "hears no notification" in worker.output(), 30, "LISTEN stood down")
            output = worker.output()
    finally:
        shop.dispose()
        bouncer.destroy()
    with direct.connect() as conn:
        orders = conn.execute(sa.text("SELECT count(*) FROM pgb_orders")).scalar_one()
    direct.dispose()
    assert not failures and orders == 200  # every checkout committed
    assert api.state.received()["orderids"] == {f"PB-{n}": 1 for n in range(200)}
    assert "prepared statement" not in output and "Traceback" not in output
