"""enqueue_purchase from a Session, a scoped_session or a Connection: one transaction, and
nothing registered per call that outlives it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from spotler_outbox import enqueue_purchase
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from tests.conftest import empty_database, purchase
from tests.integration.fixtures import statuses
from tests.integration.workers import (
    REDIS_URL,
    redis_or_skip,
    running_worker,
    wait_for,
    worker_environment,
)

CALLS = 10_000
WINDOW = 1_000


def listeners(factory: sessionmaker[Session]) -> int:
    """Every after_commit / after_rollback listener a new session of the factory carries."""
    session = factory()
    try:
        return len(session.dispatch.after_commit) + len(session.dispatch.after_rollback)
    finally:
        session.close()


def test_ten_thousand_requests_through_a_scoped_session_add_no_listeners_and_no_time(
    tmp_root: Path,
) -> None:
    """Flask-SQLAlchemy's db.session: a scoped_session, one session per request, removed after.
    Listeners added per call made each request slower without bound (4,000 after 4,000)."""
    redis_or_skip()
    url = empty_database("sqlite", tmp_root)  # the cheapest commit: the listeners dominate
    engine = make_engine(url)
    settings = Settings(database_url=url, broker_url=REDIS_URL, wakeup_enabled=True)
    factory = sessionmaker(engine)
    db_session = scoped_session(factory)
    enqueue_purchase(db_session, purchase("warm-up"), settings=settings)
    db_session.commit()
    db_session.remove()
    before = listeners(factory)
    took: list[float] = []
    for n in range(CALLS):
        started = time.thread_time()  # CPU time: a shared machine's disk and load stay out
        enqueue_purchase(db_session, purchase(f"R-{n}"), settings=settings)
        if n % 10 == 9:
            db_session.rollback()  # some requests fail after the enqueue
        else:
            db_session.commit()
        db_session.remove()
        took.append(time.thread_time() - started)
    assert listeners(factory) == before
    first, last = sorted(took[:WINDOW]), sorted(took[-WINDOW:])
    # Medians of the first and last thousand, in one run. A listener added per call makes
    # every later commit walk one more: thousands by the last window, many times slower. A
    # loaded shared machine moved the ratio of a correct build up to 1.5 (cache pressure),
    # so the bound leaves room for that and none for a leak.
    assert last[WINDOW // 2] / first[WINDOW // 2] < 3
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM outbox_events")).scalar()
    assert stored == 1 + CALLS - CALLS // 10
    engine.dispose()


def test_a_connection_is_accepted_and_its_transaction_decides(engine: Engine,
                                                              settings: Settings) -> None:
    with engine.connect() as conn:
        with conn.begin():
            result = enqueue_purchase(conn, purchase("C-1"), settings=settings)
            assert result.created
        with conn.begin() as tx:
            enqueue_purchase(conn, purchase("C-2"), settings=settings)
            tx.rollback()
        with conn.begin():
            assert enqueue_purchase(conn, purchase("C-1"), settings=settings).duplicate
    assert statuses(engine) == {"C-1": "pending"}


def test_enqueues_through_connections_register_no_listener_per_call(tmp_root: Path) -> None:
    redis_or_skip()
    url = empty_database("sqlite", tmp_root)
    engine = make_engine(url)
    settings = Settings(database_url=url, broker_url=REDIS_URL, wakeup_enabled=True)

    def engine_listeners() -> int:
        return len(engine.dispatch.commit) + len(engine.dispatch.rollback)

    counts = []
    for n in range(300):
        with engine.begin() as conn:
            enqueue_purchase(conn, purchase(f"L-{n}"), settings=settings)
        counts.append(engine_listeners())
    assert counts[0] == counts[-1] <= 2
    engine.dispose()


def test_a_scoped_session_is_accepted_and_its_transaction_decides(engine: Engine,
                                                                  settings: Settings) -> None:
    db_session = scoped_session(sessionmaker(engine))
    assert enqueue_purchase(db_session, purchase("S-1"), settings=settings).created
    db_session.commit()
    enqueue_purchase(db_session, purchase("S-2"), settings=settings)
    db_session.rollback()
    db_session.remove()
    assert statuses(engine) == {"S-1": "pending"}


@pytest.mark.parametrize("kind", ["connection", "scoped_session"])
def test_a_commit_wakes_a_worker_that_has_no_sweeper(
    kind: str, server_database_url: str, api: RunningFakeApi, broker: object, tmp_path: Path,
) -> None:
    """With the sweeper an hour away only the wake-up (or, on PostgreSQL, LISTEN) can start a
    dispatch: the fake API's count is the oracle. The rolled-back order must never arrive."""
    engine = make_engine(server_database_url)
    settings = Settings(database_url=server_database_url, broker_url=REDIS_URL,
                        wakeup_enabled=True)
    env = worker_environment(server_database_url, api.url, OUTBOX_SWEEP_INTERVAL_SECONDS="3600")
    with running_worker("woken", env, tmp_path):
        if kind == "connection":
            with engine.connect() as conn:
                with conn.begin() as tx:
                    enqueue_purchase(conn, purchase("W-rolled-back"), settings=settings)
                    tx.rollback()
                with conn.begin():
                    enqueue_purchase(conn, purchase("W-1"), settings=settings)
        else:
            db_session = scoped_session(sessionmaker(engine))
            enqueue_purchase(db_session, purchase("W-rolled-back"), settings=settings)
            db_session.rollback()
            enqueue_purchase(db_session, purchase("W-1"), settings=settings)
            db_session.commit()
            db_session.remove()
        wait_for(lambda: statuses(engine).get("W-1") == "delivered", 20, "the woken delivery")
    assert api.state.received()["orderids"] == {"W-1": 1}
    engine.dispose()


def test_the_id_of_a_committed_enqueue_can_be_read_after_the_session_closed(
    engine: Engine, settings: Settings
) -> None:
    with Session(engine) as session, session.begin():
        result = enqueue_purchase(session, purchase("I-1"), settings=settings)
    read_after = result.id
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT id FROM outbox_events WHERE orderid = 'I-1'"))
        assert read_after == stored.scalar_one()
