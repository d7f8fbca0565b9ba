"""PostgreSQL: a row inserted with plain SQL is delivered at once, not at the next sweep."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis
import sqlalchemy as sa

from spotler_outbox import migrations
from spotler_outbox.models.database import make_engine
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from tests.conftest import TEST_DB, backend_url, purchase
from tests.integration.fixtures import insert_raw, statuses
from tests.integration.workers import running_worker, wait_for, worker_environment

NOTIFY_TRIGGER = "SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_events_notify'"


def test_a_row_inserted_with_plain_sql_on_postgresql_is_delivered_without_waiting_for_the_sweeper(
    postgres_url: str, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    env = worker_environment(postgres_url, api.url, OUTBOX_SWEEP_INTERVAL_SECONDS="60")
    engine = make_engine(postgres_url)
    with running_worker("listener", env, tmp_path) as worker:
        wait_for(lambda: "listening for new outbox rows" in worker.output(), 10, "LISTEN")
        time.sleep(1.5)  # the start-up sweep is over; the next one is a minute away
        timings = []
        for n in range(3):
            started = time.monotonic()
            insert_raw(engine, f"N-{n}", json.dumps(purchase(f"N-{n}")))
            wait_for(lambda n=n: statuses(engine).get(f"N-{n}") == "delivered", 20,
                     f"delivery of N-{n}")
            timings.append(time.monotonic() - started)
    engine.dispose()
    # Well inside the 60 s sweep interval: only the notification can have woken the worker.
    assert max(timings) < 10, timings
    assert api.state.received()["orderids"] == {"N-0": 1, "N-1": 1, "N-2": 1}


def test_the_notify_trigger_exists_on_postgresql_only_and_its_downgrade_removes_it(
    tmp_root: Path,
) -> None:
    url = backend_url("postgresql", tmp_root, database=f"{TEST_DB}_notify")
    migrations.upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text(NOTIFY_TRIGGER)).scalar_one() == 1
    migrations.downgrade(url, "0003")
    with engine.connect() as conn:
        assert conn.execute(sa.text(NOTIFY_TRIGGER)).scalar_one() == 0
    migrations.upgrade(url)
    engine.dispose()
