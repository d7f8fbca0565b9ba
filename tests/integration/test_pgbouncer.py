"""The enqueue behind a real PgBouncer 1.18 in transaction mode, from a shop engine with
psycopg's default settings (statements prepared on the server after 5 runs).

Each transaction may get another server connection there, where a statement psycopg prepared
on an earlier one does not exist ("prepared statement "_pg3_0" does not exist"). A second client
holding a transaction open every other time makes the shop's next transaction take the other
server connection, so a prepared statement is found missing within a few orders.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from spotler_outbox import enqueue_purchase
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import ProducerSettings
from tests.conftest import purchase
from tests.services import ThrowawayPgBouncer

NO_WAKEUP = ProducerSettings(wakeup_enabled=False)
ORDERS = 24  # well past psycopg's prepare_threshold of 5 on the one shop connection


@pytest.fixture
def bouncer(postgres_url: str) -> Iterator[ThrowawayPgBouncer]:
    running = ThrowawayPgBouncer(str(make_url(postgres_url).database), pool_mode="transaction")
    yield running
    running.destroy()


def test_many_enqueues_on_one_connection_behind_pgbouncer_in_transaction_mode_all_commit(
    bouncer: ThrowawayPgBouncer, postgres_url: str,
) -> None:
    # The shop's engines: SQLAlchemy's and psycopg's defaults, one pooled connection each.
    shop = sa.create_engine(bouncer.url, pool_size=1, max_overflow=0)
    snapshot_shop = sa.create_engine(bouncer.url, pool_size=1, max_overflow=0,
                                     isolation_level="REPEATABLE READ")
    neighbour = psycopg.connect(bouncer.url.replace("postgresql+psycopg", "postgresql"))
    results = []
    try:
        for n in range(ORDERS):
            holding = n % 2 == 1
            if holding:  # another client takes the server connection the shop had last
                neighbour.execute("SELECT 1")
            with Session(shop) as session, session.begin():
                results.append(enqueue_purchase(session, purchase(f"PGB-{n}"),
                                                settings=NO_WAKEUP).created)
                # The same order again: the duplicate's lookup runs as often.
                results.append(enqueue_purchase(session, purchase(f"PGB-{n}"),
                                                settings=NO_WAKEUP).created)
            with Session(snapshot_shop) as session, session.begin():  # the savepoint's path
                results.append(enqueue_purchase(session, purchase(f"PGB-RR-{n}"),
                                                settings=NO_WAKEUP).created)
            if holding:
                neighbour.rollback()
    finally:
        neighbour.close()
        shop.dispose()
        snapshot_shop.dispose()
    assert results == [True, False, True] * ORDERS
    engine = make_engine(postgres_url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM outbox_events")).scalar_one()
    engine.dispose()
    assert stored == 2 * ORDERS
    assert "prepared statement" not in bouncer.log()
