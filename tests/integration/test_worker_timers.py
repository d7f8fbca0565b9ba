"""The timers inside a real Celery worker (no beat): the sweep and retention run by themselves."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from spotler_outbox import enqueue_purchase
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.tables import events
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from tests.conftest import purchase
from tests.integration.fixtures import row, seed_row
from tests.integration.workers import REDIS_URL, running_worker, wait_for, worker_environment

SWEEP_SECONDS = 1.0
TASK_RECEIVED = re.compile(r"Task (spotler_outbox\.\w+)\[[^\]]+\] received")


@pytest.fixture
def engine(server_database_url: str) -> Iterator[Engine]:
    engine = make_engine(server_database_url)
    yield engine
    engine.dispose()


def tasks_received(log: str) -> list[str]:
    return TASK_RECEIVED.findall(log)


def insert_unannounced(engine: Engine, orderid: str) -> None:
    """A plain SQL insert whose wake-up is lost: on PostgreSQL with migration 0004's NOTIFY
    trigger bypassed (as for a listener that is down), so only the sweeper can find it."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text("INSERT INTO outbox_events (event, orderid, payload) "
                             "VALUES ('Purchase', :o, :p)"),
                     {"o": orderid, "p": json.dumps(purchase(orderid))})


def test_an_idle_worker_runs_no_task_and_its_timer_sends_a_plain_sql_row_within_the_interval(
    engine: Engine, api: RunningFakeApi, server_database_url: str, broker: redis.Redis,
    tmp_path: Path,
) -> None:
    env = worker_environment(server_database_url, api.url,
                             OUTBOX_SWEEP_INTERVAL_SECONDS=str(SWEEP_SECONDS))
    with running_worker("w1", env, tmp_path) as worker:
        # On PostgreSQL the listener wakes dispatch once as it starts (rows may have come
        # while nobody listened); after that, nothing.
        time.sleep(1)
        at_start = tasks_received(worker.output())
        assert at_start in ([], ["spotler_outbox.dispatch"])
        time.sleep(6 * SWEEP_SECONDS)  # six sweeps with nothing due
        assert tasks_received(worker.output()) == at_start
        assert not re.search(r"\bbeat\b|spotler_outbox\.sweep", worker.output())
        inserted = time.monotonic()
        insert_unannounced(engine, "S-1")
        wait_for(lambda: row(engine, "S-1").status == "delivered", 20, "the sweeper")
        took = time.monotonic() - inserted
        received = tasks_received(worker.output())
    print(f"plain SQL row delivered {took:.2f}s after its insert (sweep {SWEEP_SECONDS}s)")
    # Due for one interval, found by the next tick: two intervals, plus a dispatch's run.
    assert took < 2 * SWEEP_SECONDS + 3
    assert received and set(received) == {"spotler_outbox.dispatch"}
    assert api.state.received()["orderids"] == {"S-1": 1}


def test_retention_runs_by_itself_in_a_worker_and_a_re_enqueue_after_it_sends_nothing(
    engine: Engine, api: RunningFakeApi, server_database_url: str, broker: redis.Redis,
    tmp_path: Path,
) -> None:
    now = utc_now()
    old = {"status": "delivered", "attempts": 1, "last_http_status": 200,
           "delivered_at": now - dt.timedelta(days=31)}
    for orderid in ("R-1", "R-2"):
        seed_row(engine, orderid, **old)
    seed_row(engine, "R-NEW", **{**old, "delivered_at": now - dt.timedelta(days=29)})
    env = worker_environment(server_database_url, api.url, OUTBOX_RETENTION_DAYS="30",
                             OUTBOX_SWEEP_INTERVAL_SECONDS=str(SWEEP_SECONDS))
    with running_worker("w1", env, tmp_path) as worker:
        wait_for(lambda: row(engine, "R-2").purged_at is not None, 20, "retention")
        assert row(engine, "R-1").payload == row(engine, "R-2").payload == ""
        assert "jane.doe@example.com" in row(engine, "R-NEW").payload

        # The order system, and a plain SQL producer, enqueue the purged orders again.
        settings = Settings(database_url=server_database_url, broker_url=REDIS_URL)
        with Session(engine) as session, session.begin():
            assert not enqueue_purchase(session, purchase("R-1"), settings=settings).created
        with engine.begin() as conn:
            insert = ("INSERT INTO outbox_events (event, orderid, payload) VALUES "
                      "('Purchase', 'R-2', :p) ON DUPLICATE KEY UPDATE id = id"
                      if engine.dialect.name == "mysql" else
                      "INSERT INTO outbox_events (event, orderid, payload) VALUES "
                      "('Purchase', 'R-2', :p) ON CONFLICT (account, event, orderid) DO NOTHING")
            conn.execute(sa.text(insert), {"p": json.dumps(purchase("R-2"))})
        with Session(engine) as session, session.begin():  # a new order: the worker sends
            enqueue_purchase(session, purchase("R-3"), settings=settings)
        wait_for(lambda: row(engine, "R-3").status == "delivered", 20, "the new order")
        time.sleep(3 * SWEEP_SECONDS)
        log = worker.output()
    assert api.state.received()["orderids"] == {"R-3": 1}
    assert "retention: emptied 2 orders" in log
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 4
