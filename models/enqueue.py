"""The order system's entry point: validate a Purchase and add it to the caller's transaction.

One core behind every stack, `insert_row`: the statement, compiled for the driver's parameter
style; a duplicate found, never raised; a PostgreSQL caller at REPEATABLE READ or SERIALIZABLE
kept usable by a savepoint; one result type. It runs on the DB-API cursor of the caller's own
connection, inside the caller's transaction. An adapter only says where that connection is and
when to wake the workers: SQLAlchemy here (Session, scoped_session, Connection; the asyncio API
through `run_sync`, in spotler_outbox.asyncio), spotler_outbox.django and spotler_outbox.dbapi.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session, scoped_session

from spotler_outbox.models import wakeup
from spotler_outbox.models.accounts import row_account
from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.settings import ProducerSettings, get_producer_settings
from spotler_outbox.models.tables import MYSQL_FAMILY, OutboxEvent
from spotler_outbox.models.validation import validated_json

_table = cast(sa.Table, OutboxEvent.__table__)
_KEY = ("account", "event", "orderid")  # the outbox's unique key
SessionLike = Session | scoped_session[Any] | sa.Connection
SAVEPOINT = "spotler_outbox_enqueue"
_SNAPSHOT_LEVELS = ("REPEATABLE READ", "SERIALIZABLE")
_SERIALIZATION_FAILURE = "40001"


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """The order's outbox row, whichever entry point added it.

    `created` is False when the orderid was already in the outbox (in this account); `id` is
    then the existing row's. `visible` is False when that row was committed by another
    transaction after the snapshot of a REPEATABLE READ or SERIALIZABLE caller: the caller's
    own queries cannot see it, so its id was read on a connection of its own.
    """

    id: int
    created: bool
    visible: bool = True

    @property
    def duplicate(self) -> bool:
        return not self.created


def outbox_values(event: Mapping[str, Any], settings: ProducerSettings,
                  account: str | None = None) -> dict[str, Any]:
    """The validated row's column values; raises InvalidEvent naming every bad field.

    `account` names the Spotler account (store) the order goes to; orderids need only be
    unique within their account. Without it, the default account (SPOTLER_ACCOUNT).
    `validated` tells the worker it may send the payload as stored, without validating it
    again; rows from plain SQL leave it false.
    """
    payload, text = validated_json(event, settings)
    return {"account": row_account(account, settings), "event": payload["event"],
            "orderid": payload["orderid"], "payload": text, "validated": True}


# --- the core ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """The caller's connection, in its open transaction, as its driver sees it."""

    dbapi_connection: Any  # a DB-API connection (SQLAlchemy's asyncio adapters are ones too)
    driver_connection: Any  # the driver's own object: psycopg's carries prepare_threshold
    dialect: str  # "postgresql", "mysql" (MariaDB too) or "sqlite"
    paramstyle: str  # the DB-API parameter style the cursor takes
    # The transaction reads one snapshot: PostgreSQL at REPEATABLE READ or SERIALIZABLE.
    snapshot: bool = False
    # A connection of its own, for the id of a row the caller's snapshot cannot see.
    outside: Callable[[], AbstractContextManager[Target]] | None = None


def insert_row(target: Target, values: Mapping[str, Any]) -> EnqueueResult:
    """Add the row, or find the one with its key, on the target's connection; commits nothing.

    The database resolves a concurrent insert of the same key: the second waits for the first
    and then inserts nothing, instead of failing with an error that would poison the caller's
    transaction. Under a snapshot the savepoint keeps that transaction usable when PostgreSQL
    fails the insert (40001) because the duplicate committed after the snapshot began.
    """
    insert, find = statements(target.dialect, target.paramstyle)
    with never_prepared(target.driver_connection):
        cursor = target.dbapi_connection.cursor()
        try:
            if target.snapshot:
                new_id, visible = _insert_in_savepoint(cursor, insert, values)
                if not visible:
                    return EnqueueResult(_find_outside(target, values), created=False,
                                         visible=False)
            else:
                new_id = _insert(cursor, insert, values, target.dialect)
            if new_id is not None:
                return EnqueueResult(new_id, created=True)
            cursor.execute(find.text, find.bind(values))
            return EnqueueResult(int(cursor.fetchone()[0]), created=False)
        finally:
            cursor.close()


