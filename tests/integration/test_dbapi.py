"""spotler_outbox.dbapi on the drivers' own connections: psycopg, PyMySQL and sqlite3."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from sqlalchemy.engine import make_url

from spotler_outbox import InvalidEvent, dbapi
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from tests.conftest import empty_database, purchase
from tests.integration.fixtures import statuses
from tests.integration.workers import REDIS_URL, running_worker, wait_for, worker_environment


def connect(backend: str, url: str) -> Any:
    """The driver's connection, opened the way order code opens it (no SQLAlchemy)."""
    parsed = make_url(url)
    if backend == "postgresql":
        return psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username,
                               dbname=parsed.database)
    if backend == "mariadb":
        return pymysql.connect(host=parsed.host, port=parsed.port, user=parsed.username,
                               password=parsed.password or "", database=parsed.database,
                               charset="utf8mb4", autocommit=False)
    return sqlite3.connect(parsed.database)


@pytest.fixture(params=("postgresql", "mariadb", "sqlite"))
def raw(request: pytest.FixtureRequest, tmp_root: Path) -> Iterator[tuple[Any, str]]:
    url = empty_database(request.param, tmp_root)
    conn = connect(request.param, url)
    yield conn, url
    conn.close()


def test_a_raw_connection_commits_the_row_with_the_order_and_a_rollback_leaves_none(
    raw: tuple[Any, str],
) -> None:
    conn, url = raw
    settings = Settings(database_url=url, wakeup_enabled=False)
    first = dbapi.enqueue_purchase(conn, purchase("D-1"), settings=settings)
    conn.commit()
    dbapi.enqueue_purchase(conn, purchase("D-2"), settings=settings)
    conn.rollback()
    again = dbapi.enqueue_purchase(conn, purchase("D-1", email="x@example.com"),
                                   settings=settings)
    conn.commit()
    assert first.created and again.duplicate and again.id == first.id
    engine = make_engine(url)
    assert statuses(engine) == {"D-1": "pending"}
    engine.dispose()


def test_a_bad_event_on_a_raw_connection_is_refused_with_its_field(
    raw: tuple[Any, str],
) -> None:
    conn, url = raw
    with pytest.raises(InvalidEvent, match=r"products\[0\]\.quantity"):
        dbapi.enqueue_purchase(conn, purchase("D-3", products=[{"id": "A", "quantity": 0}]),
                               settings=Settings(database_url=url, wakeup_enabled=False))
    conn.commit()
    engine = make_engine(url)
    assert statuses(engine) == {}
    engine.dispose()


def test_an_unknown_connection_type_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="not a supported connection"):
        dbapi.enqueue_purchase(object(), purchase("D-4"), settings=Settings(
            wakeup_enabled=False))


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_wake_workers_after_a_raw_commit_gets_the_order_delivered_without_a_sweeper(
    backend: str, tmp_root: Path, api: RunningFakeApi, broker: object, tmp_path: Path,
) -> None:
    url = empty_database(backend, tmp_root)
    settings = Settings(database_url=url, broker_url=REDIS_URL, wakeup_enabled=True)
    engine = make_engine(url)
    # The sweeper an hour away: only the wake-up (or, on PostgreSQL, LISTEN) starts a dispatch.
    env = worker_environment(url, api.url, OUTBOX_SWEEP_INTERVAL_SECONDS="3600")
    with running_worker("raw", env, tmp_path):
        conn = connect(backend, url)
        try:
            dbapi.enqueue_purchase(conn, purchase("D-woken"), settings=settings)
            conn.commit()
        finally:
            conn.close()
        dbapi.wake_workers(settings=settings)
        wait_for(lambda: statuses(engine).get("D-woken") == "delivered", 20, "the delivery")
    assert api.state.received()["orderids"] == {"D-woken": 1}
    engine.dispose()
