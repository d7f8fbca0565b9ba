"""Enqueue from an asyncio shop (FastAPI, any SQLAlchemy asyncio app), in the order's own
transaction on an AsyncSession or AsyncConnection.

    from spotler_outbox.asyncio import enqueue_purchase

    async with async_session() as session, session.begin():
        session.add(order)
        await session.flush()
        await enqueue_purchase(session, {"event": "Purchase", "orderid": order.id, ...})

Drivers: asyncpg and psycopg's async mode on PostgreSQL, aiomysql on MariaDB and MySQL 8
(`pip install "spotler-outbox[asyncpg]"`, `[postgres,asyncio]` or `[aiomysql]`). The insert
is the one every entry point runs (models.enqueue's core), through SQLAlchemy's `run_sync` on
the session's own connection: the event loop waits on the database like on any query, never
blocked. The workers are woken after the commit (`async with session.begin()` or `await
session.commit()` alike) from a background thread; a rollback leaves nothing and wakes nobody.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session

from spotler_outbox.models.enqueue import EnqueueResult, enqueue_values, outbox_values
from spotler_outbox.models.settings import ProducerSettings, get_producer_settings

__all__ = ["EnqueueResult", "enqueue_purchase"]


async def enqueue_purchase(
    session: AsyncSession | async_scoped_session[Any] | AsyncConnection,
    event: Mapping[str, Any], *, account: str | None = None,
    settings: ProducerSettings | None = None,
) -> EnqueueResult:
    """Validate `event` and add it to the outbox inside the caller's transaction.

    The same contract as spotler_outbox.enqueue_purchase: InvalidEvent (naming every bad
    field) before the database is touched, nothing committed here, a duplicate orderid
    returned rather than raised, also under REPEATABLE READ or SERIALIZABLE.
    """
    settings = settings or get_producer_settings()
    values = outbox_values(event, settings, account)
    target = session() if isinstance(session, async_scoped_session) else session
    return await target.run_sync(enqueue_values, values, settings)