@contextmanager
def never_prepared(driver_connection: Any) -> Iterator[None]:
    """psycopg 3 prepares a statement on the server once a connection has run it
    prepare_threshold times (5 by default). Behind PgBouncer in transaction mode the next
    transaction may get another server connection, where that statement does not exist: the
    enqueue's statements are never prepared, whatever the shop's engine says."""
    threshold = getattr(driver_connection, "prepare_threshold", None)
    if threshold is None:
        yield
        return
    driver_connection.prepare_threshold = None
    try:
        yield
    finally:
        driver_connection.prepare_threshold = threshold


def _insert(cursor: Any, insert: Sql, values: Mapping[str, Any], dialect: str) -> int | None:
    """The new row's id, or None when the key was already there."""
    cursor.execute(insert.text, insert.bind(values))
    if dialect == "postgresql":
        row = cursor.fetchone()  # RETURNING id: no row for ON CONFLICT DO NOTHING
        return None if row is None else int(row[0])
    # INSERT IGNORE and SQLite's DO NOTHING report a duplicate as 0 rows; the new id comes
    # with the answer (MySQL's OK packet), so no RETURNING, which MySQL 8 lacks.
    return int(cursor.lastrowid) if cursor.rowcount == 1 else None


def _insert_in_savepoint(cursor: Any, insert: Sql,
                         values: Mapping[str, Any]) -> tuple[int | None, bool]:
    """(new id or None, whether a duplicate is visible to the caller's snapshot).

    Only under a snapshot: at READ COMMITTED the failure cannot happen, and the savepoint's
    two round trips would double the cost of an enqueue.
    """
    cursor.execute(f"SAVEPOINT {SAVEPOINT}")
    try:
        new_id = _insert(cursor, insert, values, "postgresql")
    except Exception as e:
        if _sqlstate(e) != _SERIALIZATION_FAILURE:
            raise  # the caller's transaction is theirs to roll back
        cursor.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        return None, False
    cursor.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
    return new_id, True


def _sqlstate(error: BaseException) -> str | None:
    """psycopg and SQLAlchemy's asyncpg adapter say `sqlstate`, psycopg2 `pgcode`."""
    return getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)


def _find_outside(target: Target, values: Mapping[str, Any]) -> int:
    if target.outside is None:
        raise ConfigurationError("a duplicate committed after this transaction's snapshot "
                                 "cannot be read without a connection of its own")
    with target.outside() as other:
        find = statements(other.dialect, other.paramstyle)[1]
        with never_prepared(other.driver_connection):
            cursor = other.dbapi_connection.cursor()
            try:
                cursor.execute(find.text, find.bind(values))
                return int(cursor.fetchone()[0])
            finally:
                cursor.close()


def is_snapshot_level(level: Any) -> bool:
    """An isolation level as SQLAlchemy ("REPEATABLE READ", "REPEATABLE_READ") or psycopg
    (IsolationLevel.REPEATABLE_READ) names it: does the transaction read one snapshot?"""
    name = getattr(level, "name", level)
    return str(name).upper().replace("_", " ") in _SNAPSHOT_LEVELS


# --- the statements ------------------------------------------------------------------------

@dataclass(frozen=True)
class Sql:
    """A statement as text in one parameter style, and how to pass it the row's values."""

    text: str
    order: tuple[str, ...] | None  # positional styles: the values' names in order

    def bind(self, values: Mapping[str, Any]) -> Any:
        if self.order is None:
            return values
        return tuple(values[name] for name in self.order)


_DIALECTS: dict[str, Callable[..., sa.Dialect]] = {
    "postgresql": postgresql.base.PGDialect, "mysql": mysql.base.MySQLDialect,
    "sqlite": sqlite.base.SQLiteDialect,
}


def family(dialect_name: str) -> str:
    """A dialect's name as the statements know it: MariaDB speaks MySQL's."""
    return "mysql" if dialect_name in MYSQL_FAMILY else dialect_name


