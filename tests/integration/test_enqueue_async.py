"""spotler_outbox.asyncio on asyncpg, psycopg's async mode and aiomysql (MariaDB): inside the
caller's transaction, a duplicate returned, a rollback leaving nothing, and a wake-up after the
commit that never holds up the event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker

from spotler_outbox import InvalidEvent
from spotler_outbox.asyncio import enqueue_purchase
from spotler_outbox.models import wakeup
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import ProducerSettings
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from tests.conftest import purchase
from tests.integration.async_stack import ASYNC_DRIVERS, async_database, shop_engine
from tests.integration.fixtures import statuses
from tests.integration.workers import REDIS_URL, running_worker, wait_for, worker_environment

NO_WAKEUP = ProducerSettings(wakeup_enabled=False)


@pytest.fixture(params=list(ASYNC_DRIVERS))
def urls(request: pytest.FixtureRequest, tmp_root: Path) -> tuple[str, str]:
    return async_database(request.param, tmp_root)


def stored_ids(sync_url: str) -> dict[str, int]:
    engine = make_engine(sync_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT orderid, id FROM outbox_events")).all())
    finally:
        engine.dispose()


def test_an_async_session_commits_the_row_with_its_transaction_and_a_rollback_leaves_none(
    urls: tuple[str, str],
) -> None:
    sync_url, url = urls

    async def shop() -> tuple[int, int]:
        engine = shop_engine(url)
        sessions = async_sessionmaker(engine)
        try:
            async with sessions() as session, session.begin():
                created = await enqueue_purchase(session, purchase("AS-1"), settings=NO_WAKEUP)
            async with sessions() as session:
                await enqueue_purchase(session, purchase("AS-2"), settings=NO_WAKEUP)
                await session.rollback()
            async with sessions() as session:
                again = await enqueue_purchase(session, purchase("AS-1", email="x@example.com"),
                                               settings=NO_WAKEUP)
                in_same = await enqueue_purchase(session, purchase("AS-3"), settings=NO_WAKEUP)
                twice = await enqueue_purchase(session, purchase("AS-3"), settings=NO_WAKEUP)
                await session.commit()
        finally:
            await engine.dispose()
        assert created.created and again.duplicate and again.id == created.id
        assert in_same.created and twice.duplicate and twice.id == in_same.id
        return created.id, in_same.id

    first, third = asyncio.run(shop())
    assert stored_ids(sync_url) == {"AS-1": first, "AS-3": third}


def test_an_async_connection_and_an_async_scoped_session_are_accepted(
    urls: tuple[str, str],
) -> None:
    sync_url, url = urls

    async def shop() -> None:
        engine = shop_engine(url)
        try:
            async with engine.connect() as conn:
                await enqueue_purchase(conn, purchase("AC-1"), settings=NO_WAKEUP)
                await conn.commit()  # an AsyncConnection autobegins: its commit ends the row
                await enqueue_purchase(conn, purchase("AC-2"), settings=NO_WAKEUP)
                await conn.rollback()
            scoped = async_scoped_session(async_sessionmaker(engine),
                                          scopefunc=asyncio.current_task)
            await enqueue_purchase(scoped, purchase("AC-3"), settings=NO_WAKEUP)
            await scoped.commit()
            await scoped.remove()
        finally:
            await engine.dispose()

    asyncio.run(shop())
    assert set(stored_ids(sync_url)) == {"AC-1", "AC-3"}


def test_a_bad_event_is_refused_by_the_async_entry_point_before_the_database_is_touched(
    urls: tuple[str, str],
) -> None:
    sync_url, url = urls

    async def shop() -> None:
        engine = shop_engine(url)
        try:
            async with async_sessionmaker(engine)() as session:
                with pytest.raises(InvalidEvent, match=r"products\[0\]\.quantity"):
                    await enqueue_purchase(session, purchase(
                        "AB-1", products=[{"id": "S", "quantity": 0}]), settings=NO_WAKEUP)
                assert not session.in_transaction()  # validation came first
        finally:
            await engine.dispose()

    asyncio.run(shop())
    assert stored_ids(sync_url) == {}


def queued_wakeups(broker: redis.Redis) -> int:
    return int(broker.llen("celery"))


@pytest.mark.parametrize("driver", ["asyncpg", "aiomysql"])
def test_a_commit_sends_a_wake_up_however_it_is_committed_and_a_rollback_sends_none(
    driver: str, tmp_root: Path, broker: redis.Redis,
) -> None:
    """The broker's own queue is the oracle: one wake-up message per committed enqueue."""
    _, url = async_database(driver, tmp_root)
    settings = ProducerSettings(broker_url=REDIS_URL, wakeup_enabled=True)

    async def shop() -> list[int]:
        engine = shop_engine(url)
        sessions = async_sessionmaker(engine)
        seen = []
        try:
            async with sessions() as session:
                await enqueue_purchase(session, purchase("AW-rolled-back"), settings=settings)
                await session.rollback()
            await asyncio.sleep(1.0)  # a wake-up would be in Redis by now
            seen.append(queued_wakeups(broker))
            async with sessions() as session, session.begin():
                await enqueue_purchase(session, purchase("AW-1"), settings=settings)
            seen.append(await wait_for_wakeups(broker, 1))
            broker.delete("celery")
            async with sessions() as session:
                await enqueue_purchase(session, purchase("AW-2"), settings=settings)
                await session.commit()
            seen.append(await wait_for_wakeups(broker, 1))
        finally:
            await engine.dispose()
        return seen

    assert asyncio.run(shop()) == [0, 1, 1]


