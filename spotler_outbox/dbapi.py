"""Enqueue on a raw DB-API connection: psycopg (3 or 2), PyMySQL / mysqlclient, or sqlite3.

For order code that holds a driver's connection rather than SQLAlchemy's::

    from spotler_outbox import dbapi

    with psycopg.connect(dsn) as conn:          # one transaction: the order and its event
        conn.execute("INSERT INTO orders ...")
        dbapi.enqueue_purchase(conn, event)     # validates first: InvalidEvent names the field
    dbapi.wake_workers()                        # after the commit: deliver now, not at the sweep

Nothing is committed here. The statements are the ones the SQLAlchemy path runs (compiled
once per driver from the same table), so a duplicate orderid is a no-op on every database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from spotler_outbox.models import wakeup
from spotler_outbox.models.enqueue import compiled_statements, outbox_values
from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.settings import Settings, get_settings
from spotler_outbox.models.tables import MYSQL_FAMILY

__all__ = ["Enqueued", "enqueue_purchase", "wake_workers"]

# The driver's module -> the dialect whose SQL and parameter style it takes.
_DRIVERS = {"psycopg": "postgresql", "psycopg2": "postgresql", "pymysql": "mysql",
            "MySQLdb": "mysql", "sqlite3": "sqlite"}


class Enqueued(NamedTuple):
    """The outbox row's id; `created` is False when the orderid was already there."""

    id: int
    created: bool

    @property
    def duplicate(self) -> bool:
        return not self.created


def enqueue_purchase(
    connection: Any, event: Mapping[str, Any], *, account: str | None = None,
    settings: Settings | None = None,
) -> Enqueued:
    """Validate `event` and insert its outbox row in the connection's open transaction."""
    settings = settings or get_settings()
    values = outbox_values(event, settings, account)
    dialect = _dialect_of(connection)
    cursor = connection.cursor()
    try:
        return enqueue_with_cursor(cursor, dialect, values)
    finally:
        cursor.close()


def wake_workers(*, settings: Settings | None = None) -> None:
    """Ask the workers to deliver now; call it after the commit (before it, a worker could
    look too early). Returns at once; without it the sweeper delivers within its interval."""
    settings = settings or get_settings()
    if settings.wakeup_enabled:
        wakeup.request_dispatch(settings.broker_url)


def enqueue_with_cursor(cursor: Any, dialect: str, values: Mapping[str, Any]) -> Enqueued:
    """The insert, and the lookup of the existing row on a duplicate, on a DB-API cursor."""
    insert, find = compiled_statements(dialect, returning=True)
    cursor.execute(insert, values)
    if dialect in MYSQL_FAMILY:
        # No RETURNING on MySQL 8: IGNORE reports a duplicate as 0 rows.
        if cursor.rowcount == 1:
            return Enqueued(int(cursor.lastrowid), True)
    else:
        row = cursor.fetchone()
        if row is not None:
            return Enqueued(int(row[0]), True)
    cursor.execute(find, values)
    return Enqueued(int(cursor.fetchone()[0]), False)


def _dialect_of(connection: Any) -> str:
    module = type(connection).__module__.split(".")[0]
    if module not in _DRIVERS:
        raise ConfigurationError(
            f"spotler_outbox.dbapi: a {type(connection).__module__}.{type(connection).__name__}"
            " is not a supported connection; use psycopg, psycopg2, pymysql, MySQLdb or "
            "sqlite3 (or spotler_outbox.enqueue_purchase with SQLAlchemy)")
    return _DRIVERS[module]