@cache
def statements(dialect: str, paramstyle: str) -> tuple[Sql, Sql]:
    """(insert, find existing) compiled once per database and parameter style: psycopg's
    pyformat, asyncpg's $1, aiomysql's %s, sqlite3's ?. Building them per call cost more than
    the round trip."""
    if dialect not in _DIALECTS:
        raise ConfigurationError(f"spotler_outbox: no outbox on a {dialect!r} database; use "
                                 "PostgreSQL, MySQL 8 / MariaDB or SQLite")
    target = _DIALECTS[dialect](paramstyle=paramstyle)
    params: dict[str, Any] = {name: sa.bindparam(name)
                              for name in (*_KEY, "payload", "validated")}
    insert: sa.Insert
    if dialect == "postgresql":
        insert = (postgresql.insert(_table).values(params)
                  .on_conflict_do_nothing(index_elements=list(_KEY)).returning(_table.c.id))
    elif dialect == "sqlite":
        insert = sqlite.insert(_table).values(params).on_conflict_do_nothing(
            index_elements=list(_KEY))
    else:
        # INSERT IGNORE inserts nothing for a duplicate; values are validated and bounded, so
        # the other errors IGNORE would downgrade cannot occur here.
        insert = mysql.insert(_table).values(params).prefix_with("IGNORE")
    find = sa.select(_table.c.id).where(*(_table.c[name] == sa.bindparam(name)
                                          for name in _KEY))
    if dialect == "mysql":
        # Under REPEATABLE READ (MariaDB's default) INSERT IGNORE sees a row another
        # transaction committed after our snapshot, but a plain SELECT does not: read the
        # latest version, as the insert did.
        find = find.with_for_update(read=True)
    return _compiled(insert, target), _compiled(find, target)


def _compiled(statement: sa.Insert | sa.Select[Any], dialect: sa.Dialect) -> Sql:
    compiled = statement.compile(dialect=dialect)
    order = tuple(compiled.positiontup or ()) if dialect.positional else None
    return Sql(str(compiled), order)


# --- the SQLAlchemy adapter ----------------------------------------------------------------

def enqueue_purchase(
    session: SessionLike, event: Mapping[str, Any], *, account: str | None = None,
    settings: ProducerSettings | None = None,
) -> EnqueueResult:
    """Validate `event` and add it to the outbox inside the caller's transaction.

    `session` is a SQLAlchemy Session, a scoped_session (Flask-SQLAlchemy's `db.session`) or a
    Connection. Nothing is committed here: the order and its event commit or roll back
    together, and the workers are woken once they have. A second enqueue of the same orderid
    (even from a concurrent transaction) returns the existing row; it never raises on the
    duplicate and never aborts the caller's transaction. Raises InvalidEvent, naming every
    bad field, before touching the database. `account` names the order's Spotler account
    (store); without it, the default account. `settings` defaults to the producer's, read
    from the environment.
    """
    settings = settings or get_producer_settings()
    return enqueue_values(session, outbox_values(event, settings, account), settings)


def enqueue_values(session: SessionLike, values: Mapping[str, Any],
                   settings: ProducerSettings) -> EnqueueResult:
    """The core on the session's connection, and the wake-up after its commit."""
    if isinstance(session, sa.Connection):
        conn = session
        if not conn.in_transaction():
            conn.begin()  # what a statement would autobegin: the caller's commit() ends it
    else:
        conn = session.connection()
    result = insert_row(sqlalchemy_target(conn), values)
    if result.created and settings.wakeup_enabled:
        if isinstance(session, sa.Connection):
            wakeup.wake_after_connection_commit(session, settings.broker_url)
        else:
            wakeup.wake_after_session_commit(session, settings.broker_url)
    return result


def sqlalchemy_target(conn: sa.Connection) -> Target:
    """The connection's DB-API connection, and whether its transaction reads one snapshot,
    known without a round trip: from the connection's or the engine's isolation level (also
    the server default, read once at first connect). A level set by SQL inside the transaction
    (SET TRANSACTION ...) is not seen: docs/integrating.md says to set it on the engine."""
    pooled = conn.connection
    dialect = conn.dialect
    name = family(dialect.name)
    level = conn.get_execution_options().get("isolation_level") or conn.default_isolation_level
    return Target(pooled.dbapi_connection, pooled.driver_connection, name, dialect.paramstyle,
                  snapshot=name == "postgresql" and is_snapshot_level(level),
                  outside=partial(_outside, conn.engine))


@contextmanager
def _outside(engine: sa.Engine) -> Iterator[Target]:
    with engine.connect() as other:
        pooled = other.connection
        yield Target(pooled.dbapi_connection, pooled.driver_connection,
                     family(other.dialect.name), other.dialect.paramstyle)
