"""Enqueue on a raw DB-API connection: psycopg (3 or 2), PyMySQL / mysqlclient, or sqlite3.

For order code that holds a driver's connection rather than SQLAlchemy's::

    from spotler_outbox import dbapi

    with psycopg.connect(dsn) as conn:          # one transaction: the order and its event
        conn.execute("INSERT INTO orders ...")
        dbapi.enqueue_purchase(conn, event)     # validates first: InvalidEvent names the field
    dbapi.wake_workers()                        # after the commit: deliver now, not at the sweep

Nothing is committed here. The insert is the one every entry point runs (models.enqueue's
core), so a duplicate orderid is a no-op on every database, also under REPEATABLE READ.
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any

from spotler_outbox.models import wakeup
from spotler_outbox.models.enqueue import (
    EnqueueResult,
    Target,
    insert_row,
    is_snapshot_level,
    outbox_values,
)
from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.settings import ProducerSettings, get_producer_settings

__all__ = ["EnqueueResult", "Enqueued", "enqueue_purchase", "wake_workers"]

Enqueued = EnqueueResult  # the name this module's result had before there was one type

# The driver's module -> the database its SQL is for, and the parameter style it takes.
_DRIVERS = {"psycopg": ("postgresql", "pyformat"), "psycopg2": ("postgresql", "pyformat"),
            "pymysql": ("mysql", "pyformat"), "MySQLdb": ("mysql", "pyformat"),
            "sqlite3": ("sqlite", "named")}
# psycopg2 numbers its levels its own way (psycopg 3 has IsolationLevel, with names).
_PSYCOPG2_LEVELS = {1: "READ COMMITTED", 2: "REPEATABLE READ", 3: "SERIALIZABLE",
                    4: "READ UNCOMMITTED"}
_server_default_snapshot: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def enqueue_purchase(
    connection: Any, event: Mapping[str, Any], *, account: str | None = None,
    settings: ProducerSettings | None = None,
) -> EnqueueResult:
    """Validate `event` and insert its outbox row in the connection's open transaction."""
    settings = settings or get_producer_settings()
    values = outbox_values(event, settings, account)
    return insert_row(dbapi_target(connection), values)


def wake_workers(*, settings: ProducerSettings | None = None) -> None:
    """Ask the workers to deliver now; call it after the commit (before it, a worker could
    look too early). Returns at once; without it the sweeper delivers within its interval."""
    settings = settings or get_producer_settings()
    if settings.wakeup_enabled:
        wakeup.request_dispatch(settings.broker_url)


def dbapi_target(
    connection: Any,
    outside: Callable[[], AbstractContextManager[Target]] | None = None,
) -> Target:
    """The core's view of a driver's connection; `outside` opens another connection to the
    same database (by default one made from this connection's own parameters)."""
    module = _module_of(connection)
    dialect, paramstyle = _DRIVERS[module]
    snapshot = dialect == "postgresql" and _snapshot(connection, module)
    return Target(connection, connection, dialect, paramstyle, snapshot=snapshot,
                  outside=outside or partial(_reconnect, connection, module))


def plain_target(connection: Any) -> Target:
    """The same, for a connection of its own that only reads (no snapshot to look at)."""
    dialect, paramstyle = _DRIVERS[_module_of(connection)]
    return Target(connection, connection, dialect, paramstyle)


def _module_of(connection: Any) -> str:
    module = type(connection).__module__.split(".")[0]
    if module not in _DRIVERS:
        raise ConfigurationError(
            f"spotler_outbox.dbapi: a {type(connection).__module__}.{type(connection).__name__}"
            " is not a supported connection; use psycopg, psycopg2, pymysql, MySQLdb or "
            "sqlite3 (or spotler_outbox.enqueue_purchase with SQLAlchemy)")
    return module


def _snapshot(connection: Any, module: str) -> bool:
    """Whether the connection's transactions read one snapshot: its isolation_level, or when
    that is the server's default, the default (asked once per connection)."""
    level = connection.isolation_level
    if module == "psycopg2" and isinstance(level, int):
        level = _PSYCOPG2_LEVELS.get(level)
    if level is not None:
        return is_snapshot_level(level)
    known = _server_default_snapshot.get(connection)
    if known is None:
        cursor = connection.cursor()
        try:
            cursor.execute("SHOW default_transaction_isolation")
            known = is_snapshot_level(cursor.fetchone()[0])
        finally:
            cursor.close()
        _server_default_snapshot[connection] = known
    return known


@contextmanager
def _reconnect(connection: Any, module: str) -> Iterator[Target]:
    """A new connection with this one's parameters (the password included), in autocommit."""
    if module == "psycopg":
        import psycopg

        other: Any = psycopg.connect(connection.info.dsn,
                                     password=connection.info.password or None,
                                     autocommit=True)
    else:
        other = importlib.import_module("psycopg2").connect(**connection.get_dsn_parameters(),
                                 password=connection.info.password)
        other.autocommit = True
    try:
        yield plain_target(other)
    finally:
        other.close()
