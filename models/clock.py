"""The one clock: the outbox database's. Every "now" a worker judges by comes from here.

Leases, due times, holds, pauses and request budgets are compared across workers on different
hosts; a host whose clock is ahead would take leases another worker still holds. So each worker
reads the database's time, not its host's: `DatabaseClock` is the host's clock corrected by the
offset measured against the database now and then. `utc_now` is the host's clock, for what
only this process compares (durations, log lines) and for SQLite (the database is this host).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger("spotler_outbox.clock")

Clock = Callable[[], dt.datetime]
# Measured again this often: an offset drifts by NTP steps or a VM's suspend, never fast.
REMEASURE_SECONDS = 30.0
# A host off the database by more than this is worth an operator's look (it is corrected).
SKEW_WORTH_LOGGING_SECONDS = 2.0
_DATABASE_TIME = {
    "postgresql": "SELECT clock_timestamp()",  # now() would be the transaction's start
    "mysql": "SELECT UTC_TIMESTAMP(6)",
    "mariadb": "SELECT UTC_TIMESTAMP(6)",
}


def utc_now() -> dt.datetime:
    """The host's clock, as an aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


def as_utc(value: Any) -> dt.datetime | None:
    """A datetime read from any dialect (naive UTC, aware, or ISO text on SQLite) as aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"not a datetime: {type(value).__name__}")
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class DatabaseClock:
    """Now on the database's clock: the host's plus the last measured offset.

    Measuring costs one round trip on a connection of its own, every REMEASURE_SECONDS; while
    the database cannot be reached the last offset stays (time goes on at the host's pace).
    """

    def __init__(self, engine: Engine, *, host: Clock = utc_now,
                 remeasure_seconds: float = REMEASURE_SECONDS, log_skew: bool = False) -> None:
        """`log_skew`: say so when the host is off (one clock per worker does: its timers')."""
        self.engine = engine
        self.log_skew = log_skew
        self.host = host
        self.remeasure_seconds = remeasure_seconds
        self.offset = dt.timedelta(0)
        self._query = _DATABASE_TIME.get(engine.dialect.name)
        self._next_measure = 0.0  # time.monotonic(): measure on first use
        self._lock = threading.Lock()
        self._logged_skew: float | None = None

    def __call__(self) -> dt.datetime:
        if self._query is not None and time.monotonic() >= self._next_measure:
            self._measure()
        return self.host() + self.offset

    def _measure(self) -> None:
        with self._lock:
            if time.monotonic() < self._next_measure:
                return  # another thread measured meanwhile
            # Whatever happens, not again before the interval: an outage must not cost every
            # caller a failed connection attempt.
            self._next_measure = time.monotonic() + self.remeasure_seconds
            try:
                with self.engine.connect() as conn:
                    before = self.host()
                    database = as_utc(conn.exec_driver_sql(str(self._query)).scalar_one())
                    after = self.host()
            except sa.exc.DBAPIError as e:
                log.debug("database clock not measured (%s); keeping the offset %.3f s",
                          type(e).__name__, self.offset.total_seconds())
                return
            assert database is not None
            self.offset = database - (before + (after - before) / 2)
            if self.log_skew:
                self._log_skew(self.offset.total_seconds())

    def _log_skew(self, seconds: float) -> None:
        skewed = abs(seconds) > SKEW_WORTH_LOGGING_SECONDS
        was_skewed = self._logged_skew is not None
        if skewed and (not was_skewed or abs(seconds - (self._logged_skew or 0)) > 60):
            log.warning("this host's clock is %.1f s %s the database's: the worker judges "
                        "leases and due times on the database's clock; check NTP on this host",
                        abs(seconds), "behind" if seconds > 0 else "ahead of")
            self._logged_skew = seconds
        elif not skewed and was_skewed:
            log.warning("this host's clock agrees with the database's again (%.3f s)", seconds)
            self._logged_skew = None


def clock_for(engine: Engine, *, log_skew: bool = False) -> Clock:
    """The clock a worker or an operator's command uses on this database."""
    if engine.dialect.name not in _DATABASE_TIME:
        return utc_now
    return DatabaseClock(engine, log_skew=log_skew)
