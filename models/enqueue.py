"""The order system's entry point: validate a Purchase and add it to the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session

from models import wakeup
from models.settings import Settings, get_settings
from models.tables import OutboxEvent
from models.validation import canonical_json, validate_purchase

_WAKEUP_FLAG = "spotler_outbox_wakeup"
_LISTENING = "spotler_outbox_listening"


@dataclass(frozen=True)
class EnqueueResult:
    """The outbox row for the order; `created` is False when the orderid was already there."""

    row: OutboxEvent
    created: bool

    @property
    def duplicate(self) -> bool:
        return not self.created


def enqueue_purchase(
    session: Session, event: Mapping[str, Any], *, settings: Settings | None = None
) -> EnqueueResult:
    """Validate `event` and add it to the outbox inside the caller's transaction.

    Nothing is committed here: the order and its event commit or roll back together. A second
    enqueue of the same orderid (even from a concurrent transaction) returns the existing row;
    it never raises on the duplicate and never aborts the caller's transaction.
    Raises InvalidEvent, naming every bad field, before touching the database.
    """
    settings = settings or get_settings()
    payload = validate_purchase(
        event,
        multi_currency=settings.multi_currency,
        multi_language=settings.multi_language,
        hash_email=settings.hash_email,
    )
    values = {"event": payload["event"], "orderid": payload["orderid"],
              "payload": canonical_json(payload)}
    inserted_id = session.execute(_insert_unless_present(session, values)).scalar()
    find = sa.select(OutboxEvent).where(
        OutboxEvent.event == values["event"], OutboxEvent.orderid == values["orderid"])
    if session.get_bind().dialect.name in ("mysql", "mariadb"):
        # Under REPEATABLE READ (MariaDB's default) INSERT IGNORE sees a row another
        # transaction committed after our snapshot, but a plain SELECT does not: read the
        # latest version, as the insert did.
        find = find.with_for_update(read=True)
    row = session.execute(find).scalar_one()
    if inserted_id is not None and settings.wakeup_enabled:
        _wake_workers_after_commit(session, settings)
    return EnqueueResult(row=row, created=inserted_id is not None)


def _insert_unless_present(session: Session, values: dict[str, str]) -> sa.Executable:
    """An INSERT that yields the new id, or nothing when (event, orderid) exists.

    The database resolves the race between two transactions: the second waits for the first
    and then inserts nothing, instead of failing with an IntegrityError that would poison the
    caller's transaction.
    """
    dialect = session.get_bind().dialect.name
    table = cast(sa.Table, OutboxEvent.__table__)
    if dialect == "postgresql":
        return (postgresql.insert(table).values(values)
                .on_conflict_do_nothing(index_elements=["event", "orderid"])
                .returning(table.c.id))
    if dialect == "sqlite":
        return (sqlite.insert(table).values(values)
                .on_conflict_do_nothing(index_elements=["event", "orderid"])
                .returning(table.c.id))
    # MariaDB: INSERT IGNORE returns no row for a duplicate; values are validated and bounded,
    # so the other errors IGNORE would downgrade cannot occur here.
    return mysql.insert(table).values(values).prefix_with("IGNORE").returning(table.c.id)


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
