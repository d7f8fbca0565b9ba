"""The order system's entry point: validate a Purchase and add it to the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session, scoped_session

from spotler_outbox.models import wakeup
from spotler_outbox.models.accounts import row_account
from spotler_outbox.models.settings import Settings, get_settings
from spotler_outbox.models.tables import MYSQL_FAMILY, OutboxEvent
from spotler_outbox.models.validation import canonical_json, validate_purchase

_table = cast(sa.Table, OutboxEvent.__table__)
_KEY = ("account", "event", "orderid")  # the outbox's unique key
SessionLike = Session | scoped_session[Any] | sa.Connection


class EnqueueResult:
    """The outbox row for the order; `created` is False when the orderid was already there.

    `id` and `row` are read on first use: most callers need only `created`, and the enqueue
    stays one round trip. Read while the caller's transaction is open, they come from it; after
    it ended, from a connection of their own (the row exists once the transaction committed).
    """

    __slots__ = ("_conn", "_id", "_row", "_session", "_values", "created", "visible")

    def __init__(self, session: SessionLike, conn: sa.Connection, values: Mapping[str, str],
                 created: bool, row_id: int | None = None, *, visible: bool = True) -> None:
        self._session = None if isinstance(session, sa.Connection) else session
        self._conn = conn
        self._values = values
        self._id = row_id
        self._row: OutboxEvent | None = None
        self.created = created
        # False: a duplicate committed after the snapshot of a REPEATABLE READ or SERIALIZABLE
        # caller, which its own transaction cannot see.
        self.visible = visible

    @property
    def duplicate(self) -> bool:
        return not self.created

    def _in_callers_transaction(self) -> bool:
        return not self._conn.closed and self._conn.in_transaction()

    @property
    def id(self) -> int:
        if self._id is None:
            find = compiled_statements(self._conn.dialect.name)[1]
            if self._in_callers_transaction():
                self._id = int(self._conn.exec_driver_sql(find, dict(self._values)).scalar_one())
            else:
                with self._conn.engine.connect() as outside:
                    self._id = int(outside.exec_driver_sql(find, dict(self._values))
                                   .scalar_one())
        return self._id

    @property
    def row(self) -> OutboxEvent:
        """The ORM row, loaded on first use."""
        if self._row is None and (not self.visible or not self._in_callers_transaction()):
            with Session(self._conn.engine) as outside:
                self._row = outside.get_one(OutboxEvent, self.id)
                outside.expunge(self._row)
        if self._row is None:
            load = sa.select(OutboxEvent).where(OutboxEvent.id == self.id)
            if self._conn.dialect.name in MYSQL_FAMILY:
                load = load.with_for_update(read=True)  # see find_existing_statement
            session = self._session or Session(bind=self._conn)
            self._row = session.execute(load).scalar_one()
        return self._row


def outbox_values(event: Mapping[str, Any], settings: Settings,
                  account: str | None = None) -> dict[str, Any]:
    """The validated row's column values; raises InvalidEvent naming every bad field.

    `account` names the Spotler account (store) the order goes to; orderids need only be
    unique within their account. Without it, the default account (SPOTLER_ACCOUNT).
    `validated` tells the worker it may send the payload as stored, without validating it
    again; rows from plain SQL leave it false.
    """
    payload = validate_purchase(event, settings)
    return {"account": row_account(account, settings), "event": payload["event"],
            "orderid": payload["orderid"], "payload": canonical_json(payload),
            "validated": True}


def enqueue_purchase(
    session: SessionLike, event: Mapping[str, Any], *, account: str | None = None,
    settings: Settings | None = None,
) -> EnqueueResult:
    """Validate `event` and add it to the outbox inside the caller's transaction.

    `session` is a SQLAlchemy Session, a scoped_session (Flask-SQLAlchemy's `db.session`) or a
    Connection. Nothing is committed here: the order and its event commit or roll back
    together. A second enqueue of the same orderid (even from a concurrent transaction) returns
    the existing row; it never raises on the duplicate and never aborts the caller's
    transaction. Raises InvalidEvent, naming every bad field, before touching the database.
    `account` names the order's Spotler account (store); without it, the default account.
    """
    settings = settings or get_settings()
    values = outbox_values(event, settings, account)
    conn = session if isinstance(session, sa.Connection) else session.connection()
    dialect = conn.dialect.name
    new_id: int | None = None
    if dialect == "postgresql" and _snapshot_isolation(conn):
        created = _insert_in_savepoint(session, values)
        if created is None:
            existing = _id_committed_outside(conn, values)
            return EnqueueResult(session, conn, values, created=False, row_id=existing,
                                 visible=False)
    else:
        # The SQL text compiled once: the statement cache lookup cost more than the rest of
        # the call but the round trip; no RETURNING either, which cost as much again
        # (benchmarks/enqueue_cost.py). Connection events still fire.
        result = conn.exec_driver_sql(compiled_statements(dialect)[0], values)
        # ON CONFLICT DO NOTHING / INSERT IGNORE report a duplicate as 0 rows.
        created = result.rowcount == 1
        # MySQL and MariaDB send the new id with the OK packet: free. Elsewhere on demand.
        if created and dialect in MYSQL_FAMILY:
            new_id = int(result.lastrowid)
    if not created:
        return EnqueueResult(session, conn, values, created=False)
    if settings.wakeup_enabled:
        if isinstance(session, sa.Connection):
            wakeup.wake_after_connection_commit(session, settings.broker_url)
        else:
            wakeup.wake_after_session_commit(session, settings.broker_url)
    return EnqueueResult(session, conn, values, created=True, row_id=new_id)


_SNAPSHOT_LEVELS = ("REPEATABLE READ", "SERIALIZABLE")


def _snapshot_isolation(conn: sa.Connection) -> bool:
    """Whether the caller's transaction reads one snapshot, known without a round trip.

    From the connection's or the engine's isolation level (also the server default, read once
    at first connect). A level set by SQL inside the transaction (SET TRANSACTION ...) is not
    seen: docs/integrating.md tells such a caller to set it on the engine or connection instead.
    """
    level = conn.get_execution_options().get("isolation_level") or conn.default_isolation_level
    return str(level).upper().replace("_", " ") in _SNAPSHOT_LEVELS


def _insert_in_savepoint(session: SessionLike, values: Mapping[str, str]) -> bool | None:
    """The insert in a savepoint: whether it added the row, None when PostgreSQL failed it
    (40001) because the duplicate was committed after the caller's snapshot; that failure must
    not abort the caller's transaction.

    Only under snapshot isolation: at READ COMMITTED it cannot happen, and the savepoint's
    two round trips would double the cost of an enqueue.
    """
    insert = compiled_statements("postgresql")[0]
    try:
        if isinstance(session, sa.Connection):
            with session.begin_nested():
                return bool(session.exec_driver_sql(insert, values).rowcount == 1)
        with session.begin_nested():
            # session.connection() inside the block is what emits the SAVEPOINT.
            return bool(session.connection().exec_driver_sql(insert, values).rowcount == 1)
    except sa.exc.OperationalError as e:
        if getattr(e.orig, "sqlstate", None) != "40001":
            raise
        return None


def _id_committed_outside(conn: sa.Connection, values: Mapping[str, str]) -> int:
    """The id of a row the caller's snapshot cannot see, read in a transaction of its own."""
    with conn.engine.connect() as outside:
        found: int = outside.exec_driver_sql(compiled_statements("postgresql")[1],
                                             dict(values)).scalar_one()
    return found


@cache
def compiled_statements(dialect: str, returning: bool = False) -> tuple[str, str]:
    """(insert, find existing) as SQL text, parameters named in the driver's style: pyformat
    for psycopg, PyMySQL and mysqlclient, named for sqlite3. With `returning`, the insert
    yields the new id where the database has RETURNING (not MySQL: there, lastrowid)."""
    target: sa.Dialect
    if dialect == "postgresql":
        target = postgresql.base.PGDialect(paramstyle="pyformat")  # type: ignore[no-untyped-call]
    elif dialect in MYSQL_FAMILY:
        target = mysql.base.MySQLDialect(paramstyle="pyformat")
    else:
        target = sqlite.base.SQLiteDialect(paramstyle="named")
    insert = insert_statement(dialect)
    if returning and dialect not in MYSQL_FAMILY:
        insert = insert.returning(_table.c.id)
    return (str(insert.compile(dialect=target)),
            str(find_existing_statement(dialect).compile(dialect=target)))


@cache
def insert_statement(dialect: str) -> sa.Insert:
    """An INSERT that adds the row, or nothing when (account, event, orderid) exists.

    The database resolves the race between two transactions: the second waits for the first
    and then inserts nothing, instead of failing with an IntegrityError that would poison the
    caller's transaction. Built once per dialect: building it per call cost more than the
    round trip.
    """
    params: dict[str, Any] = {name: sa.bindparam(name)
                              for name in (*_KEY, "payload", "validated")}
    if dialect == "postgresql":
        return (postgresql.insert(_table).values(params)
                .on_conflict_do_nothing(index_elements=list(_KEY)))
    if dialect == "sqlite":
        return (sqlite.insert(_table).values(params)
                .on_conflict_do_nothing(index_elements=list(_KEY)))
    # MySQL and MariaDB: INSERT IGNORE inserts nothing for a duplicate; values are validated
    # and bounded, so the other errors IGNORE would downgrade cannot occur here.
    return mysql.insert(_table).values(params).prefix_with("IGNORE")


@cache
def find_existing_statement(dialect: str) -> sa.Select[Any]:
    find = sa.select(_table.c.id).where(*(_table.c[name] == sa.bindparam(name)
                                          for name in _KEY))
    if dialect in MYSQL_FAMILY:
        # Under REPEATABLE READ (MariaDB's default) INSERT IGNORE sees a row another
        # transaction committed after our snapshot, but a plain SELECT does not: read the
        # latest version, as the insert did.
        find = find.with_for_update(read=True)
    return find
