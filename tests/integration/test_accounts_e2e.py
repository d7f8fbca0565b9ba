"""Several Spotler accounts end to end: real Celery workers, Redis, the outbox database and
the fake API, which refuses any event sent with another account's headers."""

from __future__ import annotations

import json
import statistics
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
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi, start_fake_api
from tests.conftest import purchase
from tests.integration.fixtures import ACCOUNT, API_KEY
from tests.integration.workers import REDIS_URL, running_worker, wait_for, worker_environment

BE, BE_KEY = "shop-be", "be-key-do-not-log-0d41"
STORE = "custom_store"


@pytest.fixture
def api() -> Iterator[RunningFakeApi]:
    with start_fake_api(accounts={ACCOUNT: API_KEY, BE: BE_KEY}, account_field=STORE) as api:
        yield api


@pytest.fixture
def engine(server_database_url: str) -> Iterator[Engine]:
    engine = make_engine(server_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def env(server_database_url: str, api: RunningFakeApi, broker: redis.Redis,
        tmp_path: Path) -> dict[str, str]:
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps({BE: BE_KEY}))
    return worker_environment(server_database_url, api.url, SPOTLER_ACCOUNTS_FILE=str(accounts))


def enqueue(engine: Engine, database_url: str, account: str | None, orderids: list[str],
            per_transaction: int = 50) -> None:
    settings = Settings(database_url=database_url, broker_url=REDIS_URL, account=ACCOUNT)
    for start in range(0, len(orderids), per_transaction):
        with Session(engine) as session, session.begin():
            for orderid in orderids[start:start + per_transaction]:
                enqueue_purchase(session, purchase(orderid, **{STORE: account or ACCOUNT}),
                                 account=account, settings=settings)


def counts(engine: Engine, account: str) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT status, count(*) FROM outbox_events WHERE account = :a GROUP BY status"),
            {"a": account}).all())


def latencies(engine: Engine, account: str, orderids: list[str]) -> list[float]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT orderid, created_at, delivered_at FROM outbox_events WHERE account = :a "
            "AND delivered_at IS NOT NULL"), {"a": account}).all()
    wanted = set(orderids)
    return [(r.delivered_at - r.created_at).total_seconds() for r in rows if r.orderid in wanted]


def received(api: RunningFakeApi) -> dict[str, dict[str, int]]:
    got = api.state.received_by_account()
    assert got["misdirected_events"] == 0
    return dict(got["accounts"])


def test_two_accounts_of_2000_orders_with_the_same_orderids_each_arrive_once_with_their_key(
    engine: Engine, env: dict[str, str], api: RunningFakeApi, server_database_url: str,
    tmp_path: Path,
) -> None:
    orderids = [str(100000 + i) for i in range(2000)]  # Magento-like increment ids, per store
    with running_worker("w1", env, tmp_path):
        for start in range(0, 2000, 200):  # the two stores' orders interleaved
            enqueue(engine, server_database_url, None, orderids[start:start + 200])
            enqueue(engine, server_database_url, BE, orderids[start:start + 200])
        wait_for(lambda: counts(engine, "") == {"delivered": 2000}
                 and counts(engine, BE) == {"delivered": 2000}, 180, "4,000 deliveries")
    assert received(api) == {ACCOUNT: dict.fromkeys(orderids, 1), BE: dict.fromkeys(orderids, 1)}
    assert all(entry["status"] == 200 for entry in api.state.request_log())


def test_one_accounts_wrong_key_for_20_s_leaves_the_other_delivering_and_loses_no_attempt(
    engine: Engine, env: dict[str, str], api: RunningFakeApi, server_database_url: str,
    tmp_path: Path,
) -> None:
    with running_worker("w1", env, tmp_path) as worker:
        before = [f"NL-B-{i}" for i in range(40)]
        for i in range(0, 40, 4):  # the normal latency, measured in this run
            enqueue(engine, server_database_url, None, before[i:i + 4])
            time.sleep(0.25)
        wait_for(lambda: counts(engine, "") == {"delivered": 40}, 30, "the first orders")

        api.state.set_account_key(BE, "rotated-at-spotler")  # our shop-be key is wrong now
        paused_at = time.monotonic()
        stuck = [f"BE-{i}" for i in range(100)]
        enqueue(engine, server_database_url, BE, stuck)
        during: list[str] = []
        while time.monotonic() - paused_at < 17:
            batch = [f"NL-P-{len(during) + i}" for i in range(4)]
            enqueue(engine, server_database_url, None, batch)
            during += batch
            time.sleep(0.25)
        wait_for(lambda: counts(engine, "").get("delivered") == 40 + len(during), 3,
                 "the other account's orders during the pause")
        assert time.monotonic() - paused_at < 20, "the pause ended before it was checked"
        assert counts(engine, BE) == {"pending": 100}
        with engine.connect() as conn:
            assert conn.execute(sa.text(
                "SELECT paused_reason FROM dispatch_control WHERE account = :a"),
                {"a": BE}).scalar_one()
            assert conn.execute(sa.text("SELECT max(attempts) FROM outbox_events "
                                        "WHERE account = :a"), {"a": BE}).scalar_one() == 0
        time.sleep(max(0.0, 20 - (time.monotonic() - paused_at)))

        api.state.set_account_key(BE, BE_KEY)
        wait_for(lambda: counts(engine, BE) == {"delivered": 100}, 30, "the paused account")
        assert API_KEY not in worker.output() and BE_KEY not in worker.output()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT min(attempts), max(attempts) FROM outbox_events "
                                    "WHERE account = :a"), {"a": BE}).one() == (1, 1)
    assert received(api)[BE] == dict.fromkeys(stuck, 1)
    normal = statistics.median(latencies(engine, "", before))
    paused = statistics.median(latencies(engine, "", during))
    print(f"\nother account's median latency: {normal * 1000:.0f} ms before, "
          f"{paused * 1000:.0f} ms during the pause ({len(during)} orders)")
    # Within one run; the floor keeps a few ms of noise on a tiny median from failing it, and
    # is far below a stall behind the paused account (seconds).
    assert paused <= max(3 * normal, 0.25)


def test_a_budget_of_5_requests_a_second_holds_for_three_workers_together(
    engine: Engine, env: dict[str, str], api: RunningFakeApi, server_database_url: str,
    tmp_path: Path,
) -> None:
    env = {**env, "SPOTLER_MAX_REQUESTS_PER_SECOND": "5", "SPOTLER_BATCH_SIZE": "4",
           "OUTBOX_LEASE_SECONDS": "30"}
    orderids = [f"R-{i}" for i in range(120)]  # 30 requests per account
    enqueue(engine, server_database_url, None, orderids)
    enqueue(engine, server_database_url, BE, orderids)
    with running_worker("w1", env, tmp_path), \
            running_worker("w2", env, tmp_path), \
            running_worker("w3", env, tmp_path):
        wait_for(lambda: counts(engine, "") == {"delivered": 120}
                 and counts(engine, BE) == {"delivered": 120}, 90, "both accounts drained")
    log = api.state.request_log()
    for account in (ACCOUNT, BE):
        arrivals = sorted(e["arrived"] for e in log if e["account"] == account)
        busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
        print(f"\n{account}: {len(arrivals)} requests over {arrivals[-1] - arrivals[0]:.1f} s, "
              f"at most {busiest} in one second")
        assert busiest <= 5
        assert len(arrivals) >= 30 and arrivals[-1] - arrivals[0] >= (len(arrivals) - 1) / 5
    assert received(api) == {ACCOUNT: dict.fromkeys(orderids, 1), BE: dict.fromkeys(orderids, 1)}
