"""The workers' "now" is the database's, whatever the host's clock says.

The oracle is the database's own clock, read with a plain query beside the clock under test.
"""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import sqlalchemy as sa

from spotler_outbox.models.clock import DatabaseClock, as_utc, clock_for, utc_now
from spotler_outbox.models.database import make_engine

DATABASE_NOW = {"postgresql": "SELECT clock_timestamp()", "mysql": "SELECT UTC_TIMESTAMP(6)",
                "mariadb": "SELECT UTC_TIMESTAMP(6)"}


def test_a_workers_clock_reads_the_databases_time_though_its_host_is_ninety_seconds_ahead(
    server_database_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    engine = make_engine(server_database_url)
    try:
        ahead = DatabaseClock(engine, host=lambda: utc_now() + dt.timedelta(seconds=90),
                              log_skew=True)
        with caplog.at_level(logging.WARNING, logger="spotler_outbox.clock"):
            readings = [ahead() for _ in range(3)]
        with engine.connect() as conn:
            database = as_utc(conn.exec_driver_sql(
                DATABASE_NOW[engine.dialect.name]).scalar_one())
        assert database is not None
        for reading in readings:
            assert abs((reading - database).total_seconds()) < 2
        # Said once, not on every reading.
        assert [r.getMessage()[:40] for r in caplog.records] == [
            "this host's clock is 90.0 s ahead of the"]
    finally:
        engine.dispose()


def test_the_clock_a_worker_gets_for_a_server_database_is_the_databases(
    server_database_url: str,
) -> None:
    engine = make_engine(server_database_url)
    try:
        assert isinstance(clock_for(engine), DatabaseClock)
    finally:
        engine.dispose()


def test_on_sqlite_the_database_is_this_host_so_the_host_clock_is_used() -> None:
    engine = sa.create_engine("sqlite://")
    assert clock_for(engine) is utc_now
