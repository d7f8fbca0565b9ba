"""Engines for the outbox database, with the per-dialect settings the claim relies on."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url

from spotler_outbox.models.errors import AnswerNotRecorded, ConfigurationError
from spotler_outbox.models.tables import MYSQL_FAMILY

SUPPORTED_BACKENDS = ("postgresql", "mysql", "mariadb", "sqlite")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned for the outbox: READ COMMITTED on MariaDB, WAL and write locks on SQLite."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as e:
        raise ConfigurationError(f"OUTBOX_DATABASE_URL: not a database URL ({e})") from e
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise ConfigurationError(
            f"OUTBOX_DATABASE_URL: {backend!r} is not supported; use postgresql+psycopg, "
            "mysql+pymysql (MySQL 8, MariaDB) or sqlite"
        )
    # hide_parameters: an error message must not carry payloads (e-mail addresses) to logs.
    options: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True, **kwargs}
    if backend in MYSQL_FAMILY:
        # REPEATABLE READ takes gap locks that make SKIP LOCKED claims block each other.
        options.setdefault("isolation_level", "READ COMMITTED")
        if "+" not in parsed.drivername and not _installed("MySQLdb"):
            raise ConfigurationError(
                f"OUTBOX_DATABASE_URL: {parsed.drivername}:// needs the MySQLdb driver, which is "
                "not installed; use mysql+pymysql://user:password@host/database")
        engine = sa.create_engine(url, **options)
        _speak_mysql8(engine)
        return engine
    if backend == "sqlite":
        options.pop("pool_pre_ping")
        engine = sa.create_engine(url, **options)
        _make_sqlite_take_write_locks(engine)
        return engine
    if parsed.get_driver_name() == "psycopg":
        # psycopg 3 prepares a statement on the server after a few runs; behind a pooler in
        # transaction mode (PgBouncer before 1.21, most managed set-ups) the next transaction
        # may run on another server connection, where it does not exist. The price, a parse
        # and plan per statement, is in the database's CPU per event (`./dev bench`).
        connect_args = {"prepare_threshold": None, **options.pop("connect_args", {})}
        options["connect_args"] = connect_args
    return sa.create_engine(url, **options)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _speak_mysql8(engine: Engine) -> None:
    # On MariaDB SQLAlchemy would use RETURNING and sequences, which MySQL 8 lacks: turned off
    # once the dialect has read the server version, so what the tests run on MariaDB is what
    # a MySQL 8 server gets (tests/mysql8_guard checks every statement).
    @event.listens_for(engine, "connect")
    def _connect(_dbapi_connection: Any, _record: Any) -> None:
        dialect = engine.dialect
        dialect.insert_returning = dialect.delete_returning = False
        dialect.update_returning = dialect.supports_sequences = False


def _make_sqlite_take_write_locks(engine: Engine) -> None:
    # pysqlite's deferred BEGIN lets two processes read the same due rows and then fail on
    # upgrade; BEGIN IMMEDIATE takes the single writer lock at once, so claims queue instead.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def shown_url(url: str | URL) -> str:
    """The URL with its password masked: how a database is named in output and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(unparseable database URL)"


def require_existing_sqlite(engine: Engine) -> None:
    """Refuse a SQLite path that does not exist: connecting would create an empty file and
    then report its missing tables for ever."""
    path = engine.url.database or ""
    if (engine.dialect.name == "sqlite" and path not in ("", ":memory:")
            and not path.startswith("file:") and not Path(path).exists()):
        raise ConfigurationError(f"no SQLite outbox at {path}; create it with `spotler-outbox "
                                 "migrate` or point OUTBOX_DATABASE_URL at it")


# A node that turned read-only in a failover, or a standby: PostgreSQL's SQLSTATE (psycopg
# raises it as an InternalError). PyMySQL and mysqlclient raise MySQL's and MariaDB's
# read-only errors (1290, 1792, 1836) as OperationalError already (test_outage_errors.py).
_READ_ONLY_SQLSTATES = {"25006"}


def database_unavailable(error: BaseException) -> bool:
    """Whether `error` means the outbox database cannot be used right now (down, unreachable,
    or read-only after a failover), rather than a bug: an outage is waited out and logged
    once, a bug is raised with its traceback."""
    if isinstance(error, AnswerNotRecorded):
        return True
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    if isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError) \
            or error.connection_invalidated:
        return True
    return getattr(error.orig, "sqlstate", None) in _READ_ONLY_SQLSTATES


_MISSING_TABLE = re.compile(r"no such table|relation .* does not exist|table .* doesn't exist",
                            re.IGNORECASE)


def describe_database_error(error: sa.exc.SQLAlchemyError, url: str | URL) -> str:
    """One line for an operator: what the database said, and which database (its URL with the
    password field masked; drivers do not echo passwords in their messages)."""
    cause = error.orig if isinstance(error, sa.exc.DBAPIError) else error
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if _MISSING_TABLE.search(detail):
        return (f"the outbox tables are missing in {shown_url(url)} ({detail}); run "
                "`spotler-outbox migrate`")
    return f"cannot use the database at {shown_url(url)}: {detail}"
