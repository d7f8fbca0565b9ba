"""Every entry point, racing a duplicate another transaction commits after the caller's
REPEATABLE READ snapshot began, leaves the caller's transaction usable: the shop's order,
inserted after the duplicate, commits.

On PostgreSQL the insert of the duplicate fails the caller's transaction (40001) unless the
core runs it in a savepoint; on MariaDB INSERT IGNORE sees the committed row. The order row
in the shop's own table, read back after the commit, is the oracle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session

from spotler_outbox import EnqueueResult, dbapi, enqueue_purchase
from spotler_outbox import asyncio as outbox_asyncio
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import ProducerSettings
from tests.conftest import empty_database, purchase
from tests.integration.async_stack import async_url, shop_engine

NO_WAKEUP = ProducerSettings(wakeup_enabled=False)
_orders = sa.Table("race_orders", sa.MetaData(),
                   sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                   sa.Column("note", sa.String(100), nullable=False))
READ_SNAPSHOT = "SELECT count(*) FROM race_orders"  # the caller's snapshot starts here
ADD_ORDER = "INSERT INTO race_orders (note) VALUES ('the order after the duplicate')"
Competitor = Callable[[], int]  # commits the duplicate in a transaction of its own: its id
EntryPoint = Callable[[str, Competitor], EnqueueResult]


def competitor(url: str, orderid: str) -> Competitor:
    def commit_duplicate() -> int:
        engine = make_engine(url)
        try:
            with Session(engine) as session, session.begin():
                return enqueue_purchase(session, purchase(orderid), settings=NO_WAKEUP).id
        finally:
            engine.dispose()
    return commit_duplicate


# --- the entry points, each as a shop calls it at REPEATABLE READ --------------------------

def sqlalchemy_session(url: str, commit_duplicate: Competitor) -> EnqueueResult:
    engine = sa.create_engine(url, isolation_level="REPEATABLE READ")
    try:
        with Session(engine) as session, session.begin():
            session.execute(sa.text(READ_SNAPSHOT))
            commit_duplicate()
            result = enqueue_purchase(session, purchase("RACE-1"), settings=NO_WAKEUP)
            session.execute(sa.text(ADD_ORDER))
        return result
    finally:
        engine.dispose()


def sqlalchemy_connection(url: str, commit_duplicate: Competitor) -> EnqueueResult:
    engine = sa.create_engine(url, isolation_level="REPEATABLE READ")
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text(READ_SNAPSHOT))
            commit_duplicate()
            result = enqueue_purchase(conn, purchase("RACE-1"), settings=NO_WAKEUP)
            conn.execute(sa.text(ADD_ORDER))
        return result
    finally:
        engine.dispose()


def asyncio_session(driver: str) -> EntryPoint:
    def enqueue(url: str, commit_duplicate: Competitor) -> EnqueueResult:
        async def shop() -> EnqueueResult:
            engine = shop_engine(async_url(url, driver), isolation_level="REPEATABLE READ")
            try:
                async with async_sessionmaker(engine)() as session, session.begin():
                    await session.execute(sa.text(READ_SNAPSHOT))
                    commit_duplicate()
                    result = await outbox_asyncio.enqueue_purchase(
                        session, purchase("RACE-1"), settings=NO_WAKEUP)
                    await session.execute(sa.text(ADD_ORDER))
                return result
            finally:
                await engine.dispose()
        return asyncio.run(shop())
    return enqueue


def raw_connection(url: str) -> Any:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username,
                               dbname=parsed.database)
    return pymysql.connect(host=parsed.host, port=parsed.port, user=parsed.username,
                           password=parsed.password or "", database=parsed.database,
                           charset="utf8mb4")


def dbapi_connection(level_from: str) -> EntryPoint:
    """`connection`: the driver's isolation_level; `session`: the session's default, as
    ALTER DATABASE / ALTER ROLE ... SET default_transaction_isolation gives it."""
    def enqueue(url: str, commit_duplicate: Competitor) -> EnqueueResult:
        conn = raw_connection(url)
        try:
            if isinstance(conn, psycopg.Connection):
                if level_from == "connection":
                    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                else:
                    conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL "
                                 "REPEATABLE READ")
                    conn.commit()
            cursor = conn.cursor()
            cursor.execute(READ_SNAPSHOT)
            cursor.fetchall()
            commit_duplicate()
            result = dbapi.enqueue_purchase(conn, purchase("RACE-1"), settings=NO_WAKEUP)
            cursor.execute(ADD_ORDER)
            conn.commit()
            return result
        finally:
            conn.close()
    return enqueue


def django_atomic(alias: str) -> EntryPoint:
    def enqueue(url: str, commit_duplicate: Competitor) -> EnqueueResult:
        from django.db import connections, transaction

        from spotler_outbox.django import enqueue_purchase as django_enqueue

        try:
            with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
                cursor.execute(READ_SNAPSHOT)
                commit_duplicate()
                result = django_enqueue(purchase("RACE-1"), using=alias, settings=NO_WAKEUP)
                cursor.execute(ADD_ORDER)
            return result
        finally:
            connections[alias].close()
    return enqueue


ENTRY_POINTS: dict[str, tuple[str, EntryPoint]] = {
    "sqlalchemy-session-postgresql": ("postgresql", sqlalchemy_session),
    "sqlalchemy-connection-postgresql": ("postgresql", sqlalchemy_connection),
    "asyncpg": ("postgresql", asyncio_session("asyncpg")),
    "psycopg-async": ("postgresql", asyncio_session("psycopg_async")),
    "dbapi-psycopg": ("postgresql", dbapi_connection("connection")),
    "dbapi-psycopg-session-default": ("postgresql", dbapi_connection("session")),
    "django-postgresql": ("postgresql", django_atomic("repeatable_read")),
    "sqlalchemy-session-mariadb": ("mariadb", sqlalchemy_session),
    "aiomysql": ("mariadb", asyncio_session("aiomysql")),
    "dbapi-pymysql": ("mariadb", dbapi_connection("connection")),
    "django-mariadb": ("mariadb", django_atomic("mariadb_repeatable_read")),
}


@pytest.fixture
def shop(request: pytest.FixtureRequest, tmp_root: Path) -> Iterator[str]:
    url = empty_database(request.param, tmp_root)
    engine = make_engine(url)
    _orders.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(_orders.delete())
    engine.dispose()
    yield url


def orders_and_outbox(url: str) -> tuple[list[str], dict[str, int]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            notes = list(conn.execute(sa.select(_orders.c.note)).scalars())
            rows = dict(conn.execute(sa.text("SELECT orderid, id FROM outbox_events")).all())
        return notes, rows
    finally:
        engine.dispose()


@pytest.mark.parametrize("entry_point, shop", [(name, database) for name, (database, _)
                                                in ENTRY_POINTS.items()],
                         indirect=["shop"], ids=list(ENTRY_POINTS))
def test_a_duplicate_committed_after_a_repeatable_read_callers_snapshot_leaves_its_order_to_commit(
    entry_point: str, shop: str, request: pytest.FixtureRequest,
) -> None:
    if entry_point.startswith("django"):
        request.getfixturevalue("django_project")
    committed: list[int] = []
    duplicate = competitor(shop, "RACE-1")

    def commit_duplicate() -> int:
        committed.append(duplicate())
        return committed[0]

    result = ENTRY_POINTS[entry_point][1](shop, commit_duplicate)
    notes, rows = orders_and_outbox(shop)
    assert notes == ["the order after the duplicate"]  # the caller's transaction committed
    assert rows == {"RACE-1": committed[0]}
    assert (result.created, result.id) == (False, committed[0])
    # PostgreSQL's snapshot cannot see the other transaction's row; MariaDB's IGNORE can.
    assert result.visible is (ENTRY_POINTS[entry_point][0] == "mariadb")