async def wait_for_wakeups(broker: redis.Redis, count: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while queued_wakeups(broker) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return queued_wakeups(broker)


@contextmanager
def silent_broker() -> Iterator[tuple[str, list[socket.socket]]]:
    """A broker that accepts connections and never answers: a send waits for its timeout."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0", accepted
    finally:
        stop.set()
        thread.join(1)
        for conn in accepted:
            conn.close()
        server.close()


def test_a_wake_up_stuck_on_an_unanswering_broker_never_holds_up_the_event_loop(
    tmp_root: Path,
) -> None:
    _, url = async_database("asyncpg", tmp_root)

    async def shop(broker_url: str, accepted: list[socket.socket]) -> tuple[float, float]:
        settings = ProducerSettings(broker_url=broker_url, wakeup_enabled=True)
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                started = loop.time()
                await asyncio.sleep(0.01)
                gaps.append(loop.time() - started)

        ticking = asyncio.create_task(ticker())
        engine = shop_engine(url)
        try:
            started = loop.time()
            async with async_sessionmaker(engine)() as session, session.begin():
                await enqueue_purchase(session, purchase("AL-1"), settings=settings)
            committed_in = loop.time() - started
            # The wake-up is now talking to a broker that never answers, on its own thread.
            while not accepted and loop.time() - started < 10:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
        finally:
            done.set()
            await ticking
            await engine.dispose()
        assert accepted, "the wake-up never reached the broker"
        return committed_in, max(gaps)

    with silent_broker() as (broker_url, accepted):
        committed_in, longest_gap = asyncio.run(shop(broker_url, accepted))
        waker = wakeup._wakers[broker_url]
        assert waker.sent == 0  # still stuck (or failed): nothing was answered
    assert committed_in < 1.0
    assert longest_gap < 0.5


def test_an_async_mariadb_shop_is_delivered_by_a_woken_worker_without_a_sweeper(
    tmp_root: Path, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    """No LISTEN on MariaDB and the sweeper an hour away: only the wake-ups after the two
    commits can start the deliveries; the fake API's count is the oracle."""
    sync_url, url = async_database("aiomysql", tmp_root)
    settings = ProducerSettings(broker_url=REDIS_URL, wakeup_enabled=True)
    env = worker_environment(sync_url, api.url, OUTBOX_SWEEP_INTERVAL_SECONDS="3600")

    async def shop() -> None:
        engine = shop_engine(url)
        sessions = async_sessionmaker(engine)
        try:
            async with sessions() as session:
                await enqueue_purchase(session, purchase("AD-rolled-back"), settings=settings)
                await session.rollback()
            async with sessions() as session, session.begin():
                await enqueue_purchase(session, purchase("AD-1"), settings=settings)
            await asyncio.sleep(0.2)  # a second wake-up, not one coalesced with the first
            async with sessions() as session:
                await enqueue_purchase(session, purchase("AD-2"), settings=settings)
                await session.commit()
        finally:
            await engine.dispose()

    engine = make_engine(sync_url)
    with running_worker("async-shop", env, tmp_path):
        asyncio.run(shop())
        wait_for(lambda: statuses(engine) == {"AD-1": "delivered", "AD-2": "delivered"}, 20,
                 "both deliveries")
    engine.dispose()
    assert api.state.received()["orderids"] == {"AD-1": 1, "AD-2": 1}
