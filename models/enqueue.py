"""The order system's entry point: validate a Purchase and add it to the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session

from spotler_outbox.models import wakeup
from spotler_outbox.models.accounts import row_account
from spotler_outbox.models.settings import Settings, get_settings
from spotler_outbox.models.tables import OutboxEvent
from spotler_outbox.models.validation import canonical_json, validate_purchase

_WAKEUP_FLAG = "spotler_outbox_wakeup"
_LISTENING = "spotler_outbox_listening"
_table = cast(sa.Table, OutboxEvent.__table__)
_KEY = ("account", "event", "orderid")  # the outbox's unique key


class EnqueueResult:
    """The outbox row for the order; `created` is False when the orderid was already there."""

    __slots__ = ("_row", "_session", "created", "id", "visible")

    def __init__(self, session: Session, row_id: int, created: bool, *,
                 visible: bool = True) -> None:
        self._session = session
        self._row: OutboxEvent | None = None
        self.id = row_id
        self.created = created
        # False: a duplicate committed after the snapshot of a REPEATABLE READ or SERIALIZABLE
        # caller, which its own transaction cannot see.
        self.visible = visible

    @property
    def duplicate(self) -> bool:
        return not self.created

    @property
    def row(self) -> OutboxEvent:
        """The ORM row, loaded on first use: most callers need only `created`."""
        if self._row is None and not self.visible:
            bind = self._session.get_bind()
            with Session(bind.engine if isinstance(bind, sa.Connection) else bind) as outside:
                self._row = outside.get_one(OutboxEvent, self.id)
                outside.expunge(self._row)
        if self._row is None:
            load = sa.select(OutboxEvent).where(OutboxEvent.id == self.id)
            if self._session.get_bind().dialect.name in ("mysql", "mariadb"):
                load = load.with_for_update(read=True)  # see _find_existing
            self._row = self._session.execute(load).scalar_one()
        return self._row


def enqueue_purchase(
    session: Session, event: Mapping[str, Any], *, account: str | None = None,
    settings: Settings | None = None,
) -> EnqueueResult:
    """Validate `event` and add it to the outbox inside the caller's transaction.

    Nothing is committed here: the order and its event commit or roll back together. A second
    enqueue of the same orderid (even from a concurrent transaction) returns the existing row;
    it never raises on the duplicate and never aborts the caller's transaction.
    Raises InvalidEvent, naming every bad field, before touching the database.

    `account` names the Spotler account (store) the order goes to; orderids need only be
    unique within their account. Without it, the default account (SPOTLER_ACCOUNT).
    """
    settings = settings or get_settings()
    payload = validate_purchase(event, settings)
    values = {"account": row_account(account, settings), "event": payload["event"],
              "orderid": payload["orderid"], "payload": canonical_json(payload)}
    conn = session.connection()
    dialect = conn.dialect.name
    if dialect == "postgresql" and _snapshot_isolation(conn):
        inserted_id = _insert_in_savepoint(session, values)
        if inserted_id is _INVISIBLE:
            existing = _id_committed_outside(session, values)
            return EnqueueResult(session, existing, created=False, visible=False)
    else:
        inserted_id = conn.execute(_insert_unless_present(dialect), values).scalar()
    if inserted_id is None:
        existing_id: int = conn.execute(_find_existing(dialect), values).scalar_one()
        return EnqueueResult(session, existing_id, created=False)
    if settings.wakeup_enabled:
        _wake_workers_after_commit(session, settings)
    return EnqueueResult(session, inserted_id, created=True)


_INVISIBLE = -1
_SNAPSHOT_LEVELS = ("REPEATABLE READ", "SERIALIZABLE")


def _snapshot_isolation(conn: sa.Connection) -> bool:
    """Whether the caller's transaction reads one snapshot, known without a round trip.

    From the connection's or the engine's isolation level (also the server default, read once
    at first connect). A level set by SQL inside the transaction (SET TRANSACTION ...) is not
    seen: the README tells such a caller to set it on the engine or connection instead.
    """
    level = conn.get_execution_options().get("isolation_level") or conn.default_isolation_level
    return str(level).upper().replace("_", " ") in _SNAPSHOT_LEVELS


def _insert_in_savepoint(session: Session, values: dict[str, Any]) -> int | None:
    """The insert, in a savepoint: PostgreSQL fails it (40001) when the duplicate was committed
    after the caller's snapshot, and that failure must not abort the caller's transaction.

    Only under snapshot isolation: at READ COMMITTED it cannot happen, and the savepoint's
    two round trips would double the cost of an enqueue.
    """
    try:
        with session.begin_nested():
            # session.connection() inside the block is what emits the SAVEPOINT.
            insert = _insert_unless_present("postgresql")
            inserted: int | None = session.connection().execute(insert, values).scalar()
            return inserted
    except sa.exc.OperationalError as e:
        if getattr(e.orig, "sqlstate", None) != "40001":
            raise
        return _INVISIBLE


def _id_committed_outside(session: Session, values: dict[str, Any]) -> int:
    """The id of a row the caller's snapshot cannot see, read in a transaction of its own."""
    bind = session.get_bind()
    engine = bind.engine if isinstance(bind, sa.Connection) else bind
    with engine.connect() as outside:
        found: int = outside.execute(_find_existing("postgresql"), values).scalar_one()
    return found


@cache
def _insert_unless_present(dialect: str) -> sa.Executable:
    """An INSERT that yields the new id, or nothing when (account, event, orderid) exists.

    The database resolves the race between two transactions: the second waits for the first
    and then inserts nothing, instead of failing with an IntegrityError that would poison the
    caller's transaction. Built once per dialect: building it per call cost more than the
    round trip.
    """
    params: dict[str, Any] = {name: sa.bindparam(name) for name in (*_KEY, "payload")}
    if dialect == "postgresql":
        return (postgresql.insert(_table).values(params)
                .on_conflict_do_nothing(index_elements=list(_KEY))
                .returning(_table.c.id))
    if dialect == "sqlite":
        return (sqlite.insert(_table).values(params)
                .on_conflict_do_nothing(index_elements=list(_KEY))
                .returning(_table.c.id))
    # MariaDB: INSERT IGNORE returns no row for a duplicate; values are validated and bounded,
    # so the other errors IGNORE would downgrade cannot occur here.
    return mysql.insert(_table).values(params).prefix_with("IGNORE").returning(_table.c.id)


@cache
def _find_existing(dialect: str) -> sa.Select[Any]:
    find = sa.select(_table.c.id).where(*(_table.c[name] == sa.bindparam(name)
                                          for name in _KEY))
    if dialect in ("mysql", "mariadb"):
        # Under REPEATABLE READ (MariaDB's default) INSERT IGNORE sees a row another
        # transaction committed after our snapshot, but a plain SELECT does not: read the
        # latest version, as the insert did.
        find = find.with_for_update(read=True)
    return find


def _wake_workers_after_commit(session: Session, settings: Settings) -> None:
    session.info[_WAKEUP_FLAG] = settings.broker_url
    if session.info.get(_LISTENING):
        return
    session.info[_LISTENING] = True

    @sa_event.listens_for(session, "after_commit")
    def _after_commit(committed: Session) -> None:
        broker_url = committed.info.pop(_WAKEUP_FLAG, None)
        if broker_url:
            wakeup.request_dispatch(broker_url)

    @sa_event.listens_for(session, "after_rollback")
    def _after_rollback(rolled_back: Session) -> None:
        rolled_back.info.pop(_WAKEUP_FLAG, None)
